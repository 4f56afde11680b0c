"""The scaling policy: numbers in, a node count and the reason for it out. No I/O, no clock.

One policy covers the whole range, zero included:

* backlog = visible + in-flight + delayed messages (a job being worked on still needs its node,
  and a delayed one will need one);
* wanted = ceil(backlog / targetBacklogPerReplica), kept within [minReplicas, maxReplicas];
* at zero nodes, a backlog above ``activationBacklog`` scales out at once, straight to the
  wanted size (no separate "wake-up" policy, no cooldown);
* scale-out waits ``scaleOutCooldownSeconds`` after the previous scale-out;
* scale-in waits ``scaleInCooldownSeconds`` after any change, and never goes below the
  number of busy nodes (their instances are protected, so the group could not remove them
  anyway; keeping the desired count at or above them keeps it truthful);
* ``spec.replicas`` pins the count (manual mode): no cooldowns, no floor (busy nodes stay
  protected and are removed by the group once they go idle);
* whatever the mode, the Auto Scaling group's own MinSize/MaxSize are hard limits;
* a scale-in waits until the lower count has been called for throughout the stabilization window
  (``stabilize``): the queue's counts are approximate, one low read is not enough;
* whatever the mode, no scale-in while busy-node protection could not be brought up to date
  (a busy instance might not be protected yet, and the group could pick it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from framescale_operator.models import ScaleDirection


class Reason(StrEnum):
    """Why the policy chose its number; used as the Scaling condition's reason."""

    PINNED = "Pinned"
    STEADY = "Steady"
    SCALE_FROM_ZERO = "ScaleFromZero"
    SCALE_OUT = "ScaleOut"
    SCALE_IN = "ScaleIn"
    SCALE_OUT_COOLDOWN = "ScaleOutCooldown"
    SCALE_IN_COOLDOWN = "ScaleInCooldown"
    BUSY_FLOOR = "BusyNodes"
    BELOW_ACTIVATION = "BelowActivation"
    PROTECTION_PENDING = "ProtectionPending"
    STABILIZING = "ScaleInStabilizing"


@dataclass(frozen=True)
class Observation:
    """What the operator saw: the queue, the group, the busy nodes."""

    visible: int
    in_flight: int
    current_desired: int
    delayed: int = 0
    busy_nodes: int = 0
    group_min: int = 0
    group_max: int | None = None
    protection_in_place: bool = True  # the busy instances' scale-in protection is known to be set

    @property
    def backlog(self) -> int:
        return max(0, self.visible) + max(0, self.in_flight) + max(0, self.delayed)


@dataclass(frozen=True)
class ScalingSpec:
    """The parts of a VideoPipeline spec the policy reads (plain numbers)."""

    replicas: int | None = None
    min_replicas: int = 0
    max_replicas: int = 10
    target_backlog_per_replica: int = 5
    activation_backlog: int = 0
    scale_out_cooldown_seconds: float = 60.0
    scale_in_cooldown_seconds: float = 300.0


@dataclass(frozen=True)
class LastScale:
    """The operator's previous change of the desired capacity (from status)."""

    time: datetime
    direction: ScaleDirection


@dataclass(frozen=True)
class Decision:
    """The desired capacity to set, why, and what the policy would have wanted without cooldowns."""

    desired: int
    reason: Reason
    message: str
    wanted: int
    hold_until: datetime | None = None

    def direction(self, current: int) -> ScaleDirection | None:
        if self.desired > current:
            return ScaleDirection.OUT
        if self.desired < current:
            return ScaleDirection.IN
        return None


def _within(value: int, low: int, high: int | None) -> int:
    value = max(value, low)
    return min(value, high) if high is not None else value


def _group_note(value: int, bounded: int) -> str:
    return "" if value == bounded else f" (the Auto Scaling group's limits allow {bounded}, not {value})"


def wanted_replicas(backlog: int, spec: ScalingSpec) -> int:
    """ceil(backlog / target) within [min, max], before activation, cooldowns and the busy floor."""
    raw = math.ceil(backlog / spec.target_backlog_per_replica) if backlog > 0 else 0
    return _within(raw, spec.min_replicas, spec.max_replicas)


def decide(observation: Observation, spec: ScalingSpec, last_scale: LastScale | None, now: datetime) -> Decision:
    """The node count to set now, with the reason."""
    decision = _decide(observation, spec, last_scale, now)
    current = observation.current_desired
    if decision.desired < current and not observation.protection_in_place:
        return Decision(
            current,
            Reason.PROTECTION_PENDING,
            f"want {decision.desired}, holding {current} until busy-node protection is in place",
            wanted=decision.desired,
        )
    return decision


def _decide(observation: Observation, spec: ScalingSpec, last_scale: LastScale | None, now: datetime) -> Decision:
    current = observation.current_desired
    backlog = observation.backlog
    group_min, group_max = observation.group_min, observation.group_max

    if spec.replicas is not None:
        desired = _within(spec.replicas, group_min, group_max)
        message = f"pinned to {spec.replicas} by spec.replicas" + _group_note(spec.replicas, desired)
        if observation.busy_nodes and desired < observation.busy_nodes:
            message += f"; {observation.busy_nodes} busy node(s) stay protected until idle"
        return Decision(desired, Reason.PINNED, message, wanted=desired)

    wanted = wanted_replicas(backlog, spec)
    per = spec.target_backlog_per_replica
    basis = f"backlog {backlog} ({observation.in_flight} in flight) at {per} per node"

    if current == 0 and wanted > 0 and spec.min_replicas == 0 and backlog <= spec.activation_backlog:
        return Decision(
            0,
            Reason.BELOW_ACTIVATION,
            f"{basis}: staying at zero until the backlog exceeds activationBacklog {spec.activation_backlog}",
            wanted=0,
        )

    target = _within(wanted, group_min, group_max)
    note = _group_note(wanted, target)

    if target > current:
        if current == 0:
            return Decision(
                target, Reason.SCALE_FROM_ZERO, f"{basis}: scaling out from zero to {target}{note}", wanted=target
            )
        if last_scale is not None and last_scale.direction == ScaleDirection.OUT:
            until = last_scale.time + timedelta(seconds=spec.scale_out_cooldown_seconds)
            if now < until:
                return Decision(
                    current,
                    Reason.SCALE_OUT_COOLDOWN,
                    f"{basis}: want {target}, holding {current} for the scale-out cooldown",
                    wanted=target,
                    hold_until=until,
                )
        return Decision(target, Reason.SCALE_OUT, f"{basis}: scaling out {current} -> {target}{note}", wanted=target)

    if target < current:
        floor = min(observation.busy_nodes, current)
        floored = max(target, floor)
        if floored >= current:
            return Decision(
                current,
                Reason.BUSY_FLOOR,
                f"{basis}: want {target}, but {observation.busy_nodes} node(s) are busy; keeping {current}",
                wanted=target,
            )
        if last_scale is not None:
            until = last_scale.time + timedelta(seconds=spec.scale_in_cooldown_seconds)
            if now < until:
                return Decision(
                    current,
                    Reason.SCALE_IN_COOLDOWN,
                    f"{basis}: want {floored}, holding {current} for the scale-in cooldown",
                    wanted=floored,
                    hold_until=until,
                )
        if floored > target:
            return Decision(
                floored,
                Reason.BUSY_FLOOR,
                f"{basis}: scaling in {current} -> {floored}, not to {target}: "
                f"{observation.busy_nodes} node(s) are busy",
                wanted=floored,
            )
        return Decision(target, Reason.SCALE_IN, f"{basis}: scaling in {current} -> {target}{note}", wanted=target)

    return Decision(current, Reason.STEADY, f"{basis}: {current} node(s) is right", wanted=target)


def stabilize(
    decision: Decision, current: int, wanted_since: datetime | None, now: datetime, window_seconds: float
) -> tuple[Decision, datetime | None]:
    """Hold a scale-in until fewer nodes have been wanted for ``window_seconds``.

    Returns the decision to act on and the new "wanted fewer since" time (None once the
    decision no longer asks for fewer nodes).
    """
    if decision.desired >= current:
        return decision, None
    since = wanted_since if wanted_since is not None and wanted_since <= now else now
    until = since + timedelta(seconds=window_seconds)
    if now >= until:
        return decision, since
    held = Decision(
        current,
        Reason.STABILIZING,
        f"want {decision.desired}, holding {current} until the backlog has stayed low for {window_seconds:.0f} s",
        wanted=decision.desired,
        hold_until=until,
    )
    return held, since
