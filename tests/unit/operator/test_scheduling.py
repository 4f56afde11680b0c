"""When a pass is due, and which Lease changes wake the pipelines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from framescale_operator.scheduling import Due, LeaseWatch, PipelineClock

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def ran(clock: PipelineClock, at: float = 100.0, expiry: datetime | None = None) -> PipelineClock:
    clock.ran(monotonic=at, generation=1, lease_epoch=0, next_expiry=expiry, audited=True)
    return clock


def due(clock: PipelineClock, at: float, *, now: datetime = NOW, generation: int = 1, epoch: int = 0) -> str | None:
    return clock.due(monotonic=at, now=now, poll_interval=15, generation=generation, lease_epoch=epoch)


def test_first_tick_is_due() -> None:
    assert due(PipelineClock(), 0) == Due.FIRST


def test_poll_interval() -> None:
    clock = ran(PipelineClock())
    assert due(clock, 114.9) is None
    assert due(clock, 115.0) == Due.POLL


def test_spec_change_lease_change_and_expiry_wake_early() -> None:
    clock = ran(PipelineClock(), expiry=NOW + timedelta(seconds=5))
    assert due(clock, 101, generation=2) == Due.SPEC
    assert due(clock, 101, epoch=1) == Due.LEASES
    assert due(clock, 101, now=NOW + timedelta(seconds=4)) is None
    assert due(clock, 101, now=NOW + timedelta(seconds=5)) == Due.EXPIRY


def test_audit_interval() -> None:
    clock = PipelineClock()
    assert clock.audit_due(monotonic=0, audit_interval=30)
    ran(clock, at=10)
    assert not clock.audit_due(monotonic=39, audit_interval=30)
    assert clock.audit_due(monotonic=40, audit_interval=30)


def test_lease_watch_counts_flips_not_renewals() -> None:
    watch = LeaseWatch()
    assert watch.observe("ns", "a", False) is False  # a new idle Lease: nothing to protect
    assert watch.observe("ns", "a", True) is True
    assert watch.observe("ns", "a", True) is False  # renewal
    assert watch.observe("ns", "a", False) is True
    assert watch.observe("ns", "b", True) is True
    assert watch.observe("ns", "b", None) is True  # deleted while busy
    assert watch.observe("ns", "a", None) is False  # deleted while idle
    assert watch.epoch == 4


def test_backoff_doubles_up_to_a_cap() -> None:
    clock = PipelineClock()
    delays = []
    for _ in range(6):
        clock.failures += 1
        delays.append(clock.backoff(10, cap=120))
    assert delays == [10, 20, 40, 80, 120, 120]
