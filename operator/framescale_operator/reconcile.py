"""One reconciliation of one VideoPipeline: observe, protect, decide, scale, report.

Plain, synchronous, typed: it takes a snapshot of what kopf knows (spec, status, Leases,
Nodes), the AWS and Node APIs, and returns the status to write and the Events to post. It
is level-based: it reads the world each time and changes only what differs from what the
spec and the busy Leases call for, so a second run right after the first changes nothing
(no AWS writes, no status patch, no Events).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from framescale import busy_lease
from framescale_operator import models, policy, protection
from framescale_operator.aws_actuators import (
    AwsApi,
    AwsError,
    AwsRetryable,
    GroupNotFound,
    GroupState,
    QueueDepth,
    QueueNotFound,
)
from framescale_operator.kube import KubeError, KubeRetryable, NodeApi
from framescale_operator.models import ConditionStatus, Mode, ScaleDirection

log = logging.getLogger(__name__)

READY = "Ready"
SCALING = "Scaling"


@dataclass(frozen=True)
class PipelineRef:
    namespace: str
    name: str

    @property
    def owner(self) -> str:
        """How the pipeline signs what it changes (the Node marker annotation)."""
        return f"{self.namespace}/{self.name}"

    def log_extra(self, **fields: Any) -> dict[str, Any]:
        """Structured-log fields: the object reference (as kopf's own lines carry it) and more."""
        return {"k8s_ref": {"kind": "VideoPipeline", "namespace": self.namespace, "name": self.name}, **fields}


@dataclass(frozen=True)
class Snapshot:
    """What kopf knows about the pipeline and the cluster at the start of a pass."""

    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    generation: int | None
    leases: Sequence[Mapping[str, Any]]
    nodes: Mapping[str, protection.NodeRecord]
    now: datetime
    audit: bool = False


@dataclass(frozen=True)
class EventNote:
    """A Kubernetes Event to post on the VideoPipeline."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Outcome:
    """What one pass saw, did and wants written."""

    status: dict[str, Any]
    status_patch: dict[str, Any]
    events: list[EventNote] = field(default_factory=list)
    spec: models.VideoPipelineSpec | None = None
    depth: QueueDepth | None = None
    group: GroupState | None = None
    decision: policy.Decision | None = None
    plan: protection.ProtectionPlan | None = None
    scaled_from: int | None = None
    retry: Exception | None = None
    actions: list[str] = field(default_factory=list)
    node_errors: list[KubeError] = field(default_factory=list)

    @property
    def scaled(self) -> bool:
        return self.decision is not None and self.scaled_from is not None


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _last_scale(status: Mapping[str, Any]) -> policy.LastScale | None:
    when = busy_lease.parse_time(status.get("lastScaleTime"))
    direction = status.get("lastScaleDirection")
    if when is None or direction not in {d.value for d in ScaleDirection}:
        return None
    return policy.LastScale(time=when, direction=ScaleDirection(direction))


def scaling_spec(spec: models.VideoPipelineSpec) -> policy.ScalingSpec:
    auto = spec.autoscaling
    return policy.ScalingSpec(
        replicas=spec.replicas,
        min_replicas=auto.min_replicas,
        max_replicas=auto.max_replicas,
        target_backlog_per_replica=auto.target_backlog_per_replica,
        activation_backlog=auto.activation_backlog,
        scale_out_cooldown_seconds=auto.scale_out_cooldown_seconds,
        scale_in_cooldown_seconds=auto.scale_in_cooldown_seconds,
    )


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Conditions with ``type`` set; lastTransitionTime moves only when the status changes."""
    result: list[dict[str, Any]] = []
    previous = next((dict(c) for c in conditions if c.get("type") == type), None)
    transition = format_time(now)
    if previous is not None and previous.get("status") == status.value and previous.get("lastTransitionTime"):
        transition = str(previous["lastTransitionTime"])
    updated: dict[str, Any] = {
        "type": type,
        "status": status.value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    placed = False
    for condition in conditions:
        if condition.get("type") == type:
            result.append(updated)
            placed = True
        else:
            result.append(dict(condition))
    if not placed:
        result.append(updated)
    return result


def _condition(status: Mapping[str, Any], type: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type), {})


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``old`` into ``new`` (top-level keys; ``None`` deletes)."""
    patch: dict[str, Any] = {key: value for key, value in new.items() if old.get(key) != value}
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def _not_ready(
    ref: PipelineRef,
    snapshot: Snapshot,
    base: dict[str, Any],
    *,
    reason: str,
    message: str,
    spec: models.VideoPipelineSpec | None,
) -> Outcome:
    old = dict(snapshot.status)
    new = {**old, **base}  # the last observation stays (Ready=False says it may be stale)
    new["observedGeneration"] = snapshot.generation
    new["conditions"] = set_condition(
        old.get("conditions") or [],
        type=READY,
        status=ConditionStatus.FALSE,
        reason=reason,
        message=message,
        now=snapshot.now,
        generation=snapshot.generation,
    )
    new = {key: value for key, value in new.items() if value is not None}
    events = []
    previous = _condition(old, READY)
    if previous.get("reason") != reason or previous.get("message") != message:
        events.append(EventNote("Warning", reason, message))
        log.warning("%s: %s", reason, message, extra=ref.log_extra(reason=reason))
    return Outcome(status=new, status_patch=status_patch(old, new), events=events, spec=spec)


def reconcile(
    ref: PipelineRef,
    snapshot: Snapshot,
    *,
    aws: AwsApi,
    nodes_api: NodeApi,
) -> Outcome:
    """One level-based pass over one pipeline."""
    old = dict(snapshot.status)
    base: dict[str, Any] = {key: old[key] for key in ("lastScaleTime", "lastScaleDirection") if key in old}

    try:
        spec = models.parse_spec(dict(snapshot.spec))
    except ValidationError as error:
        return _not_ready(ref, snapshot, base, reason="InvalidSpec", message=models.describe_errors(error), spec=None)
    base["mode"] = (Mode.MANUAL if spec.replicas is not None else Mode.AUTOSCALING).value
    group_name = spec.node_group.auto_scaling_group_name

    try:
        depth = aws.queue_depth(spec.queue_url)
        group = aws.describe_group(group_name)
    except QueueNotFound as error:
        return _not_ready(ref, snapshot, base, reason="QueueNotFound", message=error.message, spec=spec)
    except GroupNotFound as error:
        return _not_ready(ref, snapshot, base, reason="NodeGroupNotFound", message=error.message, spec=spec)
    except AwsRetryable as error:
        outcome = _not_ready(ref, snapshot, base, reason="AwsThrottled", message=str(error), spec=spec)
        outcome.retry = error
        return outcome
    except AwsError as error:
        return _not_ready(ref, snapshot, base, reason="AwsError", message=str(error), spec=spec)

    outcome = Outcome(status={}, status_patch={}, spec=spec, depth=depth, group=group)
    try:
        plan = _protect(ref, snapshot, spec, group, aws=aws, nodes_api=nodes_api, outcome=outcome)
        outcome.plan = plan
        observation = policy.Observation(
            visible=depth.visible,
            in_flight=depth.in_flight,
            current_desired=group.desired,
            busy_nodes=plan.busy_in_group,
            group_min=group.min_size,
            group_max=group.max_size,
        )
        decision = policy.decide(observation, scaling_spec(spec), _last_scale(old), snapshot.now)
        outcome.decision = decision
        if decision.desired != group.desired:
            aws.set_desired_capacity(group_name, decision.desired)
            direction = decision.direction(group.desired)
            base["lastScaleTime"] = busy_lease.format_micro_time(snapshot.now)
            base["lastScaleDirection"] = direction.value if direction else None
            outcome.scaled_from = group.desired
            change = f"desired capacity {group.desired} -> {decision.desired}"
            outcome.actions.append(change)
            outcome.events.append(EventNote("Normal", "Scaled", f"{change}: {decision.message}"))
            log.info(
                "scaled %s: %s",
                group_name,
                decision.message,
                extra=ref.log_extra(reason=decision.reason.value, desired=decision.desired, previous=group.desired),
            )
    except AwsError as error:
        reason = "Retrying" if isinstance(error, AwsRetryable) else "AwsError"
        failed = _not_ready(ref, snapshot, base, reason=reason, message=str(error), spec=spec)
        failed.retry = error if isinstance(error, AwsRetryable) else None
        failed.depth, failed.group, failed.plan = depth, group, outcome.plan
        failed.events = outcome.events + failed.events
        failed.actions = outcome.actions
        return failed

    new: dict[str, Any] = dict(base)
    new.update(
        replicas=group.in_service,
        desiredReplicas=decision.desired,
        backlog=depth.backlog,
        inFlight=depth.in_flight,
        busyNodes=plan.busy_node_names,
        protectedInstances=plan.protected_instances,
        observedGeneration=snapshot.generation,
    )
    ready, reason, message = ConditionStatus.TRUE, "Reconciled", f"queue and Auto Scaling group {group_name} reachable"
    if outcome.node_errors:
        # The instances are protected and the group sized; only the Node annotations are behind.
        ready, reason = ConditionStatus.FALSE, "NodeAnnotationFailed"
        message = f"{len(outcome.node_errors)} Node patch(es) failed, first: {outcome.node_errors[0]}"
        outcome.retry = next((e for e in outcome.node_errors if isinstance(e, KubeRetryable)), None)
        if _condition(old, READY).get("reason") != reason:
            outcome.events.append(EventNote("Warning", reason, message))
            log.warning("%s: %s", reason, message, extra=ref.log_extra(reason=reason))
    conditions = set_condition(
        old.get("conditions") or [],
        type=READY,
        status=ready,
        reason=reason,
        message=message,
        now=snapshot.now,
        generation=snapshot.generation,
    )
    conditions = set_condition(
        conditions,
        type=SCALING,
        status=ConditionStatus.TRUE,
        reason=decision.reason.value,
        message=decision.message,
        now=snapshot.now,
        generation=snapshot.generation,
    )
    new["conditions"] = conditions
    new = {key: value for key, value in new.items() if value is not None}
    outcome.status = new
    outcome.status_patch = status_patch(old, new)
    return outcome


def _protect(
    ref: PipelineRef,
    snapshot: Snapshot,
    spec: models.VideoPipelineSpec,
    group: GroupState,
    *,
    aws: AwsApi,
    nodes_api: NodeApi,
    outcome: Outcome,
) -> protection.ProtectionPlan:
    """Bring busy-node protection in line with the Leases; returns the plan it carried out."""
    busy = protection.busy_nodes(snapshot.leases, snapshot.now, pipeline=ref.name)
    group_ids = {instance.instance_id for instance in group.instances if instance.in_service}
    busy_ids = {
        record.instance_id
        for name in busy
        if (record := snapshot.nodes.get(name)) is not None and record.instance_id in group_ids
    }
    flagged = {instance.instance_id for instance in group.instances if instance.protected_from_scale_in}
    to_read = group_ids if snapshot.audit else (busy_ids | flagged) & group_ids
    termination = aws.termination_protection(sorted(i for i in to_read if i is not None))
    plan = protection.plan(
        owner=ref.owner,
        busy=busy,
        nodes=snapshot.nodes,
        instances=group.instances,
        termination_protected=termination,
    )
    apply_plan(ref, plan, group.name, aws=aws, nodes_api=nodes_api, outcome=outcome)
    return plan


def apply_plan(
    ref: PipelineRef,
    plan: protection.ProtectionPlan,
    group_name: str,
    *,
    aws: AwsApi,
    nodes_api: NodeApi,
    outcome: Outcome,
) -> None:
    """Carry out a plan in the crash-safe order described in ``protection``."""
    node_of = {node.instance_id: node.node_name for node in plan.busy if node.instance_id}
    if plan.protect_scale_in:
        aws.set_scale_in_protection(group_name, plan.protect_scale_in, True)
    for instance_id in plan.enable_termination_protection:
        aws.set_termination_protection(instance_id, True)
    for instance_id in sorted(set(plan.protect_scale_in) | set(plan.enable_termination_protection)):
        message = f"instance {instance_id} (node {node_of.get(instance_id, '?')}) protected: node is busy"
        outcome.actions.append(message)
        outcome.events.append(EventNote("Normal", "Protected", message))
        log.info("%s", message, extra=ref.log_extra(instance=instance_id))
    for instance_id in plan.disable_termination_protection:
        aws.set_termination_protection(instance_id, False)
    if plan.release_scale_in:
        aws.set_scale_in_protection(group_name, plan.release_scale_in, False)
    for instance_id in sorted(set(plan.release_scale_in) | set(plan.disable_termination_protection)):
        message = f"instance {instance_id} released: node is idle or its Lease expired"
        outcome.actions.append(message)
        outcome.events.append(EventNote("Normal", "Released", message))
        log.info("%s", message, extra=ref.log_extra(instance=instance_id))
    for node_names, protect, done in (
        (plan.annotate_nodes, True, "annotated"),
        (plan.unannotate_nodes, False, "annotations removed"),
    ):
        for node_name in node_names:
            try:
                nodes_api.patch_node(node_name, protection.node_annotation_patch(ref.owner, protect=protect))
            except KubeError as error:  # reported in Ready; never blocks the AWS side
                outcome.node_errors.append(error)
                continue
            outcome.actions.append(f"node {node_name} {done}")


def release(
    ref: PipelineRef,
    spec: Mapping[str, Any],
    nodes: Mapping[str, protection.NodeRecord],
    *,
    aws: AwsApi,
    nodes_api: NodeApi,
) -> list[str]:
    """Undo every protection the pipeline holds (it is being deleted); returns what was done."""
    outcome = Outcome(status={}, status_patch={})
    group_name = ((spec.get("nodeGroup") or {}).get("autoScalingGroupName")) or ""
    instances: tuple[protection.GroupInstance, ...] = ()
    if group_name:
        try:
            instances = aws.describe_group(group_name).instances
        except GroupNotFound:
            instances = ()
    in_service = sorted(instance.instance_id for instance in instances if instance.in_service)
    plan = protection.plan(
        owner=ref.owner,
        busy={},
        nodes=nodes,
        instances=instances,
        termination_protected=aws.termination_protection(in_service),
    )
    apply_plan(ref, plan, group_name, aws=aws, nodes_api=nodes_api, outcome=outcome)
    if outcome.node_errors:  # the finalizer must not go while a Node still carries our annotations
        raise outcome.node_errors[0]
    return outcome.actions
