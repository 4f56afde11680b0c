"""Every branch of the scaling policy as a whole ``Decision``: the count, the reason, the message a
user reads in the Scaling condition, what was wanted and until when it holds. Boundaries exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from framescale_operator import policy
from framescale_operator.models import ScaleDirection
from framescale_operator.policy import Decision, LastScale, Observation, Reason, ScalingSpec, decide, wanted_replicas

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = ScalingSpec(min_replicas=0, max_replicas=10, target_backlog_per_replica=5, activation_backlog=0)


def seen(visible: int, current: int, **fields: int | bool | None) -> Observation:
    return Observation(visible=visible, in_flight=fields.pop("in_flight", 1), current_desired=current, **fields)  # type: ignore[arg-type]


def ago(seconds: float, direction: ScaleDirection) -> LastScale:
    return LastScale(NOW - timedelta(seconds=seconds), direction)


@pytest.mark.parametrize(
    ("observation", "spec", "expected"),
    [
        (seen(0, 2), ScalingSpec(replicas=3), Decision(3, Reason.PINNED, "pinned to 3 by spec.replicas", wanted=3)),
        (seen(0, 2, group_max=4), ScalingSpec(replicas=6),
         Decision(4, Reason.PINNED,
                  "pinned to 6 by spec.replicas (the Auto Scaling group's limits allow 4, not 6)", wanted=4)),
        (seen(0, 5, busy_nodes=3), ScalingSpec(replicas=1),
         Decision(1, Reason.PINNED, "pinned to 1 by spec.replicas; 3 busy node(s) stay protected until idle",
                  wanted=1)),
        (seen(0, 5, busy_nodes=3), ScalingSpec(replicas=3),
         Decision(3, Reason.PINNED, "pinned to 3 by spec.replicas", wanted=3)),
        (seen(0, 5, busy_nodes=2), ScalingSpec(replicas=5),
         Decision(5, Reason.PINNED, "pinned to 5 by spec.replicas", wanted=5)),
        (seen(3, 0), ScalingSpec(activation_backlog=10),
         Decision(0, Reason.BELOW_ACTIVATION,
                  "backlog 4 (1 in flight) at 5 per node: staying at zero until the backlog exceeds "
                  "activationBacklog 10", wanted=0)),
        (seen(11, 0), SPEC,
         Decision(3, Reason.SCALE_FROM_ZERO, "backlog 12 (1 in flight) at 5 per node: scaling out from zero to 3",
                  wanted=3)),
        (seen(11, 0, group_max=2), SPEC,
         Decision(2, Reason.SCALE_FROM_ZERO,
                  "backlog 12 (1 in flight) at 5 per node: scaling out from zero to 2 (the Auto Scaling group's "
                  "limits allow 2, not 3)", wanted=2)),
        (seen(19, 1), SPEC,
         Decision(4, Reason.SCALE_OUT, "backlog 20 (1 in flight) at 5 per node: scaling out 1 -> 4", wanted=4)),
        (seen(4, 3), SPEC,
         Decision(1, Reason.SCALE_IN, "backlog 5 (1 in flight) at 5 per node: scaling in 3 -> 1", wanted=1)),
        (seen(0, 3, in_flight=0, group_min=1), SPEC,
         Decision(1, Reason.SCALE_IN,
                  "backlog 0 (0 in flight) at 5 per node: scaling in 3 -> 1 (the Auto Scaling group's limits "
                  "allow 1, not 0)", wanted=1)),
        (seen(4, 3, busy_nodes=3), SPEC,
         Decision(3, Reason.BUSY_FLOOR, "backlog 5 (1 in flight) at 5 per node: want 1, but 3 node(s) are busy; "
                  "keeping 3", wanted=1)),
        (seen(4, 3, busy_nodes=2), SPEC,
         Decision(2, Reason.BUSY_FLOOR, "backlog 5 (1 in flight) at 5 per node: scaling in 3 -> 2, not to 1: "
                  "2 node(s) are busy", wanted=2)),
        (seen(9, 2), SPEC, Decision(2, Reason.STEADY, "backlog 10 (1 in flight) at 5 per node: 2 node(s) is right",
                                    wanted=2)),
        (seen(4, 3, protection_in_place=False), SPEC,
         Decision(3, Reason.PROTECTION_PENDING, "want 1, holding 3 until busy-node protection is in place",
                  wanted=1)),
    ],
    ids=["pinned", "pinned-group-max", "pinned-below-busy", "pinned-at-busy", "pinned-above-busy", "activation",
         "from-zero", "from-zero-group-max", "out", "in", "in-group-min", "busy-keeps", "busy-floor", "steady",
         "protection-pending"],
)  # fmt: skip
def test_each_branch_decides_the_whole_decision(
    observation: Observation, spec: ScalingSpec, expected: Decision
) -> None:
    assert decide(observation, spec, None, NOW) == expected


def test_the_scale_out_cooldown_holds_until_its_last_instant_only() -> None:
    cooldown = SPEC.scale_out_cooldown_seconds
    held = decide(seen(19, 1), SPEC, ago(cooldown - 1, ScaleDirection.OUT), NOW)
    assert held == Decision(
        1,
        Reason.SCALE_OUT_COOLDOWN,
        "backlog 20 (1 in flight) at 5 per node: want 4, holding 1 for the scale-out cooldown",
        wanted=4,
        hold_until=NOW + timedelta(seconds=1),
    )
    assert decide(seen(19, 1), SPEC, ago(cooldown, ScaleDirection.OUT), NOW).reason is Reason.SCALE_OUT


def test_the_scale_in_cooldown_holds_with_the_floored_count() -> None:
    held = decide(seen(4, 3, busy_nodes=2), SPEC, ago(10, ScaleDirection.OUT), NOW)
    assert held == Decision(
        3,
        Reason.SCALE_IN_COOLDOWN,
        "backlog 5 (1 in flight) at 5 per node: want 2, holding 3 for the scale-in cooldown",
        wanted=2,
        hold_until=NOW + timedelta(seconds=SPEC.scale_in_cooldown_seconds - 10),
    )


def test_wanted_replicas_is_zero_for_no_backlog_and_rounds_up_otherwise() -> None:
    assert [wanted_replicas(backlog, SPEC) for backlog in (0, 1, 5, 6, 500)] == [0, 1, 1, 2, 10]


stabilize = getattr(policy, "stabilize", None)
needs_stabilize = pytest.mark.skipif(stabilize is None, reason="policy.stabilize lands with branch busy-operator")
SCALE_IN = Decision(1, Reason.SCALE_IN, "scaling in 3 -> 1", wanted=1)
WINDOW = 120.0


@needs_stabilize
def test_a_decision_that_does_not_scale_in_passes_and_forgets_when_fewer_were_wanted() -> None:
    assert stabilize is not None
    steady = Decision(3, Reason.STEADY, "right", wanted=3)
    assert stabilize(steady, 3, NOW - timedelta(seconds=500), NOW, WINDOW) == (steady, None)


@needs_stabilize
def test_a_scale_in_is_held_until_it_has_been_wanted_for_the_window() -> None:
    assert stabilize is not None
    since = NOW - timedelta(seconds=30)
    assert stabilize(SCALE_IN, 3, since, NOW, WINDOW) == (
        Decision(
            3,
            Reason.STABILIZING,
            "want 1, holding 3 until the backlog has stayed low for 120 s",
            wanted=1,
            hold_until=since + timedelta(seconds=WINDOW),
        ),
        since,
    )


@needs_stabilize
def test_a_scale_in_wanted_for_the_whole_window_goes_ahead() -> None:
    assert stabilize is not None
    since = NOW - timedelta(seconds=WINDOW)
    assert stabilize(SCALE_IN, 3, since, NOW, WINDOW) == (SCALE_IN, since)


@needs_stabilize
def test_a_first_or_future_wish_for_fewer_starts_the_window_now() -> None:
    assert stabilize is not None
    for since in (None, NOW + timedelta(seconds=60)):  # a clock that went back
        held, started = stabilize(SCALE_IN, 3, since, NOW, WINDOW)
        assert started == NOW and held.hold_until == NOW + timedelta(seconds=WINDOW)
