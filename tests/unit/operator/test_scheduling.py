"""When a pass is due, which halves it runs, how failures back off, and which Lease changes wake it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from framescale_operator.scheduling import Cadence, Due, LeaseWatch, Pass, PipelineClock, backoff, poll_interval

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
POLL, RESYNC, BASE = 15.0, 30.0, 2.0


def ran(
    clock: PipelineClock,
    at: float = 100.0,
    *,
    scale: bool = True,
    expiry: datetime | None = None,
    scaling_retry: bool = False,
    protection_retry: bool = False,
) -> float | None:
    return clock.ran(
        Pass("test", scale=scale),
        monotonic=at,
        generation=1,
        lease_epoch=0,
        next_expiry=expiry,
        scaling_retry=scaling_retry,
        protection_retry=protection_retry,
        base_delay=BASE,
    )


def due(clock: PipelineClock, at: float, *, now: datetime = NOW, generation: int = 1, epoch: int = 0) -> Pass | None:
    return clock.due(
        monotonic=at, now=now, poll_interval=POLL, resync_interval=RESYNC, generation=generation, lease_epoch=epoch
    )


def ran_at_100(**kwargs: Any) -> PipelineClock:
    clock = PipelineClock()
    ran(clock, **kwargs)
    return clock


@dataclass(frozen=True)
class When:
    name: str
    clock: PipelineClock
    at: float
    expected: Pass | None
    now: datetime = NOW
    generation: int = 1
    epoch: int = 0


EXPIRY = NOW + timedelta(seconds=5)
CASES = [
    When("first tick", PipelineClock(), 0, Pass(Due.FIRST, scale=True)),
    When("nothing due", ran_at_100(), 114.9, None),
    When("poll interval", ran_at_100(), 115.0, Pass(Due.POLL, scale=True)),
    When("spec changed", ran_at_100(), 101, Pass(Due.SPEC, scale=True), generation=2),
    When("busy Lease flipped: protection only", ran_at_100(), 101, Pass(Due.LEASES, scale=False), epoch=1),
    When("before the expiry", ran_at_100(expiry=EXPIRY), 101, None, now=EXPIRY - timedelta(seconds=1)),
    When(
        "a busy Lease expired: protection only",
        ran_at_100(expiry=EXPIRY),
        101,
        Pass(Due.EXPIRY, scale=False),
        now=EXPIRY,
    ),
    When(
        "poll and resync both due: the scaling pass, which protects too",
        ran_at_100(),
        130.0,
        Pass(Due.POLL, scale=True),
    ),
    # Retries: after the backoff (BASE), not at the later of backoff and poll interval.
    When("throttled scaling: not yet", ran_at_100(scaling_retry=True), 101.9, None),
    When(
        "throttled scaling: retried after the backoff",
        ran_at_100(scaling_retry=True),
        102.0,
        Pass(Due.RETRY, scale=True),
    ),
    When(
        "throttled scaling: Lease flips still wake protection",
        ran_at_100(scaling_retry=True),
        101,
        Pass(Due.LEASES, scale=False),
        epoch=1,
    ),
    When(
        "throttled scaling: expiries still wake protection",
        ran_at_100(scaling_retry=True, expiry=EXPIRY),
        101,
        Pass(Due.EXPIRY, scale=False),
        now=EXPIRY,
    ),
    When(
        "failed protection: retried alone after the backoff",
        ran_at_100(protection_retry=True),
        102.0,
        Pass(Due.RETRY, scale=False),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_due(case: When) -> None:
    assert due(case.clock, case.at, now=case.now, generation=case.generation, epoch=case.epoch) == case.expected


def test_protection_resyncs_on_its_own_interval() -> None:
    clock = PipelineClock()
    for at in (0.0, 60.0):  # long polls: scaling passes 60 s apart (they run protection too)
        ran(clock, at)
    resync = clock.due(
        monotonic=60.0 + RESYNC, now=NOW, poll_interval=600, resync_interval=RESYNC, generation=1, lease_epoch=0
    )
    assert resync == Pass(Due.RESYNC, scale=False)


def test_a_retryable_failure_schedules_the_retry_and_a_success_clears_it() -> None:
    clock = PipelineClock()
    assert ran(clock, 100.0, scaling_retry=True) == BASE
    assert due(clock, 100.0 + BASE) == Pass(Due.RETRY, scale=True)
    assert ran(clock, 102.0, scaling_retry=True) == 2 * BASE  # doubles
    assert due(clock, 102.0 + 2 * BASE - 0.1) is None
    assert ran(clock, 106.0) is None
    assert clock.scaling.failures == 0
    assert due(clock, 106.0 + BASE) is None  # back on the poll interval
    assert due(clock, 106.0 + POLL) == Pass(Due.POLL, scale=True)


def test_a_protection_pass_does_not_touch_the_scaling_backoff() -> None:
    clock = PipelineClock()
    ran(clock, 100.0, scaling_retry=True)
    assert ran(clock, 101.0, scale=False) is None  # protection fine; scaling still failing
    assert clock.scaling.failures == 1
    assert due(clock, 102.0) == Pass(Due.RETRY, scale=True)


def test_backoff_doubles_up_to_a_cap() -> None:
    cadence = Cadence()
    delays = [cadence.ran(float(n), retry=True, base_delay=10) for n in range(7)]
    assert delays == [10, 20, 40, 80, 160, 300, 300]
    assert [backoff(10, failures) for failures in (1, 2, 7)] == [10, 20, 300]  # the deletion handler's too


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"autoscaling": {"pollIntervalSeconds": 3}}, 3.0),
        ({"autoscaling": {}}, 15.0),
        ({}, 15.0),
        ({"autoscaling": {"pollIntervalSeconds": 0}}, 15.0),
        ({"autoscaling": {"pollIntervalSeconds": True}}, 15.0),
        ({"autoscaling": {"pollIntervalSeconds": "5"}}, 15.0),
    ],
)
def test_poll_interval_from_the_spec(spec: dict[str, Any], expected: float) -> None:
    assert poll_interval(spec, 15.0) == expected


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
