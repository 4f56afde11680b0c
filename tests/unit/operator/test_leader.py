"""Leader election's decisions on the process's own clock, and the writes it makes."""

from __future__ import annotations

from typing import Any

import pytest

from framescale_operator import leader
from framescale_operator.leader import Conflict, Elector, LeaderElection, LeaseRecord, Step


def record(holder: str, renew: str = "t1", duration: int = 15, version: str = "1", transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, renew, duration, transitions, version)


def test_no_lease_or_a_released_one_is_acquired_at_once() -> None:
    elector = Elector("me", lease_duration=15, renew_deadline=10)
    assert elector.step(None, 0.0) is Step.ACQUIRE
    assert elector.step(record(""), 0.0) is Step.ACQUIRE


def test_anothers_lease_expires_only_after_a_full_duration_unchanged_on_our_clock() -> None:
    elector = Elector("me", lease_duration=15, renew_deadline=10)
    # The renewTime written on the other machine says nothing about when: only a change counts.
    assert elector.step(record("other", "1999-01-01T00:00:00Z"), 100.0) is Step.FOLLOW
    assert elector.step(record("other", "1999-01-01T00:00:00Z"), 115.0) is Step.FOLLOW
    assert elector.step(record("other", "1999-01-01T00:00:00Z"), 115.1) is Step.ACQUIRE


def test_a_renewal_seen_restarts_the_count() -> None:
    elector = Elector("me", lease_duration=15, renew_deadline=10)
    elector.step(record("other", "t1"), 0.0)
    assert elector.step(record("other", "t2"), 14.0) is Step.FOLLOW
    assert elector.step(record("other", "t2"), 28.0) is Step.FOLLOW  # 14 s since t2 was first seen
    assert elector.step(record("other", "t2"), 29.5) is Step.ACQUIRE


def test_the_lease_duration_written_in_the_lease_counts() -> None:
    elector = Elector("me", lease_duration=15, renew_deadline=10)
    elector.step(record("other", duration=1), 0.0)  # a released-style short lease
    assert elector.step(record("other", duration=1), 1.5) is Step.ACQUIRE


def test_a_leader_that_cannot_renew_stops_before_anyone_may_take_over() -> None:
    elector = Elector("me", lease_duration=15, renew_deadline=10)
    assert elector.step(record("me"), 0.0) is Step.RENEW
    elector.succeeded(0.0)
    assert elector.leading(9.9)
    assert not elector.leading(10.0)  # 5 s before the Lease (15 s) can be taken by the other
    elector.succeeded(12.0)
    assert elector.leading(12.0)
    elector.lost()
    assert not elector.leading(12.0)


class FakeLeases:
    """A Lease store with resourceVersion preconditions, as the API server has."""

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.version = 0
        self.writes: list[str] = []

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None if self.body is None else {**self.body, "metadata": {"resourceVersion": str(self.version)}}

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        if self.body is not None:
            raise Conflict("exists")
        self.body, self.version = {"spec": dict(body["spec"])}, self.version + 1
        self.writes.append(f"create {body['spec']['holderIdentity']}")

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        assert self.body is not None
        if patch["metadata"]["resourceVersion"] != str(self.version):
            raise Conflict("stale")
        self.body["spec"].update(patch["spec"])
        self.version += 1
        self.writes.append(f"patch {patch['spec']['holderIdentity'] or '(released)'}")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def election(store: FakeLeases, identity: str, clock: Clock) -> LeaderElection:
    return LeaderElection(
        store,
        namespace="ns",
        name="lead",
        identity=identity,
        lease_duration=15,
        renew_deadline=10,
        retry_period=2,
        clock=clock,
    )


def test_two_replicas_exactly_one_leads_and_the_other_takes_over_after_the_duration() -> None:
    store, clock = FakeLeases(), Clock()
    first, second = election(store, "a", clock), election(store, "b", clock)
    for _ in range(20):  # 40 s of both trying every 2 s
        first.try_once()
        second.try_once()
        assert [first.is_leader(), second.is_leader()].count(True) == 1
        clock.now += 2
    assert first.is_leader() and store.body is not None and store.body["spec"]["holderIdentity"] == "a"
    # "a" dies without releasing: "b" waits out the Lease on its own clock, then takes it.
    died = clock.now
    while not second.is_leader():
        second.try_once()
        clock.now += 2
        assert clock.now - died <= 15 + 2 + 2, "took longer than the Lease duration and a retry"
    assert store.body["spec"]["holderIdentity"] == "b"
    assert store.body["spec"]["leaseTransitions"] == 1


def test_a_clean_stop_releases_and_the_other_takes_over_at_its_next_try() -> None:
    store, clock = FakeLeases(), Clock()
    first, second = election(store, "a", clock), election(store, "b", clock)
    first.try_once()
    second.try_once()
    first.stop()
    assert store.writes[-1] == "patch (released)"
    clock.now += 2
    second.try_once()
    assert second.is_leader()


def test_racing_acquirers_one_wins_on_the_version_precondition() -> None:
    store, clock = FakeLeases(), Clock()
    first, second = election(store, "a", clock), election(store, "b", clock)
    first.try_once()
    first.stop()  # released: both will try to acquire at once
    stale = store.read("ns", "lead")
    original_read = store.read
    store.read = lambda namespace, name: stale  # type: ignore[method-assign]
    first_again, second_again = election(store, "a2", clock), second
    first_again.try_once()
    second_again.try_once()
    store.read = original_read  # type: ignore[method-assign]
    assert [first_again.is_leader(), second_again.is_leader()].count(True) == 1


def test_timing_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="retryPeriod < renewDeadline < leaseDuration"):
        LeaderElection(
            FakeLeases(), namespace="n", name="l", identity="i", lease_duration=10, renew_deadline=10, retry_period=2
        )


def test_lease_spec_marks_acquisition() -> None:
    from datetime import UTC, datetime

    spec = leader.lease_spec("me", 15, datetime(2026, 1, 1, tzinfo=UTC), transitions=3, acquired=True)
    assert spec["holderIdentity"] == "me" and spec["acquireTime"] == spec["renewTime"]
    assert "acquireTime" not in leader.lease_spec(
        "me", 15, datetime(2026, 1, 1, tzinfo=UTC), transitions=3, acquired=False
    )
