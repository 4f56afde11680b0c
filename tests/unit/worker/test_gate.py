"""The job-start fence: a slot starts a job only through the gate, atomically with the fence."""

from __future__ import annotations

import multiprocessing
import random
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from framescale.worker.gate import JobGate
from framescale.worker.loop import FENCED_REASON, GATE_WAIT_SECONDS, Action, SlotWorker
from framescale.worker.ports import QueueMessage
from framescale.worker.service import Supervisor, _Slot
from framescale.worker.settings import WorkerSettings


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_shut_until_opened_and_open_only_until_the_given_moment() -> None:
    clock = FakeClock()
    gate = JobGate.for_threads(2, clock)
    slot = gate.slot(0)
    assert not slot.is_open() and not slot.try_start(), "a new gate is shut"
    gate.open(until=110.0)
    assert slot.is_open() and slot.try_start() and slot.in_job
    clock.now = 110.0
    assert not gate.slot(1).try_start(), "open only until the renewal deadline, not at it"
    assert gate.jobs_in_hand() == 1


def test_the_fence_counts_the_jobs_in_hand_and_no_start_gets_past_it() -> None:
    gate = JobGate.for_threads(3)
    gate.open()
    first, second, third = (gate.slot(n) for n in range(3))
    assert first.try_start() and second.try_start()
    assert gate.close() == 2
    assert not third.try_start(), "a start after the fence"
    second.finish()
    assert gate.close() == 1 and gate.jobs_in_hand() == 1
    gate.open()
    assert third.try_start() and gate.jobs_in_hand() == 2


def test_a_slot_killed_inside_its_critical_section_blocks_the_fence_until_its_cell_is_reset() -> None:
    gate = JobGate.for_threads(2)
    gate.open()
    assert gate.slot(0).try_start()
    gate.slot(0)._lock.acquire()  # what a slot killed between its check and its mark leaves
    assert gate.close() is None, "a fence that skipped a held lock could miss a start"
    gate.reset(0)  # the supervisor saw the slot die
    assert gate.close() == 0, "a dead slot holds no job"


def _start_in_process(cell, results) -> None:  # a slot process's side
    results[0] = 1 if cell.try_start() else 0  # the gate is still shut
    deadline = time.monotonic() + 60
    while not cell.is_open() and time.monotonic() < deadline:
        time.sleep(0.01)
    results[1] = 1 if cell.try_start() else 0


def test_a_slot_process_sees_the_supervisors_gate() -> None:
    context = multiprocessing.get_context("spawn")
    gate = JobGate.for_processes(1, context)
    results = context.Array("b", [-1, -1])
    process = context.Process(target=_start_in_process, args=(gate.slot(0), results))
    process.start()
    deadline = time.monotonic() + 60
    while results[0] == -1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert results[0] == 0, "a slot process started a job through a shut gate"
    gate.open()
    process.join(60)
    assert results[1] == 1, "the slot process never saw the gate open"
    assert gate.close() == 1, "the slot's mark is in the supervisor's count"


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads every few microseconds, so that a check and a mark that are not one
    critical section get interleaved with the fence often."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def race_fence(gate: JobGate, *, slots: int, fences: int, seed: int) -> tuple[int, int, int]:
    """Slots start and finish jobs at random while the fence closes and reopens the gate.

    Violations, counted: a fence's count below the jobs the slots themselves know they hold,
    right after the fence or at the end of the shut period (a job started that the count left
    out); or a start whose ``try_start`` began and ended while the gate was fenced shut.
    Returns (job starts, fences, violations).
    """
    generation = [0]  # odd from a fence's return until the gate reopens
    in_hand = [0] * slots  # ground truth, kept by each slot itself
    starts = [0] * slots
    violations = [0]
    stop = threading.Event()

    def slot(number: int) -> None:
        cell = gate.slot(number)
        rng = random.Random(seed * 1000 + number)
        while not stop.is_set():
            before = generation[0]
            if not cell.try_start():
                time.sleep(0)
                continue
            if before % 2 and generation[0] == before:  # the whole call within one shut period
                violations[0] += 1
            in_hand[number] = 1
            starts[number] += 1
            time.sleep(rng.choice((0, 0, 0, 0.0005)))
            in_hand[number] = 0
            cell.finish()

    threads = [threading.Thread(target=slot, args=(n,), daemon=True) for n in range(slots)]
    for thread in threads:
        thread.start()
    rng = random.Random(seed)
    gate.open()
    for _ in range(fences):
        time.sleep(rng.uniform(0, 0.002))
        count = gate.close()
        assert count is not None
        generation[0] += 1
        if sum(in_hand) > count:
            violations[0] += 1
        time.sleep(rng.uniform(0, 0.002))
        if sum(in_hand) > count or gate.jobs_in_hand() > count:
            violations[0] += 1
        generation[0] += 1
        gate.open()
    stop.set()
    for thread in threads:
        thread.join(10)
    return sum(starts), fences, violations[0]


def test_race_no_job_starts_past_the_fence(busy_switching: None) -> None:
    starts, fences, violations = race_fence(JobGate.for_threads(6), slots=6, fences=400, seed=1)
    assert starts > fences, "the slots hardly started any job: the race proves nothing"
    assert violations == 0, f"{violations} violations in {starts} starts and {fences} fences"


class CheckOutsideTheLock(JobGate):
    """The bug the race test must catch: the gate checked before the slot's lock is taken."""

    def reset(self, slot: int):  # type: ignore[no-untyped-def]
        cell = super().reset(slot)
        locked = cell.try_start

        def racy() -> bool:
            if not cell.is_open():
                return False
            time.sleep(0)  # any moment between the check and the mark
            cell._in_job.value = 1
            return True

        cell.try_start = racy  # type: ignore[method-assign]
        assert locked
        return cell


def test_race_catches_a_check_outside_the_lock(busy_switching: None) -> None:
    buggy = CheckOutsideTheLock(6, JobGate.for_threads(0)._primitives)
    _, _, violations = race_fence(buggy, slots=6, fences=400, seed=1)
    assert violations > 0, "the race test does not see a gate checked outside the slot's lock"


# ------------------------------------------------------------------ a slot behind the gate


class RecordingQueue:
    """Just enough of a queue (ports.Queue) for a slot: every receive returns one message; calls are recorded."""

    url = "https://sqs.us-east-1.amazonaws.com/1/q"

    def __init__(self) -> None:
        self.receives = 0
        self.visibility: list[tuple[str, int]] = []

    def receive(self, *, wait_seconds: int, visibility_seconds: int) -> list[QueueMessage]:
        self.receives += 1
        return [message(f"m{self.receives}")]

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        self.visibility.append((receipt_handle, seconds))

    def delete(self, receipt_handle: str) -> None:
        raise AssertionError("nothing is deleted behind a shut gate")

    def send(self, body: str, attributes: object) -> None:
        raise AssertionError("nothing is dead-lettered behind a shut gate")


def message(name: str) -> QueueMessage:
    return QueueMessage(name, f"rh-{name}", '{"video": "s3://in/v.mp4", "job_id": "j"}')


def slot_worker(gate: JobGate, queue: RecordingQueue, events: list[dict]) -> SlotWorker:
    settings = WorkerSettings(queue_url=queue.url, wait_time_seconds=0)
    model = SimpleNamespace(ready=lambda: True)
    return SlotWorker(
        settings,
        queue=queue,
        dead_letters=queue,
        store=None,  # type: ignore[arg-type]
        publisher=None,  # type: ignore[arg-type]
        model=model,  # type: ignore[arg-type]
        events=events.append,
        gate=gate.slot(0),
    )


def test_a_slot_does_not_poll_while_the_gate_is_shut() -> None:
    gate, queue, events = JobGate.for_threads(1), RecordingQueue(), []
    worker = slot_worker(gate, queue, events)
    threading.Timer(3 * GATE_WAIT_SECONDS, worker.stopping.set).start()
    worker.run()
    assert queue.receives == 0, "a long poll while shut: its message would only be handed back"


def test_a_message_received_after_the_fence_is_handed_back_at_once() -> None:
    gate, queue, events = JobGate.for_threads(1), RecordingQueue(), []
    worker = slot_worker(gate, queue, events)
    outcome = worker.handle(message("late")).outcome  # a long poll that returned after the fence
    assert (outcome.action, outcome.reason) == (Action.HAND_BACK, FENCED_REASON)
    assert queue.visibility == [("rh-late", 0)], "handed back at once, visibility 0"
    assert [event["type"] for event in events] == ["fenced_hand_back", "job_finished"], "no job started"
    assert gate.close() == 0 and not gate.slot(0).in_job


# ------------------------------------------------------------------ the supervisor's side


def test_the_supervisor_shuts_the_gate_on_a_stop_request_and_a_dead_slot_holds_no_job() -> None:
    supervisor = Supervisor(WorkerSettings(queue_url="https://sqs.us-east-1.amazonaws.com/1/q", slots=2))
    supervisor.gate.open()
    assert supervisor.gate.slot(0).try_start() and supervisor.gate.slot(1).try_start()
    dead = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join(30)
    supervisor.slots[0] = _Slot(dead, None)  # started a moment ago: reaped, not yet respawned
    supervisor._restart(0)
    assert supervisor.gate.close() == 1, "the dead slot's job is still counted"
    supervisor.gate.open()
    supervisor.request_stop()
    assert not supervisor.gate.slot(0).try_start(), "a job started after the stop request"
