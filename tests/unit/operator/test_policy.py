"""The scaling policy, table-driven: each row is a situation and the one right answer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from framescale_operator.models import ScaleDirection
from framescale_operator.policy import (
    Decision,
    LastScale,
    Observation,
    Reason,
    ScalingSpec,
    decide,
    stabilize,
    wanted_replicas,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
SPEC = ScalingSpec(
    replicas=None,
    min_replicas=0,
    max_replicas=10,
    target_backlog_per_replica=5,
    activation_backlog=0,
    scale_out_cooldown_seconds=60,
    scale_in_cooldown_seconds=300,
)


def ago(seconds: float, direction: ScaleDirection) -> LastScale:
    return LastScale(time=NOW - timedelta(seconds=seconds), direction=direction)


@dataclass(frozen=True)
class Case:
    name: str
    visible: int
    in_flight: int
    current: int
    desired: int
    reason: Reason
    busy: int = 0
    spec: ScalingSpec = SPEC
    last: LastScale | None = None
    group_min: int = 0
    group_max: int | None = None
    protection_in_place: bool = True


OUT, IN = ScaleDirection.OUT, ScaleDirection.IN

CASES = [
    # Zero and activation.
    Case("empty queue at zero stays at zero", 0, 0, current=0, desired=0, reason=Reason.STEADY),
    Case("one message starts one node", 1, 0, current=0, desired=1, reason=Reason.SCALE_FROM_ZERO),
    Case("from zero straight to the full size", 23, 0, current=0, desired=5, reason=Reason.SCALE_FROM_ZERO),
    Case(
        "from zero ignores the scale-out cooldown",
        6,
        0,
        current=0,
        desired=2,
        reason=Reason.SCALE_FROM_ZERO,
        last=ago(1, OUT),
    ),
    Case(
        "below activation stays at zero",
        3,
        0,
        current=0,
        desired=0,
        reason=Reason.BELOW_ACTIVATION,
        spec=replace(SPEC, activation_backlog=3),
    ),
    Case(
        "above activation scales in one step",
        12,
        0,
        current=0,
        desired=3,
        reason=Reason.SCALE_FROM_ZERO,
        spec=replace(SPEC, activation_backlog=3),
    ),
    Case(
        "activation does not apply once running",
        2,
        0,
        current=1,
        desired=1,
        reason=Reason.STEADY,
        spec=replace(SPEC, activation_backlog=3),
    ),
    Case(
        "minReplicas above zero ignores activation",
        1,
        0,
        current=0,
        desired=2,
        reason=Reason.SCALE_FROM_ZERO,
        spec=replace(SPEC, min_replicas=2, activation_backlog=3),
    ),
    # In-flight messages count.
    Case("in-flight messages keep nodes", 0, 10, current=2, desired=2, reason=Reason.STEADY),
    Case("visible plus in flight", 6, 6, current=1, desired=3, reason=Reason.SCALE_OUT),
    # Scale-out and its cooldown.
    Case("scale out", 30, 0, current=2, desired=6, reason=Reason.SCALE_OUT),
    Case(
        "scale-out cooldown holds",
        30,
        0,
        current=2,
        desired=2,
        reason=Reason.SCALE_OUT_COOLDOWN,
        last=ago(30, OUT),
    ),
    Case("scale-out cooldown over", 30, 0, current=2, desired=6, reason=Reason.SCALE_OUT, last=ago(61, OUT)),
    Case(
        "scale-out right after a scale-in",
        30,
        0,
        current=2,
        desired=6,
        reason=Reason.SCALE_OUT,
        last=ago(5, IN),
    ),
    # Scale-in and its cooldown.
    Case("scale in to zero", 0, 0, current=3, desired=0, reason=Reason.SCALE_IN),
    Case("scale in partly", 7, 0, current=5, desired=2, reason=Reason.SCALE_IN, last=ago(301, OUT)),
    Case(
        "scale-in cooldown after a scale-out",
        0,
        0,
        current=3,
        desired=3,
        reason=Reason.SCALE_IN_COOLDOWN,
        last=ago(100, OUT),
    ),
    Case(
        "scale-in cooldown after a scale-in",
        0,
        0,
        current=3,
        desired=3,
        reason=Reason.SCALE_IN_COOLDOWN,
        last=ago(299, IN),
    ),
    Case("scale-in cooldown over", 0, 0, current=3, desired=0, reason=Reason.SCALE_IN, last=ago(300, OUT)),
    # Bounds.
    Case("capped at maxReplicas", 1000, 0, current=2, desired=10, reason=Reason.SCALE_OUT),
    Case("held at maxReplicas", 1000, 0, current=10, desired=10, reason=Reason.STEADY),
    Case(
        "raised to minReplicas",
        0,
        0,
        current=0,
        desired=2,
        reason=Reason.SCALE_FROM_ZERO,
        spec=replace(SPEC, min_replicas=2),
    ),
    Case(
        "not below minReplicas",
        0,
        0,
        current=4,
        desired=2,
        reason=Reason.SCALE_IN,
        spec=replace(SPEC, min_replicas=2),
    ),
    Case("group MaxSize is a hard cap", 1000, 0, current=2, desired=4, reason=Reason.SCALE_OUT, group_max=4),
    Case("group MinSize is a hard floor", 0, 0, current=3, desired=1, reason=Reason.SCALE_IN, group_min=1),
    # Busy floor.
    Case("busy nodes hold the count", 0, 0, current=3, desired=3, reason=Reason.BUSY_FLOOR, busy=3),
    Case("scale in only down to the busy nodes", 0, 0, current=4, desired=2, reason=Reason.BUSY_FLOOR, busy=2),
    Case(
        "busy floor waits for the cooldown too",
        0,
        0,
        current=4,
        desired=4,
        reason=Reason.SCALE_IN_COOLDOWN,
        busy=2,
        last=ago(10, OUT),
    ),
    Case("busy below the target changes nothing", 20, 0, current=4, desired=4, reason=Reason.STEADY, busy=1),
    Case("busy nodes do not force a scale-out", 0, 0, current=1, desired=1, reason=Reason.BUSY_FLOOR, busy=3),
    # Pinned mode.
    Case("pinned up", 0, 0, current=0, desired=4, reason=Reason.PINNED, spec=replace(SPEC, replicas=4)),
    Case("pinned down", 100, 0, current=6, desired=1, reason=Reason.PINNED, spec=replace(SPEC, replicas=1)),
    Case(
        "pinned ignores cooldowns",
        0,
        0,
        current=6,
        desired=2,
        reason=Reason.PINNED,
        spec=replace(SPEC, replicas=2),
        last=ago(1, OUT),
    ),
    Case(
        "pinned ignores min and max",
        0,
        0,
        current=0,
        desired=20,
        reason=Reason.PINNED,
        spec=replace(SPEC, replicas=20, max_replicas=3),
    ),
    Case(
        "pinned below the busy nodes: busy ones stay protected instead",
        0,
        0,
        current=3,
        desired=0,
        reason=Reason.PINNED,
        busy=2,
        spec=replace(SPEC, replicas=0),
    ),
    Case(
        "pinned within the group limits",
        0,
        0,
        current=1,
        desired=5,
        reason=Reason.PINNED,
        spec=replace(SPEC, replicas=9),
        group_max=5,
    ),
    Case(
        "pinned at the current count", 0, 0, current=2, desired=2, reason=Reason.PINNED, spec=replace(SPEC, replicas=2)
    ),
    # Protection not in place: never scale in, whatever the mode; scaling out is safe.
    Case(
        "no scale-in while protection failed",
        0,
        0,
        current=3,
        desired=3,
        reason=Reason.PROTECTION_PENDING,
        protection_in_place=False,
    ),
    Case(
        "no pinned scale-in while protection failed",
        0,
        0,
        current=3,
        desired=3,
        reason=Reason.PROTECTION_PENDING,
        spec=replace(SPEC, replicas=1),
        protection_in_place=False,
    ),
    Case(
        "scale-out goes ahead while protection failed",
        30,
        0,
        current=2,
        desired=6,
        reason=Reason.SCALE_OUT,
        protection_in_place=False,
    ),
    Case(
        "a cooldown hold stays a cooldown hold",
        0,
        0,
        current=3,
        desired=3,
        reason=Reason.SCALE_IN_COOLDOWN,
        last=ago(10, OUT),
        protection_in_place=False,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decide(case: Case) -> None:
    observation = Observation(
        visible=case.visible,
        in_flight=case.in_flight,
        current_desired=case.current,
        busy_nodes=case.busy,
        group_min=case.group_min,
        group_max=case.group_max,
        protection_in_place=case.protection_in_place,
    )
    decision = decide(observation, case.spec, case.last, NOW)
    assert (decision.desired, decision.reason) == (case.desired, case.reason), decision.message
    assert decision.message  # every decision says why


def test_cooldown_decisions_say_until_when() -> None:
    observation = Observation(visible=0, in_flight=0, current_desired=3)
    decision = decide(observation, SPEC, ago(100, OUT), NOW)
    assert decision.reason == Reason.SCALE_IN_COOLDOWN
    assert decision.hold_until == NOW + timedelta(seconds=200)
    assert decision.wanted == 0


def test_the_same_inputs_give_the_same_decision() -> None:
    observation = Observation(visible=17, in_flight=3, current_desired=2, busy_nodes=1)
    first = decide(observation, SPEC, ago(5, IN), NOW)
    assert decide(observation, SPEC, ago(5, IN), NOW) == first


def test_the_decision_moves_the_group_only_when_it_differs() -> None:
    decision = Decision(desired=3, reason=Reason.STEADY, message="", wanted=3)
    assert decision.direction(3) is None
    assert decision.direction(1) == ScaleDirection.OUT
    assert decision.direction(5) == ScaleDirection.IN


@pytest.mark.parametrize(
    ("backlog", "target", "low", "high", "expected"),
    [(0, 5, 0, 10, 0), (1, 5, 0, 10, 1), (5, 5, 0, 10, 1), (6, 5, 0, 10, 2), (0, 5, 2, 10, 2), (99, 1, 0, 7, 7)],
)
def test_wanted_replicas_is_ceil_within_bounds(backlog: int, target: int, low: int, high: int, expected: int) -> None:
    spec = replace(SPEC, target_backlog_per_replica=target, min_replicas=low, max_replicas=high)
    assert wanted_replicas(backlog, spec) == expected


def _want(desired: int) -> Decision:
    return Decision(desired, Reason.SCALE_IN, "m", wanted=desired)


def test_stabilize_holds_a_scale_in_until_the_window_has_passed() -> None:
    window = 30.0
    held, since = stabilize(_want(1), 3, None, NOW, window)
    assert (held.desired, held.reason, since) == (3, Reason.STABILIZING, NOW)
    assert held.wanted == 1 and held.hold_until == NOW + timedelta(seconds=30)
    assert "30 s" in held.message
    still, since = stabilize(_want(1), 3, NOW, NOW + timedelta(seconds=29.9), window)
    assert (still.desired, since) == (3, NOW)
    done, since = stabilize(_want(1), 3, NOW, NOW + timedelta(seconds=30), window)
    assert (done.desired, done.reason, since) == (1, Reason.SCALE_IN, NOW)


def test_stabilize_forgets_the_window_when_fewer_nodes_are_no_longer_wanted() -> None:
    same, since = stabilize(_want(3), 3, NOW, NOW + timedelta(seconds=5), 30.0)
    assert (same.desired, since) == (3, None)
    out, since = stabilize(_want(4), 3, NOW, NOW + timedelta(seconds=5), 30.0)
    assert (out.desired, since) == (4, None)


def test_stabilize_with_no_window_acts_at_once_and_a_future_since_restarts_it() -> None:
    now, since = stabilize(_want(0), 2, None, NOW, 0.0)
    assert (now.desired, since) == (0, NOW)
    held, since = stabilize(_want(0), 2, NOW + timedelta(seconds=60), NOW, 10.0)  # a clock step back
    assert (held.desired, since) == (2, NOW)


def test_delayed_messages_count_in_the_backlog() -> None:
    assert Observation(visible=1, in_flight=2, current_desired=0, delayed=3).backlog == 6
    assert Observation(visible=-1, in_flight=0, current_desired=0, delayed=-2).backlog == 0
