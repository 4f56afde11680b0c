"""The Lease keeper (framescale.worker.lease) against Leases in memory, on a fake monotonic clock.

Each test drives ``tick()`` by hand and plays the operator with the busy_lease patch builders;
the race at the end runs the keeper's own thread against slot threads and a racing operator.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from framescale import busy_lease, names
from framescale.busy_lease import DrainMode, DrainReply, DrainVerdict, WorkerState
from framescale.worker.gate import JobGate
from framescale.worker.lease import LeaseIdentity, LeaseKeeper, renewal_margin
from tests.fakes import FakeLeases

NS = "video"
IDENTITY = LeaseIdentity(node_name="ip-10-0-0-1.ec2.internal", namespace=NS, holder="worker-abc", pipeline="detect")
NAME = IDENTITY.lease_name
DURATION = 15.0
OWNER = "video/detect"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def keeper(leases: FakeLeases, gate: JobGate, clock: Clock, **kwargs) -> LeaseKeeper:  # type: ignore[no-untyped-def]
    return LeaseKeeper(leases, gate, IDENTITY, duration_seconds=DURATION, monotonic=clock, **kwargs)


def record(leases: FakeLeases) -> busy_lease.LeaseRecord:
    parsed = busy_lease.parse_lease(leases.leases[(NS, NAME)])
    assert parsed is not None, "the keeper's Lease is not a framescale node Lease"
    return parsed


def admitted(slots: int = 1) -> tuple[FakeLeases, JobGate, Clock, LeaseKeeper]:
    leases, clock = FakeLeases(), Clock()
    gate = JobGate.for_threads(slots, clock)
    kept = keeper(leases, gate, clock)
    kept.tick()
    leases.operator_patch(NAME, NS, busy_lease.admit_patch(OWNER))
    kept.tick()
    assert gate.is_open, "an admitted node with a fresh Lease takes jobs"
    return leases, gate, clock, kept


def request(leases: FakeLeases, mode: DrainMode = DrainMode.IF_IDLE) -> str:
    token = busy_lease.new_drain_token()
    leases.operator_patch(NAME, NS, busy_lease.drain_request_patch(token, OWNER, mode))
    return token


def reply(leases: FakeLeases) -> str | None:
    return leases.annotations(NAME, NS).get(names.LEASE_DRAIN_REPLY_ANNOTATION)


def test_the_keeper_holds_and_renews_the_lease_while_idle() -> None:
    leases, gate, clock, kept = admitted()
    first = record(leases)
    assert (first.state, first.active_jobs, first.holder) == (WorkerState.IDLE, 0, "worker-abc")
    assert first.duration_seconds == 15 and first.pipeline == "detect" and first.node_name == IDENTITY.node_name
    renew_times, before = {first.renew_time}, kept.renewals
    for _ in range(9):  # 9 ticks a third of the duration apart, never a job
        clock.now += DURATION / 3
        kept.tick()
        renew_times.add(record(leases).renew_time)
        assert gate.is_open, "an idle node with a renewed Lease stays open"
    assert kept.renewals - before == 9 and len(renew_times) == 10, "renewed every third of the duration while idle"


def test_no_job_starts_before_the_operator_admits_the_node() -> None:
    leases, clock = FakeLeases(), Clock()
    gate = JobGate.for_threads(1, clock)
    kept = keeper(leases, gate, clock)
    for _ in range(3):
        kept.tick()
        clock.now += 1
        assert not gate.slot(0).try_start(), "a job started on a node the operator has not admitted"
    assert record(leases).state == WorkerState.STARTING
    leases.operator_patch(NAME, NS, busy_lease.admit_patch(OWNER))
    kept.tick()
    assert gate.slot(0).try_start()
    kept.tick()
    assert (record(leases).state, record(leases).active_jobs) == (WorkerState.BUSY, 1)


def test_if_idle_is_refused_while_busy_and_drained_with_the_same_token_when_idle() -> None:
    leases, gate, _clock, kept = admitted()
    assert gate.slot(0).try_start()
    token = request(leases)
    kept.tick()
    assert reply(leases) == f"{token} refused" and record(leases).refused(token)
    assert gate.is_open, "a refusal goes on working as before"
    gate.slot(0).finish()
    kept.tick()
    assert reply(leases) == f"{token} refused", "a request is answered once"
    leases.operator_patch(NAME, NS, busy_lease.withdraw_drain_patch())
    kept.tick()
    second = request(leases)
    kept.tick()
    assert reply(leases) == f"{second} drained" and record(leases).drained_for(second)
    assert not record(leases).drained_for(token), "the reply names the request it answers"
    assert not gate.slot(0).try_start(), "a job started on a drained node"
    assert [answer.verdict for answer in kept.answers] == [DrainVerdict.REFUSED, DrainVerdict.DRAINED]


def test_finish_waits_for_the_job_in_hand_then_answers_drained() -> None:
    leases, gate, clock, kept = admitted(slots=2)
    assert gate.slot(0).try_start()
    token = request(leases, DrainMode.FINISH)
    for _ in range(5):
        clock.now += 1
        kept.tick()
        assert reply(leases) is None, "drained (or refused) while a finish drain still has a job in hand"
        assert (record(leases).state, record(leases).active_jobs) == (WorkerState.DRAINING, 1)
        assert not gate.slot(1).try_start(), "the other slot started a job while the node drains"
    gate.slot(0).finish()
    kept.tick()
    assert record(leases).drained_for(token)


def test_a_drained_node_stays_drained_while_the_request_stands_and_withdrawal_reopens_it() -> None:
    leases, gate, clock, kept = admitted()
    token = request(leases)
    for _ in range(12):  # past several renewals and the Lease duration
        clock.now += DURATION / 4
        kept.tick()
        assert record(leases).drained_for(token) and not gate.slot(0).try_start()
    assert len(kept.answers) == 1
    leases.operator_patch(NAME, NS, busy_lease.withdraw_drain_patch())
    kept.tick()
    assert gate.slot(0).try_start(), "the withdrawn request still keeps the node shut"
    kept.tick()
    assert record(leases).state == WorkerState.BUSY


def test_a_worker_starting_with_a_request_on_its_lease_honours_it_before_any_job() -> None:
    leases, gate, clock, kept = admitted()
    token = request(leases)
    kept.stop(final_tick=False)  # the worker restarts: a new gate and keeper, the Lease as it was
    opened = []
    gate = JobGate.for_threads(1, clock)
    original_open = gate.open
    gate.open = lambda until=float("inf"): (opened.append(until), original_open(until))  # type: ignore[method-assign]
    restarted = keeper(leases, gate, clock)
    restarted.tick()
    assert opened == [], "the restarted worker opened its gate under a standing request"
    assert record(leases).drained_for(token)
    leases.operator_patch(NAME, NS, busy_lease.withdraw_drain_patch())
    restarted.tick()
    assert gate.slot(0).try_start()


def test_a_keeper_that_cannot_renew_starts_no_job_after_its_lease_could_lapse() -> None:
    leases, gate, clock, kept = admitted()
    renewed = kept.renewed_at
    assert renewed is not None
    leases.failing = True  # the API server goes away
    deadline = renewed + DURATION - renewal_margin(DURATION)
    while clock.now < deadline - 0.5:
        clock.now += 0.5
        kept.tick()
    assert gate.slot(0).try_start(), "shut too early: the Lease is still live"
    gate.slot(0).finish()
    clock.now = deadline
    assert not gate.slot(0).try_start(), "a job started at the moment the Lease could lapse"
    clock.now = renewed + DURATION
    kept.tick()
    assert not gate.slot(0).try_start() and kept.renew_failures > 0
    leases.failing = False
    kept.tick()
    assert gate.slot(0).try_start(), "a renewal that succeeds again reopens the gate"


@pytest.mark.parametrize("skew", [timedelta(0), timedelta(seconds=-120), timedelta(seconds=120)])
def test_a_worker_clock_minutes_off_changes_nothing(skew: timedelta) -> None:
    """The keeper never compares the wall clock with anything: the same steps give the same gate
    and the same answers with the worker's clock 120 s behind or ahead."""
    leases, clock = FakeLeases(), Clock()
    gate = JobGate.for_threads(1, clock)
    kept = keeper(leases, gate, clock, wall=lambda: datetime.now(UTC) + skew)
    seen = []
    for step in range(40):
        if step == 2:
            leases.operator_patch(NAME, NS, busy_lease.admit_patch(OWNER))
        if step == 10:
            assert gate.slot(0).try_start()
        if step == 12:
            leases.operator_patch(NAME, NS, busy_lease.drain_request_patch("t1", OWNER))
        if step == 20:
            gate.slot(0).finish()
            leases.operator_patch(NAME, NS, busy_lease.drain_request_patch("t2", OWNER))
        kept.tick()
        seen.append((gate.is_open, record(leases).state, reply(leases)))
        clock.now += 1.0
    written = busy_lease.parse_time(record(leases).renew_time)
    assert written is not None and abs((written - datetime.now(UTC)) - skew) < timedelta(seconds=5)
    assert seen[1] == (False, WorkerState.STARTING, None) and seen[5] == (True, WorkerState.IDLE, None)
    assert seen[15] == (True, WorkerState.BUSY, "t1 refused") and seen[30] == (False, WorkerState.DRAINED, "t2 drained")


# ------------------------------------------------------------------ the race


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads often, so that the keeper's fence and the slots' starts interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def race_drains(requests: int, *, slots: int, seed: int, keeper_class: type[LeaseKeeper] = LeaseKeeper) -> dict:
    """Slots take jobs through the gate at random while an "operator" asks for drains at random
    moments, and after each reply withdraws it a moment later. A violation is a "drained" reply
    while a slot (by its own account) held a job, from the reply until the withdrawal."""
    leases = FakeLeases()
    gate = JobGate.for_threads(slots)
    kept = keeper_class(leases, gate, IDENTITY, duration_seconds=DURATION, poll_seconds=0.001).start()
    in_hand = [0] * slots
    starts = [0]
    stop = threading.Event()

    def slot(number: int) -> None:
        cell, rng = gate.slot(number), random.Random(seed * 100 + number)
        while not stop.is_set():
            if not cell.try_start():
                time.sleep(rng.choice((0, 0.0002)))
                continue
            in_hand[number] = 1
            starts[0] += 1
            time.sleep(rng.choice((0, 0.0005, 0.002, 0.005)))
            in_hand[number] = 0
            cell.finish()
            time.sleep(rng.choice((0, 0.001, 0.004, 0.01)))  # sometimes the next job at once

    threads = [threading.Thread(target=slot, args=(n,), daemon=True) for n in range(slots)]
    for thread in threads:
        thread.start()
    leases.operator_patch(NAME, NS, busy_lease.admit_patch(OWNER))
    rng = random.Random(seed)
    verdicts = {"drained": 0, "refused": 0}
    violations = 0
    for _ in range(requests):
        time.sleep(rng.uniform(0, 0.004))
        token = busy_lease.new_drain_token()
        leases.operator_patch(NAME, NS, busy_lease.drain_request_patch(token, OWNER))
        deadline = time.monotonic() + 10
        answer = None
        while answer is None and time.monotonic() < deadline:
            answer = DrainReply.parse(reply(leases))
            answer = answer if answer is not None and answer.token == token else None
        assert answer is not None, "a drain request was never answered"
        verdicts[answer.verdict.value] += 1
        if answer.verdict is DrainVerdict.DRAINED:
            hold_until = time.monotonic() + rng.uniform(0, 0.003)  # the "termination" window
            while time.monotonic() < hold_until:
                if sum(in_hand):
                    violations += 1
                    break
        leases.operator_patch(NAME, NS, busy_lease.withdraw_drain_patch())
    stop.set()
    for thread in threads:
        thread.join(10)
    kept.stop(final_tick=False)
    return {"starts": starts[0], "violations": violations, **verdicts}


def test_race_no_drained_answer_while_a_job_is_in_hand(busy_switching) -> None:  # type: ignore[no-untyped-def]
    result = race_drains(300, slots=3, seed=7)
    assert result["drained"] > 20 and result["refused"] > 20, f"the race did not exercise both answers: {result}"
    assert result["starts"] > 300, f"the slots hardly took jobs: {result}"
    assert result["violations"] == 0, result


class CountsBeforeTheFence(LeaseKeeper):
    """The bug the race must catch: answering from a count taken before the gate is fenced."""

    def _decide(self) -> bool:
        record = self.record
        if record is not None and record.drain_request and record.drain_request not in self._answered:
            counted = self.gate.jobs_in_hand()
            time.sleep(0)
            self.gate.close()
            if counted == 0:
                self._answered = {record.drain_request: DrainVerdict.DRAINED}
                self._reply = DrainReply(record.drain_request, DrainVerdict.DRAINED)
                self.state = WorkerState.DRAINED
                return False
        return super()._decide()


def test_race_catches_a_count_taken_before_the_fence(busy_switching) -> None:  # type: ignore[no-untyped-def]
    result = race_drains(300, slots=3, seed=7, keeper_class=CountsBeforeTheFence)
    assert result["violations"] > 0, f"the race does not see a count taken before the fence: {result}"
