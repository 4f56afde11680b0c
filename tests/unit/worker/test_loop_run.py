"""The slot's loop around ``handle``: when it polls, how long it waits instead, what it hands on.

Each test steps ``run()`` or one of its parts against the in-memory world and checks the waits
it made (on the fake clock), the calls the queue saw and the flags the supervisor reads.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from framescale.worker.errors import Unavailable
from framescale.worker.gate import JobGate
from framescale.worker.loop import (
    GATE_WAIT_SECONDS,
    MODEL_WAIT_SECONDS,
    NOT_READY_LOG_SECONDS,
    READY_CACHE_SECONDS,
    SlotWorker,
)
from framescale.worker.ports import QueueMessage
from tests.fakes import FakeClock, FakeQueue
from tests.unit.worker.conftest import World


class WatchedQueue(FakeQueue):
    """A FakeQueue that keeps the arguments of each receive and what the worker's flag said meanwhile."""

    def __init__(self, clock: FakeClock, batch: int = 1) -> None:
        super().__init__(clock=clock)
        self.batch = batch
        self.receives: list[dict[str, Any]] = []
        self.worker: SlotWorker | None = None

    def receive(self, *, wait_seconds: int, visibility_seconds: int) -> list[QueueMessage]:
        receiving = self.worker.receiving if self.worker is not None else None
        self.receives.append({"wait": wait_seconds, "visibility": visibility_seconds, "receiving": receiving})
        taken: list[QueueMessage] = []
        for _ in range(self.batch):
            taken += super().receive(wait_seconds=wait_seconds, visibility_seconds=visibility_seconds)
        return taken


def watched(world: World, **settings: Any) -> tuple[SlotWorker, WatchedQueue]:
    queue = WatchedQueue(world.clock)
    world.queue = queue
    worker = world.worker(**settings)
    queue.worker = worker
    return worker, queue


def stop_after_waits(worker: SlotWorker, clock: FakeClock, count: int) -> None:
    """Make the clock's ``count``-th wait also set the worker's stopping event."""
    original = clock.wait

    def wait(event: threading.Event, seconds: float) -> bool:
        if len(clock.waits) + 1 >= count:
            worker.stopping.set()
        return original(event, seconds)

    clock.wait = wait  # type: ignore[method-assign]


def test_while_the_model_is_not_ready_run_waits_a_second_at_a_time_and_never_polls(world: World) -> None:
    world.model.is_ready = False
    worker, queue = watched(world)
    queue.put(world.job_message())
    stop_after_waits(worker, world.clock, 3)
    worker.run()
    assert world.clock.waits == [MODEL_WAIT_SECONDS] * 3 and queue.receives == []


def test_while_the_gate_is_shut_run_looks_again_shortly_and_never_polls(world: World) -> None:
    worker, queue = watched(world)
    worker.gate = JobGate.for_threads(1, clock=world.clock.monotonic).slot(0)  # never opened
    queue.put(world.job_message())
    stop_after_waits(worker, world.clock, 3)
    worker.run()
    assert world.clock.waits == [GATE_WAIT_SECONDS] * 3 and queue.receives == []
    assert len(queue.visible()) == 1


def test_a_receive_long_polls_with_the_settings_and_says_it_is_receiving(world: World) -> None:
    worker, queue = watched(world, wait_time_seconds=7, visibility_timeout_seconds=90)
    assert worker.receive() == [] and not worker.receiving
    assert queue.receives == [{"wait": 7, "visibility": 90, "receiving": True}]


def test_a_failed_receive_is_logged_with_its_error(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.queue.faults.fail("receive", "", Unavailable("ReceiveMessage", "503"))
    caplog.set_level(logging.INFO)
    assert world.worker().receive() == []
    (record,) = [r for r in caplog.records if r.name == "framescale.worker.loop"]
    assert (record.levelname, record.getMessage()) == ("WARNING", "receive failed; retrying shortly")
    assert (record.__dict__["error"], record.__dict__["stage"]) == ("ReceiveMessage: 503", "receive")


def test_each_message_of_a_batch_is_timed_from_when_the_batch_arrived(world: World) -> None:
    # The second job of a batch waited while the first ran: its total includes that wait.
    queue = WatchedQueue(world.clock, batch=2)
    world.queue = queue
    worker = world.worker()
    queue.put(world.job_message(job_id="first"))
    queue.put(world.job_message(job_id="second"))
    finished: list[Any] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "job_started":
            world.clock.advance(5.0)  # each job takes 5 s here
        if event["type"] == "job_finished":
            finished.append(event["outcome"].reports[0])
            if len(finished) == 2:
                worker.stopping.set()

    worker.events = on_event
    worker.run()
    assert [report.job_id for report in finished] == ["first", "second"]
    assert [report.timings["total"] for report in finished] == [5.0, 10.0]


def test_a_lone_call_to_handle_is_timed_from_the_call(world: World) -> None:
    worker = world.worker()
    message = world.queue.take(world.job_message())
    world.clock.advance(30.0)  # time since the receive that handle was not told about
    handled = worker.handle(message)
    assert handled.outcome.reports[0].timings["total"] == 0.0
    handled = worker.handle(world.queue.take(world.job_message(job_id="again")), received=world.clock.now - 4.0)
    assert handled.outcome.reports[0].timings["total"] == 4.0


def test_model_readiness_is_cached_for_exactly_ten_seconds(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float] = []
    monkeypatch.setattr(world.model, "ready", lambda: asked.append(world.clock.now) or True)
    worker = world.worker()
    assert worker.model_ready()
    world.clock.advance(READY_CACHE_SECONDS)
    assert worker.model_ready() and len(asked) == 2, "the answer was kept for ten seconds or more"


def test_the_first_readiness_check_asks_even_at_time_zero(world: World) -> None:
    world.clock = FakeClock(start=0.0)  # a monotonic clock may start at 0 (a fresh container)
    world.model.is_ready = False
    assert not world.worker().model_ready()


def test_an_unready_model_is_logged_once_per_thirty_seconds(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.clock = FakeClock(start=0.5)
    world.model.is_ready = False
    worker = world.worker(model_name="detector", model_server="tfserving:8500")
    caplog.set_level(logging.WARNING)

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "model not available yet; not taking jobs"]

    assert not worker.model_ready()
    (first,) = warnings()
    assert (first.__dict__["model"], first.__dict__["model_server"]) == ("detector", "tfserving:8500")
    world.clock.advance(NOT_READY_LOG_SECONDS)
    assert not worker.model_ready() and len(warnings()) == 1, "logged again within thirty seconds"
    world.clock.advance(0.5)
    assert not worker.model_ready() and len(warnings()) == 2


def test_an_orphaned_slot_logs_why_it_stops_once(world: World, caplog: pytest.LogCaptureFixture) -> None:
    worker = world.worker()
    worker.orphaned = lambda: True
    worker.run()
    worker.run()
    gone = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in gone] == ["the supervisor is gone; this slot takes no more jobs and stops"]


def test_a_slot_asked_to_stop_does_not_ask_whether_it_is_orphaned(world: World) -> None:
    asked: list[bool] = []
    worker = world.worker()
    worker.orphaned = lambda: asked.append(True) or True
    worker.stopping.set()
    worker.run()
    assert asked == []


def test_the_events_flags_and_gate_given_to_the_worker_are_the_ones_it_uses(world: World) -> None:
    stopping, cancel = threading.Event(), threading.Event()
    gate = JobGate.for_threads(1, clock=world.clock.monotonic)
    gate.open()
    slot = gate.slot(0)
    in_job_seen: list[tuple[str, bool, bool]] = []

    def seen(event: dict[str, Any]) -> None:
        in_job_seen.append((event["type"], worker.in_job, slot.in_job))

    worker = SlotWorker(
        world.settings(),
        queue=world.queue,
        dead_letters=world.dead_letters,
        store=world.store,
        publisher=world.publisher,
        model=world.model,
        clock=world.clock,
        events=seen,
        stopping=stopping,
        cancel=cancel,
        orphaned=lambda: in_job_seen.append(("stopping check", worker.in_job, slot.in_job)) or False,
        gate=slot,
    )
    handled = worker.handle(world.queue.take(world.job_message(job_id="job-1")))
    assert handled.settlement.disposition.value == "deleted"
    # In a job from before its stopping check; the gate counts it from the start until it is settled.
    assert in_job_seen == [("stopping check", True, False), ("job_started", True, True), ("job_finished", False, False)]
    assert not slot.in_job and not worker.in_job, "the gate still counts a settled job in hand"
    cancel.set()
    handled = worker.handle(world.queue.take(world.job_message(job_id="job-2")))
    assert handled.outcome.action.value == "handed_back", "the cancel event given was not the one the job watches"
    stopping.set()
    handled = worker.handle(world.queue.take(world.job_message(job_id="job-3")))
    assert handled.outcome.reason == "shutting down before the job started"
