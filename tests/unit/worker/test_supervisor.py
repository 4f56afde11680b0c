"""The supervisor through its public face: ``run()`` with stand-in slot processes, events on their
pipes, ``/healthz``'s ``alive()``, ``request_stop()``, and the metrics as Prometheus exports them.

The slot processes are stand-ins (``FakeProcesses``) whose pipes are real: the test writes what
a slot would say, kills them, or lets them stop; the supervisor's loop runs for real in the
test's main thread (it installs signal handlers), driven from a second thread.
"""

from __future__ import annotations

import itertools
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from framescale import busy_lease
from framescale.busy_lease import WorkerState
from framescale.worker import service
from framescale.worker.loop import Action, Disposition, MessageOutcome, Settlement
from framescale.worker.service import CRASH_LOOP_DEATHS, SlotSignals, Supervisor, SupervisorClients, _Shutdown
from framescale.worker.settings import WorkerSettings
from tests.fakes import FakeLeases, FakeModel
from tests.support import wait_for

_pids = itertools.count(900_001)


def soon(check: Callable[[], Any], what: str) -> None:
    wait_for(check, timeout=10, what=what, interval=0.005)


class FakeProcess:
    def __init__(self, writer: Any, slot_args: tuple) -> None:
        self.pid = next(_pids)
        self.writer = writer
        self.args = slot_args
        self.alive = False
        self.terminated = 0
        self.killed = False
        self.stops_on_terminate = True
        self.exitcode: int | None = None

    def start(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    def die(self, code: int = -9) -> None:
        self.alive, self.exitcode = False, code
        self.writer.close()

    def terminate(self) -> None:
        self.terminated += 1
        if self.stops_on_terminate:
            self.die(0)

    def kill(self) -> None:
        self.killed = True
        self.die(-9)

    def join(self, timeout: float | None = None) -> None:
        return None

    def send(self, event: dict[str, Any]) -> None:
        self.writer.send(event)


class _KeptWriter:
    """The write end handed to the supervisor, which closes its copy at once (the slot has its own)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def close(self) -> None:
        pass


class FakeProcesses:
    """Stands in for multiprocessing's spawn context: ``Process`` and ``Pipe``."""

    def __init__(self) -> None:
        self.started: list[FakeProcess] = []
        self._context = multiprocessing.get_context("spawn")

    def Pipe(self, duplex: bool = False) -> tuple[Any, Any]:
        reader, writer = self._context.Pipe(duplex=False)
        return reader, _KeptWriter(writer)

    def Lock(self) -> Any:
        return self._context.Lock()

    def RawValue(self, typecode: str, value: Any) -> Any:
        return self._context.RawValue(typecode, value)

    def Process(self, *, target: Callable[..., None], args: tuple, name: str) -> FakeProcess:
        (writer,) = [arg for arg in args if isinstance(arg, _KeptWriter)]
        process = FakeProcess(writer.real, args)
        self.started.append(process)
        return process


class FakeSqsClient:
    def __init__(self) -> None:
        self.handed_back: list[str] = []

    def get_queue_attributes(self, **_: Any) -> dict:
        return {"Attributes": {"QueueArn": "arn:aws:sqs:us-east-1:1:jobs"}}

    def change_message_visibility(self, *, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> None:
        assert VisibilityTimeout == 0
        self.handed_back.append(ReceiptHandle)


class Harness:
    def __init__(self, tmp_path: Path, leases: Any = None, **settings: Any) -> None:
        values: dict[str, Any] = {
            "queue_url": "https://sqs.us-east-1.amazonaws.com/1/jobs",
            "dead_letter_queue_url": "https://sqs.us-east-1.amazonaws.com/1/jobs-dlq",
            "health_port": 0,
            "work_dir": tmp_path / "work",
            "slots": 2,
        }
        values.update(settings)
        self.sqs = FakeSqsClient()
        self.model = FakeModel()
        self.processes = FakeProcesses()
        clients = SupervisorClients(sqs=self.sqs, model=self.model)
        if leases is not None:
            clients.leases = lambda: leases
        self.supervisor = Supervisor(WorkerSettings(**values), clients, processes=self.processes)
        self.result: list[int] = []

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.supervisor.metrics.registry.get_sample_value(name, labels or {})

    def slot(self, number: int) -> FakeProcess:
        """The live process of slot ``number`` (the latest one started for it)."""
        return [p for p in self.processes.started if p.args[2] == number][-1]

    def run(self, actor: Callable[[], None]) -> None:
        """Run the supervisor here while ``actor`` drives it from another thread, then stop it."""
        failure: list[BaseException] = []

        def act() -> None:
            try:
                soon(lambda: len(self.processes.started) >= self.supervisor.settings.slots, "slots started")
                actor()
            except BaseException as error:
                failure.append(error)
            finally:
                self.supervisor.request_stop()

        thread = threading.Thread(target=act, daemon=True)
        thread.start()
        self.result.append(self.supervisor.run())
        thread.join(10)
        if failure:
            raise failure[0]


@pytest.fixture(autouse=True)
def keep_signal_handlers() -> Iterator[None]:
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "RESTART_MIN_SECONDS", 0.05)


def started(handle: str = "rh-1") -> dict[str, Any]:
    return {"type": "job_started", "receipt_handle": handle, "message_id": "m-1", "time_in_backlog": 2.0}


def finished(action: Action = Action.DELETE) -> dict[str, Any]:
    return {"type": "job_finished", "outcome": MessageOutcome(action), "settlement": Settlement(Disposition.DELETED)}


def test_job_events_mark_the_node_busy_then_idle(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    in_progress = "framescale_worker_jobs_in_progress"

    def actor() -> None:
        harness.slot(0).send(started())
        soon(lambda: harness.metric(in_progress) == 1, "one job in progress")
        assert harness.metric("framescale_worker_node_busy") == 1
        harness.slot(1).send(started("rh-2"))
        soon(lambda: harness.metric(in_progress) == 2, "two jobs in progress")
        harness.slot(0).send(finished())
        harness.slot(1).send(finished(Action.DEAD_LETTER))
        soon(lambda: harness.metric(in_progress) == 0, "no job in progress")

    harness.run(actor)
    assert harness.result == [0]
    assert harness.metric("framescale_worker_node_busy") == 0
    assert harness.metric("framescale_worker_invocations_total", {"outcome": "deleted"}) == 1
    assert harness.metric("framescale_worker_invocations_total", {"outcome": "dead_lettered"}) == 1
    assert harness.metric("framescale_worker_time_in_backlog_seconds_count") == 2


def test_a_slot_that_dies_mid_job_is_restarted_idle(tmp_path: Path) -> None:
    harness = Harness(tmp_path, slots=1)

    def actor() -> None:
        first = harness.slot(0)
        first.send(started())
        soon(lambda: harness.metric("framescale_worker_jobs_in_progress") == 1, "the job under way")
        first.die()  # killed with the job in hand; its last word was "started"
        soon(lambda: len(harness.processes.started) == 2, "the slot restarted")
        assert harness.metric("framescale_worker_jobs_in_progress") == 0
        assert harness.metric("framescale_worker_slot_restarts_total") == 1
        assert harness.supervisor.alive()

    harness.run(actor)


def test_a_garbled_event_costs_only_that_pipe(tmp_path: Path) -> None:
    harness = Harness(tmp_path, slots=2)

    def actor() -> None:
        harness.slot(0).writer.send_bytes(b"\x80\x05 half a pickle")  # a slot killed mid-send
        harness.slot(1).send(started())
        soon(lambda: harness.metric("framescale_worker_jobs_in_progress") == 1, "the other slot's event")

    harness.run(actor)


def test_a_slot_that_keeps_dying_fails_the_liveness_check(tmp_path: Path) -> None:
    harness = Harness(tmp_path, slots=1)

    def actor() -> None:
        for number in range(CRASH_LOOP_DEATHS):
            assert harness.supervisor.alive(), f"not alive after {number} deaths"
            harness.slot(0).die()
            soon(lambda n=number: len(harness.processes.started) == n + 2, "the slot restarted")
        assert not harness.supervisor.alive()

    harness.run(actor)


def test_stop_terminates_the_slots_and_waits_for_them(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.run(lambda: None)
    assert harness.result == [0]
    assert [process.terminated for process in harness.processes.started] == [1, 1]
    assert not any(process.killed for process in harness.processes.started)


def test_a_slot_stuck_past_the_second_signal_is_killed_and_its_message_handed_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "SECOND_SIGNAL_SECONDS", 0.2)
    harness = Harness(tmp_path, slots=1)

    def actor() -> None:
        stuck = harness.slot(0)
        stuck.stops_on_terminate = False
        stuck.send(started("rh-stuck"))
        soon(lambda: harness.metric("framescale_worker_jobs_in_progress") == 1, "the job under way")
        harness.supervisor.request_stop()  # the first signal: the grace period

    harness.run(actor)  # and the second
    assert harness.processes.started[0].killed
    assert harness.sqs.handed_back == ["rh-stuck"]


def test_readiness_follows_the_model_and_stopping(tmp_path: Path) -> None:
    harness = Harness(tmp_path, slots=1)

    def actor() -> None:
        assert harness.supervisor.ready() == (True, "ready")
        harness.model.is_ready = False
        ok, why = harness.supervisor.ready()
        assert not ok and "not available" in why

    harness.run(actor)
    assert harness.supervisor.ready() == (False, "stopping")


def fake_slot(*, in_job: bool = False, receiving: bool = False) -> Any:
    return type(
        "Slot",
        (),
        {"stopping": threading.Event(), "cancel": threading.Event(), "in_job": in_job, "receiving": receiving},
    )()


def test_a_signal_outside_the_long_poll_does_not_raise() -> None:
    # Between receive() returning and the job starting: raising would drop the message in hand.
    worker = fake_slot()
    SlotSignals(worker, grace_seconds=60)(15, None)
    assert worker.stopping.is_set()


def test_a_signal_during_the_long_poll_leaves_it() -> None:
    worker = fake_slot(receiving=True)
    with pytest.raises(_Shutdown):
        SlotSignals(worker, grace_seconds=60)(15, None)


def test_first_signal_gives_the_job_its_grace_and_the_second_cancels_it() -> None:
    worker = fake_slot(in_job=True)
    handler = SlotSignals(worker, grace_seconds=60)
    handler(15, None)
    assert worker.stopping.is_set() and not worker.cancel.is_set()
    handler(15, None)
    assert worker.cancel.is_set()


def test_the_grace_runs_out_into_a_cancel() -> None:
    worker = fake_slot(in_job=True)
    SlotSignals(worker, grace_seconds=0.05)(15, None)
    assert worker.cancel.wait(5), "the grace period never ended the job"


def test_with_a_lease_the_gate_opens_on_admission_and_drains_are_answered_and_counted(tmp_path: Path) -> None:
    leases = FakeLeases()
    node = "ip-10-0-0-9.ec2.internal"
    name, namespace = busy_lease.lease_name(node), "video"
    harness = Harness(
        tmp_path, leases, lease_enabled=True, node_name=node, pod_name="pod-1", namespace=namespace,
        lease_duration_seconds=10, lease_poll_seconds=0.02,
    )  # fmt: skip
    gate = harness.supervisor.gate

    def lease() -> busy_lease.LeaseRecord | None:
        body = leases.leases.get((namespace, name))
        return busy_lease.parse_lease(body) if body else None

    def actor() -> None:
        soon(lambda: lease() is not None and lease().state == WorkerState.STARTING, "the Lease, not admitted")  # type: ignore[union-attr]
        assert not gate.is_open, "the gate opened before the operator admitted the node"
        leases.operator_patch(name, namespace, busy_lease.admit_patch("video/detect"))
        soon(lambda: gate.is_open, "the gate to open once admitted")
        assert gate.slot(0).try_start()  # what a slot process does as it takes a job
        harness.slot(0).send(started())
        soon(lambda: lease().state == WorkerState.BUSY and lease().active_jobs == 1, "busy")  # type: ignore[union-attr]
        leases.operator_patch(name, namespace, busy_lease.drain_request_patch("t1", "video/detect"))
        soon(lambda: lease().refused("t1"), "refused while busy")  # type: ignore[union-attr]
        gate.slot(0).finish()
        harness.slot(0).send(finished())
        leases.operator_patch(name, namespace, busy_lease.drain_request_patch("t2", "video/detect"))
        soon(lambda: lease().drained_for("t2"), "drained when idle")  # type: ignore[union-attr]
        assert not gate.slot(1).try_start()
        leases.failing = True
        soon(lambda: (harness.metric("framescale_worker_lease_renew_failures_total") or 0) > 0, "a failed renewal")
        leases.failing = False

    harness.run(actor)
    assert harness.metric("framescale_worker_drain_requests_total", {"verdict": "refused"}) == 1
    assert harness.metric("framescale_worker_drain_requests_total", {"verdict": "drained"}) == 1
    final = lease()
    assert final is not None and final.state == WorkerState.STOPPING and final.active_jobs == 0
