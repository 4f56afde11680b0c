"""The supervisor's view of its slots (events over per-slot pipes, health) and a slot's signal handling."""

from __future__ import annotations

import multiprocessing
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from framescale.worker.loop import Action, MessageOutcome
from framescale.worker.service import (
    CRASH_LOOP_DEATHS,
    WEDGED_SECONDS,
    SlotSignals,
    Supervisor,
    _Shutdown,
    _Slot,
)
from framescale.worker.settings import WorkerSettings

CONTEXT = multiprocessing.get_context("spawn")


def finished_process() -> multiprocessing.process.BaseProcess:
    process = CONTEXT.Process(target=time.sleep, args=(0,))
    process.start()
    process.join(30)
    return process


@pytest.fixture
def supervisor() -> Supervisor:
    return Supervisor(WorkerSettings(queue_url="https://sqs.us-east-1.amazonaws.com/1/q"))


def in_progress(supervisor: Supervisor) -> float | None:
    return supervisor.metrics.registry.get_sample_value("framescale_worker_jobs_in_progress")


def slot_with_pipe(supervisor: Supervisor) -> Any:
    reader, writer = CONTEXT.Pipe(duplex=False)
    # Restarted a moment ago: _restart reaps it but holds the respawn back.
    supervisor.slots[0] = _Slot(finished_process(), reader)
    return writer


def test_a_dead_slots_stale_job_start_leaves_it_idle(supervisor: Supervisor) -> None:
    writer = slot_with_pipe(supervisor)
    writer.send({"type": "job_started", "receipt_handle": "rh", "message_id": "m", "time_in_backlog": None})
    writer.close()  # the slot died right after saying so
    supervisor._restart(0)
    state = supervisor.slots[0]
    assert not state.busy and state.receipt_handle is None
    assert in_progress(supervisor) == 0
    assert state.events is None, "the dead slot's pipe is still polled"


def test_events_mark_the_slot_busy_then_idle(supervisor: Supervisor) -> None:
    writer = slot_with_pipe(supervisor)
    writer.send({"type": "job_started", "receipt_handle": "rh", "message_id": "m", "time_in_backlog": 1.0})
    supervisor._pump(1.0)
    assert supervisor.slots[0].busy and supervisor.slots[0].receipt_handle == "rh"
    assert in_progress(supervisor) == 1
    writer.send({"type": "job_finished", "outcome": MessageOutcome(Action.DELETE)})
    supervisor._pump(1.0)
    assert not supervisor.slots[0].busy and in_progress(supervisor) == 0


def test_a_garbled_event_closes_that_pipe_and_the_pump_goes_on(supervisor: Supervisor) -> None:
    writer = slot_with_pipe(supervisor)
    writer.send_bytes(b"\x80\x05 half a pickle")  # what a slot killed mid-send leaves
    supervisor._pump(1.0)
    assert supervisor.slots[0].events is None
    supervisor._pump(0.01)  # nothing left to poll: no error


def test_alive_reports_a_crash_looping_slot_and_a_wedged_loop(supervisor: Supervisor) -> None:
    assert supervisor.alive()
    now = time.monotonic()
    supervisor._deaths[0].extend([now] * CRASH_LOOP_DEATHS)
    assert not supervisor.alive()
    supervisor._deaths.clear()
    supervisor._last_tick = now - WEDGED_SECONDS - 1
    assert not supervisor.alive()


def fake_slot(*, in_job: bool = False, receiving: bool = False) -> Any:
    return SimpleNamespace(stopping=threading.Event(), cancel=threading.Event(), in_job=in_job, receiving=receiving)


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
