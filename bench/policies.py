"""Scaling policies the simulator compares, behind one small interface.

- ``FramescalePolicy`` calls the operator's real policy (``framescale_operator.policy.decide``)
  with the spec mapped by the operator's own ``reconcile.scaling_spec``: nothing is copied.
- ``StaticPolicy`` is a fixed fleet.
- ``OneMinuteVisiblePolicy`` models the reference design: the queue's visible messages as a
  one-minute metric, an alarm that acts one evaluation period after the datapoint closes,
  no view of messages in flight and no scale-in protection for busy nodes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

# The simulator's clock starts here; only differences between times matter to the policy.
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ClusterView:
    """What a policy may look at when it is evaluated."""

    now: int  # seconds since the start of the trace
    visible: int  # messages waiting in the queue
    in_flight: int  # messages received and not deleted (running, or interrupted and not yet visible)
    desired: int  # the Auto Scaling group's desired capacity
    nodes: int  # instances in the group (starting or in service)
    busy_nodes: int  # nodes running at least one job


class Policy(Protocol):
    name: str
    interval_seconds: int  # evaluated at every multiple of this
    protects_busy_nodes: bool  # busy nodes carry scale-in protection

    def decide(self, view: ClusterView) -> int:
        """The desired capacity from now on."""
        ...


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


class StaticPolicy:
    """A fixed fleet of ``nodes``, never scaled."""

    protects_busy_nodes = True
    interval_seconds = 3600

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.name = f"static-{nodes}"

    def decide(self, view: ClusterView) -> int:
        return self.nodes


class FramescalePolicy:
    """The operator's policy as the operator runs it: every poll interval, with its last scale kept."""

    name = "framescale"
    protects_busy_nodes = True

    def __init__(self, autoscaling: dict[str, Any], *, group_min: int, group_max: int) -> None:
        from framescale_operator import models, policy, reconcile
        from framescale_operator.settings import OperatorSettings

        self._policy = policy
        spec = models.VideoPipelineSpec.model_validate(
            {
                "queueUrl": "https://sqs.us-east-1.amazonaws.com/000000000000/simulated",
                "nodeGroup": {"autoScalingGroupName": "simulated"},
                "autoscaling": {"minReplicas": group_min, "maxReplicas": group_max, **autoscaling},
            }
        )
        self.spec = reconcile.scaling_spec(spec)
        default_poll = OperatorSettings.model_fields["default_poll_interval_seconds"].default
        self.interval_seconds = int(spec.autoscaling.poll_interval_seconds or default_poll)
        self.group_min = group_min
        self.group_max = group_max
        self.last_scale: Any = None

    def decide(self, view: ClusterView) -> int:
        now = EPOCH + timedelta(seconds=view.now)
        observation = self._policy.Observation(
            visible=view.visible,
            in_flight=view.in_flight,
            current_desired=view.desired,
            busy_nodes=view.busy_nodes,
            group_min=self.group_min,
            group_max=self.group_max,
        )
        decision = self._policy.decide(observation, self.spec, self.last_scale, now)
        direction = decision.direction(view.desired)
        if direction is not None:
            # What the operator records in status.lastScaleTime / lastScaleDirection.
            self.last_scale = self._policy.LastScale(time=now, direction=direction)
        return int(decision.desired)


class OneMinuteVisiblePolicy:
    """The reference design's scaling: a one-minute metric of visible messages and an alarm.

    Every ``metric_period`` the metric gets a datapoint (visible messages then). The alarm
    acts on a datapoint ``alarm_delay_periods`` periods after it closes (the one-minute alarm
    evaluation). It wants ceil(visible / target) nodes within [min, max]; it scales out after
    ``scale_out_datapoints`` consecutive datapoints ask for more than the current capacity and
    in after ``scale_in_datapoints`` ask for less. Messages in flight are invisible to it, and
    nothing protects busy nodes: the group picks any instance on scale-in.
    """

    protects_busy_nodes = False

    def __init__(
        self,
        *,
        target_per_node: int,
        min_nodes: int,
        max_nodes: int,
        metric_period: int = 60,
        alarm_delay_periods: int = 1,
        scale_out_datapoints: int = 1,
        scale_in_datapoints: int = 3,
        name: str = "one-minute-visible",
    ) -> None:
        self.name = name
        self.interval_seconds = metric_period
        self.target = target_per_node
        self.min_nodes = min_nodes
        self.max_nodes = max_nodes
        self.delay = alarm_delay_periods
        self.out_points = scale_out_datapoints
        self.in_points = scale_in_datapoints
        self._datapoints: deque[int] = deque(
            maxlen=alarm_delay_periods + max(scale_out_datapoints, scale_in_datapoints)
        )

    def wanted(self, visible: int) -> int:
        return _clamp(math.ceil(visible / self.target) if visible > 0 else 0, self.min_nodes, self.max_nodes)

    def decide(self, view: ClusterView) -> int:
        self._datapoints.append(view.visible)
        points = list(self._datapoints)
        seen = points[: len(points) - self.delay] if self.delay else points
        if not seen:
            return view.desired
        wants = [self.wanted(visible) for visible in seen]
        latest = wants[-1]
        if len(wants) >= self.out_points and all(w > view.desired for w in wants[-self.out_points :]):
            return latest
        if len(wants) >= self.in_points and all(w < view.desired for w in wants[-self.in_points :]):
            return latest
        return view.desired
