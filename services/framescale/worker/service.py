"""The worker process tree: a supervisor and one process per slot.

The supervisor owns what is per node: the health/metrics endpoint, the node Lease (its keeper,
framescale.worker.lease, which opens and fences the slots' job-start gate), and restarting
slots that die. Each slot process runs SlotWorker on one job at a time, so a
crash (or a poison message) takes down one job, whose message then reappears. Each slot
reports its job starts and ends over a pipe of its own, which the supervisor's main loop
polls: a slot killed mid-write garbles only its own pipe, and a restarted slot gets a
new one, so a dead slot's last words cannot mark its successor busy.

Signals: the first SIGTERM (or Ctrl-C) stops receiving; jobs in hand get
``shutdown_grace_seconds`` to finish and are handed back (visibility 0) if they cannot.
A second signal cancels them: slots hand back within seconds, and the message of a slot
that must be killed is handed back by the supervisor. Slots ignore SIGINT: Ctrl-C in a
terminal reaches the whole process group, and only the supervisor's count should move.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from framescale import aws, logs
from framescale.worker import scratch, slot_entry
from framescale.worker.adapters import S3Store, SnsPublisher, SqsQueue, find_dead_letter_queue
from framescale.worker.gate import JobGate, SlotGate
from framescale.worker.health import HealthServer
from framescale.worker.inference import ModelClient
from framescale.worker.lease import LeaseIdentity, LeaseKeeper, kubernetes_lease_api
from framescale.worker.loop import SlotWorker
from framescale.worker.metrics import WorkerMetrics
from framescale.worker.ports import ModelServer
from framescale.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

LOOP_SECONDS = 0.2
# Slots get the grace period plus this to stop before they are killed ...
KILL_MARGIN_SECONDS = 15.0
# ... or only this after a second signal.
SECOND_SIGNAL_SECONDS = 5.0
RESTART_MIN_SECONDS = 1.0  # a slot that keeps dying (a poison message) must not spin
# /healthz fails when a slot dies this often (it cannot work: let Kubernetes restart the
# pod, with its back-off) or when the main loop has not turned for a while (wedged).
CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW_SECONDS = 60.0
WEDGED_SECONDS = 30.0


class StartupError(RuntimeError):
    """The worker cannot start; the message names the fix."""


def model_client(settings: WorkerSettings) -> ModelClient:
    return ModelClient(
        settings.model_server,
        settings.model_name,
        signature_name=settings.signature_name,
        version=settings.model_version,
        timeout=settings.grpc_timeout_seconds,
        max_message_bytes=settings.grpc_max_message_bytes,
    )


class _Shutdown(BaseException):
    """Raised by the signal handler to leave a blocking receive when no job is in hand."""


class SlotSignals:
    """A slot's SIGTERM handler: the first signal stops receiving and gives the job in hand
    the grace period; a second one (or the end of the grace) cancels the job at once."""

    def __init__(self, worker: SlotWorker, grace_seconds: float) -> None:
        self.worker = worker
        self.grace_seconds = grace_seconds

    def __call__(self, signum: int, frame: Any) -> None:
        worker = self.worker
        first = not worker.stopping.is_set()
        worker.stopping.set()
        if first and worker.in_job:
            log.info("stopping: finishing the job in hand", extra={"grace": self.grace_seconds})
            timer = threading.Timer(self.grace_seconds, worker.cancel.set)
            timer.daemon = True
            timer.start()
            return
        worker.cancel.set()
        # Only a long poll is cut short. Anywhere else the loop sees ``stopping`` itself, and
        # a message just received is handed back rather than dropped with the stack.
        if worker.receiving:
            raise _Shutdown


def slot_main(
    settings_data: dict[str, Any],
    slot: int,
    dead_letter_queue_url: str,
    events: Connection,
    gate: SlotGate,
    *,
    parent_pid: int,
) -> None:
    """A slot process, once framescale.worker.slot_entry has tied it to its supervisor; ``gate`` is
    its cell of the supervisor's job-start fence."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards what matters as SIGTERM
    settings = WorkerSettings(**settings_data)
    logs.configure("worker", settings.log_level, settings.log_format)

    def send(event: dict[str, Any]) -> None:
        try:
            events.send(event)
        except (OSError, ValueError) as error:  # the supervisor is gone; PDEATHSIG ends this process
            log.warning("could not report to the supervisor", extra={"error": str(error)})

    sqs = aws.client("sqs")
    worker = SlotWorker(
        settings,
        queue=SqsQueue(sqs, settings.queue_url),
        dead_letters=SqsQueue(sqs, dead_letter_queue_url),
        store=S3Store(aws.client("s3")),
        publisher=SnsPublisher(aws.client("sns")),
        model=model_client(settings),
        events=send,
        gate=gate,
        orphaned=lambda: slot_entry.orphaned(parent_pid),
    )
    signal.signal(signal.SIGTERM, SlotSignals(worker, settings.shutdown_grace_seconds))
    with logs.scope(slot=slot), contextlib.suppress(_Shutdown):
        worker.run()
    log.info("slot stopped", extra={"slot": slot})


@dataclass
class _Slot:
    process: multiprocessing.process.BaseProcess
    events: Connection | None  # read end of this slot's pipe; None once it reached end of file
    started: float = field(default_factory=time.monotonic)
    busy: bool = False
    receipt_handle: str | None = None  # of the message in hand: never a metric label
    message_id: str | None = None
    reaped: bool = False  # its death was noted (and its pipe drained)


@dataclass
class SupervisorClients:
    """What the supervisor talks to itself (its slots make their own clients, in their own processes)."""

    sqs: Any  # a boto3 SQS client: the queue's attributes, its dead-letter queue, hand-backs
    model: ModelServer  # for /readyz
    leases: Callable[[], Any] = kubernetes_lease_api  # the Lease API (worker.lease.LeaseApi), made only when enabled

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> SupervisorClients:
        return cls(sqs=aws.client("sqs"), model=model_client(settings))


class Supervisor:
    def __init__(
        self,
        settings: WorkerSettings,
        clients: SupervisorClients | None = None,
        *,
        processes: Any = None,
    ) -> None:
        """``processes``: where slot processes and their pipes come from (``Process``, ``Pipe``);
        multiprocessing's spawn context unless a test hands in another."""
        self.settings = settings
        self.clients = clients
        self.metrics = WorkerMetrics()
        self.slots: dict[int, _Slot] = {}
        self.stopping = False
        self.signals = 0
        self.dead_letter_queue_url = ""
        self.health: HealthServer | None = None
        self.lease: LeaseKeeper | None = None
        self.sqs: Any = None
        self._model: ModelServer | None = None
        self._context = processes or multiprocessing.get_context("spawn")
        # Whether a slot may start a job: shut until the node may take jobs (with a Lease: until the
        # keeper sees it admitted, and only until its renewal could lapse), and from a stop on.
        self.gate = JobGate.for_processes(settings.slots, self._context)
        self._deaths: dict[int, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._last_tick = time.monotonic()
        self._hurry_at: float | None = None

    # ------------------------------------------------------------------ start

    def check_environment(self) -> None:
        """Fail at start, with the fix, rather than on the first message."""
        if self.clients is None:
            self.clients = SupervisorClients.from_settings(self.settings)
        self.sqs = self.clients.sqs
        try:
            self.sqs.get_queue_attributes(QueueUrl=self.settings.queue_url, AttributeNames=["QueueArn"])
        except Exception as error:
            raise StartupError(
                f"cannot read queue {self.settings.queue_url}: {error}. Check FRAMESCALE_WORKER_QUEUE_URL, "
                "AWS credentials and AWS_ENDPOINT_URL."
            ) from None
        dlq = self.settings.dead_letter_queue_url or find_dead_letter_queue(self.sqs, self.settings.queue_url)
        if not dlq:
            raise StartupError(
                f"queue {self.settings.queue_url} has no RedrivePolicy and FRAMESCALE_WORKER_DEAD_LETTER_QUEUE_URL "
                "is unset: failed jobs would have nowhere to go. Give the queue a dead-letter queue."
            )
        self.dead_letter_queue_url = dlq

    def start(self) -> None:
        self.check_environment()
        self.settings.work_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_scratch()
        assert self.clients is not None
        self._model = self.clients.model
        if self.settings.health_port:
            self.health = HealthServer(
                self.settings.health_port, alive=self.alive, ready=self.ready, registry=self.metrics.registry
            ).start()
        if self.settings.lease_enabled:
            assert self.settings.node_name is not None  # checked by the settings validator
            identity = LeaseIdentity(
                node_name=self.settings.node_name,
                namespace=self.settings.namespace,
                holder=self.settings.pod_name or f"framescale-worker-{os.getpid()}",
                pipeline=self.settings.pipeline_name,
            )
            # The keeper opens the gate once the operator admits this node, and fences it for drains.
            self.lease = LeaseKeeper(
                self.clients.leases(),
                self.gate,
                identity,
                duration_seconds=self.settings.lease_duration_seconds,
                poll_seconds=self.settings.lease_poll_seconds,
                metrics=self.metrics,
            ).start()
        else:
            self.gate.open()  # no Lease, no operator to ask (a local run): open for good
        for slot in range(self.settings.slots):
            self._spawn(slot)
        log.info(
            "worker started",
            extra={
                "slots": self.settings.slots,
                "queue": self.settings.queue_url,
                "model_server": self.settings.model_server,
                "health_port": self.health.port if self.health else None,
            },
        )

    def _remove_stale_scratch(self) -> None:
        """Delete the scratch folders (downloads) of slots killed mid-job; a live process's stay."""
        scratch.remove_abandoned(self.settings.work_dir)

    def _spawn(self, slot: int) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        gate = self.gate.reset(slot)  # a fresh cell: nothing of a dead predecessor's carries over
        process = self._context.Process(
            target=slot_entry.main,
            args=(os.getpid(), self.settings.model_dump(mode="json"), slot, self.dead_letter_queue_url, writer, gate),
            name=f"framescale-slot-{slot}",
        )
        process.start()
        # The slot now holds the only write end, so its exit (or death) ends the pipe.
        writer.close()
        self.slots[slot] = _Slot(process, reader)

    # ------------------------------------------------------------------ run

    def alive(self) -> bool:
        """False when the main loop is wedged or a slot keeps dying: a restart of the pod may help."""
        now = time.monotonic()
        if now - self._last_tick > WEDGED_SECONDS:
            return False
        return not any(
            sum(1 for moment in deaths if now - moment < CRASH_LOOP_WINDOW_SECONDS) >= CRASH_LOOP_DEATHS
            for deaths in self._deaths.values()
        )

    def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "stopping"
        assert self._model is not None
        if not self._model.ready():
            return False, f"model {self.settings.model_name} not available at {self.settings.model_server}"
        return True, "ready"

    def request_stop(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        self.signals += 1
        self.stopping = True
        self.gate.shut()  # no job starts from here on (the slots' own flag says so too, once signalled)
        if self.lease is not None:
            self.lease.begin_stopping()  # the Lease says "stopping" and the keeper never reopens the gate
        if self.signals > 1 and self._hurry_at is None:
            self._hurry_at = time.monotonic()
        log.info("stop requested", extra={"signal": signum, "count": self.signals})
        for state in self.slots.values():
            if state.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    state.process.terminate()  # SIGTERM

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        deadline: float | None = None
        while True:
            self._pump(LOOP_SECONDS)
            self._last_tick = time.monotonic()
            if self.stopping:
                if deadline is None:
                    deadline = time.monotonic() + self.settings.shutdown_grace_seconds + KILL_MARGIN_SECONDS
                if self._hurry_at is not None:
                    deadline = min(deadline, self._hurry_at + SECOND_SIGNAL_SECONDS)
                for slot, state in self.slots.items():
                    if not state.process.is_alive():
                        self._reap(slot)
                if not any(state.process.is_alive() for state in self.slots.values()):
                    break
                if time.monotonic() > deadline:
                    self._kill_slots()
                    break
                continue
            for slot, state in list(self.slots.items()):
                if not state.process.is_alive():
                    self._restart(slot)
        for slot in self.slots:
            self._drain(slot)
        self.close()
        log.info("worker stopped")
        return 0

    def _reap(self, slot: int) -> None:
        """Note a slot's death once: its last events, then it is idle, whatever they said."""
        state = self.slots[slot]
        if state.reaped:
            return
        state.reaped = True
        self._drain(slot)
        state.busy, state.receipt_handle = False, None
        self.gate.reset(slot)  # a dead slot holds no job, nor (if killed inside it) its gate lock
        self._update_busy()
        self._deaths[slot].append(time.monotonic())

    def _restart(self, slot: int) -> None:
        state = self.slots[slot]
        self._reap(slot)
        if time.monotonic() - state.started < RESTART_MIN_SECONDS:
            return
        log.error("slot process died; restarting it", extra={"slot": slot, "exitcode": state.process.exitcode})
        self.metrics.slot_restarts.inc()
        self._spawn(slot)

    def _kill_slots(self) -> None:
        """The grace is over: kill the slots still running and hand their messages back."""
        for slot, state in self.slots.items():
            if state.process.is_alive():
                log.error("slot did not stop in time; killing it", extra={"slot": slot})
                state.process.kill()
                state.process.join(5)
            self._drain(slot)  # it may have settled its message after all
            if state.receipt_handle is not None:
                self._hand_back(state)

    def _hand_back(self, state: _Slot) -> None:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.settings.queue_url, ReceiptHandle=state.receipt_handle, VisibilityTimeout=0
            )
            log.info("message of a killed slot handed back", extra={"message_id": state.message_id})
        except Exception as error:
            log.warning(
                "could not hand back the message of a killed slot; it comes back after its visibility timeout",
                extra={"message_id": state.message_id, "error": str(error)},
            )

    # ------------------------------------------------------------------ events

    def _pump(self, timeout: float) -> None:
        """Apply the slots' events, waiting up to ``timeout`` for some."""
        readers = {state.events: slot for slot, state in self.slots.items() if state.events is not None}
        if not readers:
            time.sleep(timeout)
            return
        for reader in wait(list(readers), timeout):
            self._receive(readers[reader])  # type: ignore[index]

    def _drain(self, slot: int) -> None:
        state = self.slots[slot]
        while state.events is not None and state.events.poll():
            self._receive(slot)

    def _receive(self, slot: int) -> None:
        state = self.slots[slot]
        assert state.events is not None
        try:
            event = state.events.recv()
        except Exception as error:
            # End of file: the slot exited. Anything else: it died mid-message. Either way
            # nothing more can come on this pipe.
            if not isinstance(error, EOFError):
                log.warning("unreadable event from a slot; closing its pipe", extra={"slot": slot, "error": str(error)})
            state.events.close()
            state.events = None
            return
        try:
            self._apply(state, event)
        except Exception:
            log.exception("could not apply a slot's event; carrying on", extra={"slot": slot})

    def _apply(self, state: _Slot, event: dict[str, Any]) -> None:
        if event["type"] == "job_started":
            state.busy, state.receipt_handle = True, event.get("receipt_handle")
            state.message_id = event.get("message_id")
        elif event["type"] == "job_finished":
            state.busy, state.receipt_handle = False, None
        self.metrics.observe(event)
        self._update_busy()

    def _update_busy(self) -> None:
        busy = sum(1 for state in self.slots.values() if state.busy)
        self.metrics.jobs_in_progress.set(busy)
        self.metrics.busy.set(1 if busy else 0)
        if self.lease is not None:
            self.lease.poke()  # the Lease says how many jobs are in hand (the gate's count) at once

    def close(self) -> None:
        if self.lease is not None:
            self.lease.stop()  # a last write: "stopping", the jobs the slots still hold (none by now)
        if self.health is not None:
            self.health.stop()
        if isinstance(self._model, ModelClient):
            self._model.close()
        for state in self.slots.values():
            if state.events is not None:
                state.events.close()
