"""The worker process tree: a supervisor and one process per slot.

The supervisor owns what is per node: the health/metrics endpoint, the busy Lease, and
restarting slots that die. Each slot process runs SlotWorker on one job at a time, so a
crash (or a poison message) takes down one job, whose message then reappears.

Signals: the first SIGTERM (or Ctrl-C) stops receiving; jobs in hand get
``shutdown_grace_seconds`` to finish and are handed back (visibility 0) if they cannot.
A second SIGTERM hands back at once and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from typing import Any

from framescale import aws, logs
from framescale.worker.health import HealthServer
from framescale.worker.inference import ModelClient
from framescale.worker.lease import BusyLease, kubernetes_coordination_api
from framescale.worker.loop import SlotWorker, find_dead_letter_queue
from framescale.worker.metrics import WorkerMetrics
from framescale.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """The worker cannot start; the message names the fix."""


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this slot if the supervisor dies, so no orphan keeps a message."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


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


def slot_main(settings_data: dict[str, Any], slot: int, dead_letter_queue_url: str, events: Any) -> None:
    """Entry point of a slot process."""
    _die_with_parent()
    settings = WorkerSettings(**settings_data)
    logs.configure("worker", settings.log_level, settings.log_format)
    stopping, cancel = threading.Event(), threading.Event()
    worker = SlotWorker(
        settings,
        sqs=aws.client("sqs"),
        s3=aws.client("s3"),
        sns=aws.client("sns"),
        model=model_client(settings),
        dead_letter_queue_url=dead_letter_queue_url,
        events=lambda event: events.put({**event, "slot": slot}),
        stopping=stopping,
        cancel=cancel,
    )

    def on_signal(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            if worker.in_job:
                log.info("stopping: finishing the job in hand", extra={"grace": settings.shutdown_grace_seconds})
                timer = threading.Timer(settings.shutdown_grace_seconds, cancel.set)
                timer.daemon = True
                timer.start()
                return
        cancel.set()
        if not worker.in_job:
            raise _Shutdown

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with contextlib.suppress(_Shutdown):
        worker.run()
    log.info("slot stopped", extra={"slot": slot})


class Supervisor:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics()
        self.events: Any = None
        self.slots: dict[int, multiprocessing.process.BaseProcess] = {}
        self.active: dict[int, int] = {}
        self.stopping = False
        self.signals = 0
        self.dead_letter_queue_url = ""
        self.health: HealthServer | None = None
        self.lease: BusyLease | None = None
        self._model: ModelClient | None = None
        self._context = multiprocessing.get_context("spawn")
        self._last_restart: dict[int, float] = {}

    # ------------------------------------------------------------------ start

    def check_environment(self) -> None:
        """Fail at start, with the fix, rather than on the first message."""
        sqs = aws.client("sqs")
        try:
            sqs.get_queue_attributes(QueueUrl=self.settings.queue_url, AttributeNames=["QueueArn"])
        except Exception as error:
            raise StartupError(
                f"cannot read queue {self.settings.queue_url}: {error}. Check FRAMESCALE_WORKER_QUEUE_URL, "
                "AWS credentials and AWS_ENDPOINT_URL."
            ) from None
        dlq = self.settings.dead_letter_queue_url or find_dead_letter_queue(sqs, self.settings.queue_url)
        if not dlq:
            raise StartupError(
                f"queue {self.settings.queue_url} has no RedrivePolicy and FRAMESCALE_WORKER_DEAD_LETTER_QUEUE_URL "
                "is unset: failed jobs would have nowhere to go. Give the queue a dead-letter queue."
            )
        self.dead_letter_queue_url = dlq

    def start(self) -> None:
        self.check_environment()
        self.settings.work_dir.mkdir(parents=True, exist_ok=True)
        self.events = self._context.Queue()
        self._model = model_client(self.settings)
        if self.settings.health_port:
            self.health = HealthServer(
                self.settings.health_port, alive=self.alive, ready=self.ready, registry=self.metrics.registry
            ).start()
        if self.settings.lease_enabled:
            assert self.settings.node_name is not None  # checked by the settings validator
            self.lease = BusyLease(
                kubernetes_coordination_api(),
                node_name=self.settings.node_name,
                namespace=self.settings.namespace,
                holder=self.settings.pod_name or f"framescale-worker-{os.getpid()}",
                duration_seconds=self.settings.lease_duration_seconds,
                pipeline=self.settings.pipeline_name,
            ).start()
        threading.Thread(target=self._pump_events, name="events", daemon=True).start()
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

    def _spawn(self, slot: int) -> None:
        process = self._context.Process(
            target=slot_main,
            args=(self.settings.model_dump(mode="json"), slot, self.dead_letter_queue_url, self.events),
            name=f"framescale-slot-{slot}",
        )
        process.start()
        self.slots[slot] = process
        self.active[slot] = 0
        self._last_restart[slot] = time.monotonic()

    # ------------------------------------------------------------------ run

    def alive(self) -> bool:
        return self.stopping or all(p.is_alive() for p in self.slots.values()) or bool(self.slots)

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
        log.info("stop requested", extra={"signal": signum, "count": self.signals})
        for process in self.slots.values():
            if process.is_alive() and process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        deadline: float | None = None
        while True:
            time.sleep(0.2)
            if self.stopping:
                if deadline is None:
                    deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 15
                if not any(p.is_alive() for p in self.slots.values()):
                    break
                if time.monotonic() > deadline:
                    log.error("slots did not stop in time; killing them")
                    for process in self.slots.values():
                        process.kill()
                    break
                continue
            for slot, process in list(self.slots.items()):
                if not process.is_alive():
                    self._restart(slot, process)
        self.close()
        log.info("worker stopped")
        return 0

    def _restart(self, slot: int, process: multiprocessing.process.BaseProcess) -> None:
        self.active[slot] = 0
        self._update_lease()
        # A slot that keeps dying (a poison message) must not spin: at most once a second.
        if time.monotonic() - self._last_restart.get(slot, 0) < 1.0:
            return
        log.error("slot process died; restarting it", extra={"slot": slot, "exitcode": process.exitcode})
        self.metrics.slot_restarts.inc()
        self._spawn(slot)

    def _pump_events(self) -> None:
        while True:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            slot = int(event.get("slot", -1))
            if event["type"] == "job_started":
                self.active[slot] = 1
            elif event["type"] == "job_finished":
                self.active[slot] = 0
            self.metrics.observe(event)
            self._update_lease()

    def _update_lease(self) -> None:
        busy = sum(self.active.values())
        self.metrics.busy.set(1 if busy else 0)
        if self.lease is not None:
            self.lease.set_active(busy)

    def close(self) -> None:
        if self.lease is not None:
            self.lease.set_active(0)
            time.sleep(0.2)
            self.lease.stop()
        if self.health is not None:
            self.health.stop()
        if self._model is not None:
            self._model.close()
