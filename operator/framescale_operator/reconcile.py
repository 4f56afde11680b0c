"""One reconciliation of one VideoPipeline, in two halves that fail independently.

* Protection, on every pass: busy Leases -> scale-in protection, ``DisableApiTermination`` and
  Node annotations for the busy nodes' instances, and release of what this pipeline set on the
  others. It needs only the group's name, the Leases and the Nodes, so a queue that cannot be
  read or a spec that is otherwise invalid never leaves an expired Lease's node protected or a
  busy node unprotected. Its outcome is the ``Protected`` condition.
* Scaling, when the pass says so (``scheduling``): read the queue, decide, set the desired
  capacity. It never scales in while protection is not in place (``policy``). Its outcome is the
  ``Scaling`` condition: the decision, or why none could be made.

``Ready`` is True when both are. Plain, synchronous, typed: it takes a snapshot of what kopf
knows (spec, status, Leases, Nodes), the AWS and Node APIs, and returns the status to write and
the Events to post. It is level-based: it reads the world each time and changes only what
differs from what the spec and the busy Leases call for, so a second run right after the first
changes nothing (no AWS writes, no status patch, no Events).
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
PROTECTED = "Protected"
RETRYING = "retrying with backoff"
NEXT_PASS = "tried again at the next pass"


@dataclass(frozen=True)
class PipelineRef:
    namespace: str
    name: str

    @property
    def owner(self) -> str:
        """How the pipeline signs what it changes (the Node marker annotation, the EC2 marker tags)."""
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


@dataclass(frozen=True)
class EventNote:
    """A Kubernetes Event to post on the VideoPipeline."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Failure:
    """Why one half of the pass could not finish; ``retryable``: try again after a backoff."""

    reason: str
    message: str
    retryable: bool = False


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
    busy: tuple[protection.BusyNode, ...] | None = None
    plan: protection.ProtectionPlan | None = None
    instances_protected: bool = False  # the plan's AWS side was carried out in full
    scaled_from: int | None = None
    scaling_failure: Failure | None = None
    protection_failure: Failure | None = None
    actions: list[str] = field(default_factory=list)
    node_errors: list[KubeError] = field(default_factory=list)

    @property
    def scaled(self) -> bool:
        return self.decision is not None and self.scaled_from is not None

    @property
    def failures(self) -> list[Failure]:
        return [f for f in (self.scaling_failure, self.protection_failure) if f is not None]

    def next_expiry(self) -> datetime | None:
        """When the earliest busy Lease lapses unless renewed: the latest moment to look again."""
        return protection.next_expiry(self.busy or ())


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
        replicas=spec.replicas if spec.mode is Mode.MANUAL else None,
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


def _aws_failure(error: AwsError) -> Failure:
    if isinstance(error, QueueNotFound):
        return Failure("QueueNotFound", f"{error.message}; {NEXT_PASS}")
    if isinstance(error, GroupNotFound):
        return Failure("NodeGroupNotFound", f"{error.message}; {NEXT_PASS}")
    if isinstance(error, AwsRetryable):
        return Failure("Retrying", f"{error}; {RETRYING}", retryable=True)
    return Failure("AwsError", f"{error}; {NEXT_PASS}")


def _group_name(spec: Mapping[str, Any]) -> str:
    """The Auto Scaling group's name, read leniently: protection needs nothing else of the spec."""
    name = (spec.get("nodeGroup") or {}).get("autoScalingGroupName")
    return name if isinstance(name, str) else ""


def _mode_message(spec: models.VideoPipelineSpec) -> str:
    if spec.mode is Mode.MANUAL:
        return f"pinned to {spec.replicas} node(s) by spec.replicas"
    auto = spec.autoscaling
    return f"autoscaling from the queue between {auto.min_replicas} and {auto.max_replicas} node(s)"


def reconcile(
    ref: PipelineRef,
    snapshot: Snapshot,
    *,
    aws: AwsApi,
    nodes_api: NodeApi,
    scale: bool = True,
) -> Outcome:
    """One level-based pass over one pipeline; ``scale=False`` runs the protection half only."""
    old = dict(snapshot.status)
    new: dict[str, Any] = {**old, "observedGeneration": snapshot.generation}
    outcome = Outcome(status={}, status_patch={})
    spec_failure: Failure | None = None
    try:
        outcome.spec = models.parse_spec(dict(snapshot.spec))
    except ValidationError as error:
        spec_failure = Failure("InvalidSpec", f"{models.describe_errors(error)}; scaling waits for a corrected spec")
    group_name = _group_name(snapshot.spec)

    group_failure: Failure | None = None
    if not group_name:
        group_failure = Failure(
            "InvalidSpec", "spec.nodeGroup.autoScalingGroupName is not set; protection waits for a corrected spec"
        )
    else:
        try:
            outcome.group = aws.describe_group(group_name)
        except AwsError as error:
            group_failure = _aws_failure(error)
    if outcome.group is not None:
        new["replicas"] = outcome.group.in_service
        _protect(ref, snapshot, outcome.group, aws=aws, nodes_api=nodes_api, outcome=outcome)
    else:
        outcome.protection_failure = group_failure
    if outcome.busy is not None:
        new["busyNodes"] = sorted(node.node_name for node in outcome.busy)
    if outcome.instances_protected:
        new["protectedInstances"] = protection.instances_of(outcome.busy or ())

    if scale:
        if outcome.spec is None:
            outcome.scaling_failure = spec_failure
        elif outcome.group is None:
            outcome.scaling_failure = group_failure
        else:
            _scale(ref, snapshot, outcome.spec, outcome.group, aws=aws, outcome=outcome, new=new)
        if outcome.spec is not None:
            mode = outcome.spec.mode.value
            if old.get("mode") not in (None, mode):
                message = f"{old['mode']} -> {mode}: {_mode_message(outcome.spec)}"
                outcome.events.append(EventNote("Normal", "ModeChanged", message))
                outcome.actions.append(f"mode {message}")
            new["mode"] = mode

    new["conditions"] = _conditions(ref, old, outcome, snapshot, group_name)
    outcome.status = {key: value for key, value in new.items() if value is not None}
    outcome.status_patch = status_patch(old, outcome.status)
    return outcome


def _conditions(
    ref: PipelineRef, old: Mapping[str, Any], outcome: Outcome, snapshot: Snapshot, group_name: str
) -> list[dict[str, Any]]:
    """Protected and (on a scaling pass) Scaling from this pass; Ready from both. Posts the
    Warnings for new failures and the Event for recovery."""
    conditions: list[dict[str, Any]] = [dict(c) for c in old.get("conditions") or []]
    warned: set[tuple[str, str]] = set()  # one Warning when both halves fail alike (no group)

    def put(type: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conditions
        previous = _condition(old, type)
        status = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        conditions = set_condition(
            conditions,
            type=type,
            status=status,
            reason=reason,
            message=message,
            now=snapshot.now,
            generation=snapshot.generation,
        )
        seen = (previous.get("status"), previous.get("reason"), previous.get("message"))
        if not ok and seen != (status.value, reason, message) and (reason, message) not in warned:
            warned.add((reason, message))
            outcome.events.append(EventNote("Warning", reason, message))
            log.warning("%s: %s", reason, message, extra=ref.log_extra(reason=reason, condition=type))

    failure = outcome.protection_failure
    if failure is not None:
        put(PROTECTED, False, failure.reason, failure.message)
    else:
        count = len(protection.instances_of(outcome.busy or ()))
        put(PROTECTED, True, "UpToDate", f"protection matches the busy Leases: {count} instance(s) protected")
    if outcome.scaling_failure is not None:
        put(SCALING, False, outcome.scaling_failure.reason, outcome.scaling_failure.message)
    elif outcome.decision is not None:
        put(SCALING, True, outcome.decision.reason.value, outcome.decision.message)

    current = {c["type"]: c for c in conditions}
    failing = next(
        (current[t] for t in (SCALING, PROTECTED) if current.get(t, {}).get("status") == ConditionStatus.FALSE.value),
        None,
    )
    if failing is not None:
        ready, reason, message = ConditionStatus.FALSE, str(failing["reason"]), str(failing["message"])
    else:
        ready, reason = ConditionStatus.TRUE, "Reconciled"
        message = f"queue and Auto Scaling group {group_name} reachable; busy-node protection up to date"
        previous = _condition(old, READY)
        if previous.get("status") == ConditionStatus.FALSE.value:
            note = f"reconciled again after {previous.get('reason')}"
            outcome.events.append(EventNote("Normal", "Recovered", note))
            log.info("%s", note, extra=ref.log_extra(reason="Recovered"))
    return set_condition(
        conditions,
        type=READY,
        status=ready,
        reason=reason,
        message=message,
        now=snapshot.now,
        generation=snapshot.generation,
    )


def _scale(
    ref: PipelineRef,
    snapshot: Snapshot,
    spec: models.VideoPipelineSpec,
    group: GroupState,
    *,
    aws: AwsApi,
    outcome: Outcome,
    new: dict[str, Any],
) -> None:
    """The scaling half: read the queue, decide, set the desired capacity, record it in ``new``."""
    try:
        depth = aws.queue_depth(spec.queue_url)
    except AwsError as error:
        outcome.scaling_failure = _aws_failure(error)
        return
    outcome.depth = depth
    new.update(backlog=depth.backlog, inFlight=depth.in_flight)
    observation = policy.Observation(
        visible=depth.visible,
        in_flight=depth.in_flight,
        current_desired=group.desired,
        busy_nodes=len(protection.instances_of(outcome.busy or ())),
        group_min=group.min_size,
        group_max=group.max_size,
        protection_in_place=outcome.instances_protected,
    )
    decision = policy.decide(observation, scaling_spec(spec), _last_scale(snapshot.status), snapshot.now)
    outcome.decision = decision
    if decision.desired != group.desired:
        try:
            aws.set_desired_capacity(group.name, decision.desired)
        except AwsError as error:
            outcome.scaling_failure = _aws_failure(error)
            return
        direction = decision.direction(group.desired)
        new["lastScaleTime"] = busy_lease.format_micro_time(snapshot.now)
        new["lastScaleDirection"] = direction.value if direction else None
        outcome.scaled_from = group.desired
        change = f"desired capacity {group.desired} -> {decision.desired}"
        outcome.actions.append(change)
        outcome.events.append(EventNote("Normal", "Scaled", f"{change}: {decision.message}"))
        log.info(
            "scaled %s: %s",
            group.name,
            decision.message,
            extra=ref.log_extra(reason=decision.reason.value, desired=decision.desired, previous=group.desired),
        )
    new["desiredReplicas"] = decision.desired


def _protect(
    ref: PipelineRef,
    snapshot: Snapshot,
    group: GroupState,
    *,
    aws: AwsApi,
    nodes_api: NodeApi,
    outcome: Outcome,
) -> None:
    """The protection half: bring instance and Node protection in line with the busy Leases."""
    busy = protection.busy_nodes(snapshot.leases, snapshot.now, pipeline=ref.name)
    outcome.busy = protection.busy_records(busy, snapshot.nodes, group.instances)
    try:
        in_service = [instance.instance_id for instance in group.instances if instance.in_service]
        plan = protection.plan(
            owner=ref.owner,
            busy=outcome.busy,
            nodes=snapshot.nodes,
            instances=group.instances,
            termination_protected=aws.termination_protection(protection.instances_of(outcome.busy)),
            markers=aws.protection_markers(in_service),
        )
        outcome.plan = plan
        apply_plan(ref, plan, group.name, snapshot.nodes, aws=aws, nodes_api=nodes_api, outcome=outcome)
    except AwsError as error:
        outcome.protection_failure = _aws_failure(error)
        return
    outcome.instances_protected = True
    if outcome.node_errors:
        # The instances are protected; only the Node annotations (for Cluster Autoscaler and
        # Karpenter) are behind.
        retryable = any(isinstance(error, KubeRetryable) for error in outcome.node_errors)
        outcome.protection_failure = Failure(
            "NodeAnnotationFailed",
            f"{len(outcome.node_errors)} Node patch(es) failed, first: {outcome.node_errors[0]}; "
            + (RETRYING if retryable else NEXT_PASS),
            retryable=retryable,
        )


def apply_plan(
    ref: PipelineRef,
    plan: protection.ProtectionPlan,
    group_name: str,
    nodes: Mapping[str, protection.NodeRecord],
    *,
    aws: AwsApi,
    nodes_api: NodeApi,
    outcome: Outcome,
) -> None:
    """Carry out a plan in the crash-safe order described in ``protection``: a marker tag goes on
    before its flag and comes off after it; scale-in protection is released last."""
    node_of = {node.instance_id: node.node_name for node in plan.busy if node.instance_id}
    for instance_id in plan.mark_scale_in:
        aws.set_marker(instance_id, protection.SCALE_IN_MARKER, ref.owner)
    if plan.protect_scale_in:
        aws.set_scale_in_protection(group_name, plan.protect_scale_in, True)
    for instance_id in plan.mark_termination:
        aws.set_marker(instance_id, protection.TERMINATION_MARKER, ref.owner)
    for instance_id in plan.protect_termination:
        aws.set_termination_protection(instance_id, True)
    for instance_id in sorted(set(plan.protect_scale_in) | set(plan.protect_termination)):
        message = f"instance {instance_id} (node {node_of.get(instance_id, '?')}) protected: node is busy"
        outcome.actions.append(message)
        outcome.events.append(EventNote("Normal", "Protected", message))
        log.info("%s", message, extra=ref.log_extra(instance=instance_id))

    for instance_id in plan.release_termination:
        aws.set_termination_protection(instance_id, False)
        aws.clear_marker(instance_id, protection.TERMINATION_MARKER, ref.owner)
    if plan.release_scale_in:
        aws.set_scale_in_protection(group_name, plan.release_scale_in, False)
    for instance_id in plan.unmark_scale_in:
        aws.clear_marker(instance_id, protection.SCALE_IN_MARKER, ref.owner)
    for instance_id in sorted(set(plan.release_scale_in) | set(plan.release_termination)):
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
                nodes_api.patch_node(
                    node_name, protection.node_annotation_patch(nodes.get(node_name), ref.owner, protect=protect)
                )
            except KubeError as error:  # reported in Protected; never blocks the AWS side
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
    group_name = _group_name(spec)
    instances: tuple[protection.GroupInstance, ...] = ()
    if group_name:
        try:
            instances = aws.describe_group(group_name).instances
        except GroupNotFound:
            instances = ()
    plan = protection.plan(
        owner=ref.owner,
        busy=(),
        nodes=nodes,
        instances=instances,
        termination_protected={},
        markers=aws.protection_markers(instance.instance_id for instance in instances if instance.in_service),
    )
    apply_plan(ref, plan, group_name, nodes, aws=aws, nodes_api=nodes_api, outcome=outcome)
    if outcome.node_errors:  # the finalizer must not go while a Node still carries our annotations
        raise outcome.node_errors[0]
    return outcome.actions
