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
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from framescale import busy_lease
from framescale_operator import execute, models, policy, protection
from framescale_operator import plan as plan_
from framescale_operator.aws_actuators import (
    AwsApi,
    AwsError,
    AwsRetryable,
    GroupNotFound,
    GroupState,
    QueueDepth,
    QueueNotFound,
)
from framescale_operator.kube import KubeError, KubeRetryable, LeaseApi, NodeApi
from framescale_operator.models import ConditionStatus, Mode, ScaleDirection

log = logging.getLogger(__name__)

READY = "Ready"
SCALING = "Scaling"
PROTECTED = "Protected"
OWNED = "Owned"
FLEET = "Fleet"
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
    leases: Sequence[plan_.NodeLease]  # judged on the operator's clock (``judge_leases``)
    nodes: Mapping[str, protection.NodeRecord]
    now: datetime
    ownership: plan_.Ownership = field(default_factory=plan_.Ownership)
    limits: plan_.Limits = field(default_factory=plan_.Limits)
    deleting_since: datetime | None = None


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


@dataclass(frozen=True)
class Outcome:
    """What one pass saw, did and wants written (built once, by the report)."""

    status: dict[str, Any]
    status_patch: dict[str, Any]
    events: list[EventNote] = field(default_factory=list)
    depth: QueueDepth | None = None
    group: GroupState | None = None
    plan: plan_.Plan | None = None
    executed: execute.Result | None = None
    scaling_failure: Failure | None = None
    protection_failure: Failure | None = None
    actions: list[str] = field(default_factory=list)

    @property
    def decision(self) -> policy.Decision | None:
        return self.plan.decision if self.plan is not None else None

    @property
    def busy(self) -> tuple[protection.BusyNode, ...] | None:
        return self.plan.busy if self.plan is not None else None

    @property
    def instances_protected(self) -> bool:
        """Every protection step of the plan ran."""
        return self.executed is not None and (
            self.executed.failed is None or not isinstance(self.executed.failed, PROTECTION_STEPS)
        )

    @property
    def scaled_from(self) -> int | None:
        if self.executed is None or self.group is None:
            return None
        changed = self.executed.did(plan_.SetDesiredCapacity) or self.executed.did(plan_.Terminate)
        return self.group.desired if changed else None

    @property
    def scaled(self) -> bool:
        return self.scaled_from is not None

    @property
    def scaled_in(self) -> int:
        return len(self.executed.did(plan_.Terminate)) if self.executed is not None else 0

    @property
    def released(self) -> bool:
        """Deletion: every node released (the finalizer may go)."""
        return (
            self.plan is not None
            and self.plan.released
            and not self.failures
            and (self.executed is None or self.executed.failed is None)
        )

    @property
    def failures(self) -> list[Failure]:
        return [f for f in (self.scaling_failure, self.protection_failure) if f is not None]

    def next_expiry(self) -> datetime | None:
        """When the earliest busy Lease lapses unless renewed: the latest moment to look again."""
        return protection.next_expiry(self.busy or ())


PROTECTION_STEPS = (
    plan_.ProtectNewInstances,
    plan_.MarkInstance,
    plan_.SetScaleInProtection,
    plan_.SetTerminationProtection,
    plan_.UnmarkInstance,
    plan_.AnnotateNode,
)


def judge_leases(
    leases: Iterable[Mapping[str, Any]],
    liveness: busy_lease.LeaseLiveness,
    idle: IdleSince,
    monotonic: float,
) -> tuple[plan_.NodeLease, ...]:
    """The framescale Leases with their liveness and idle time on this process's monotonic clock."""
    judged = []
    for body in leases:
        record = busy_lease.parse_lease(body)
        if record is None:
            continue
        liveness.observe(record, monotonic)
        expiry = liveness.expires_at(record)
        judged.append(
            plan_.NodeLease(
                record=record,
                live=liveness.live(record, monotonic),
                idle_since=idle.observe(record, monotonic),
                expires_in=None if expiry is None else max(0.0, expiry - monotonic),
            )
        )
    return tuple(judged)


class IdleSince:
    """Since when (monotonic) each Lease has been seen idle; the plan drains the longest idle first."""

    def __init__(self) -> None:
        self._since: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def observe(self, record: busy_lease.LeaseRecord, monotonic: float) -> float | None:
        key = (record.namespace, record.name)
        with self._lock:
            if record.busy:
                self._since.pop(key, None)
                return None
            return self._since.setdefault(key, monotonic)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _last_scale(status: Mapping[str, Any]) -> policy.LastScale | None:
    when = busy_lease.parse_time(status.get("lastScaleTime"))
    direction = status.get("lastScaleDirection")
    if when is None or direction not in {d.value for d in ScaleDirection}:
        return None
    return policy.LastScale(time=when, direction=ScaleDirection(direction))


scaling_spec = plan_.scaling_spec


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


def _kube_failure(error: KubeError) -> Failure:
    if isinstance(error, KubeRetryable):
        return Failure("Retrying", f"{error}; {RETRYING}", retryable=True)
    return Failure("KubeError", f"{error}; {NEXT_PASS}")


def _group_name(spec: Mapping[str, Any]) -> str:
    """The Auto Scaling group's name, read leniently: protection needs nothing else of the spec."""
    name = (spec.get("nodeGroup") or {}).get("autoScalingGroupName")
    return name if isinstance(name, str) else ""


def _mode_message(spec: models.VideoPipelineSpec) -> str:
    if spec.mode is Mode.MANUAL:
        return f"pinned to {spec.replicas} node(s) by spec.replicas"
    auto = spec.autoscaling
    return f"autoscaling from the queue between {auto.min_replicas} and {auto.max_replicas} node(s)"


def _memory(status: Mapping[str, Any]) -> plan_.Memory:
    """What earlier passes left in status; a value that does not parse is as good as absent."""
    holds: dict[str, plan_.Hold] = {}
    for item in status.get("lifecycleHolds") or []:
        if not isinstance(item, Mapping):
            continue
        since = busy_lease.parse_time(item.get("since"))
        if isinstance(item.get("instanceId"), str) and since is not None:
            holds[item["instanceId"]] = plan_.Hold(since, busy_lease.parse_time(item.get("lastHeartbeat")))
    target = status.get("desiredReplicas")
    return plan_.Memory(
        last_scale=_last_scale(status),
        scale_in_wanted_since=busy_lease.parse_time(status.get("scaleInWantedSince")),
        target=target if isinstance(target, int) and not isinstance(target, bool) and target >= 0 else None,
        holds=holds,
    )


@dataclass(frozen=True)
class _Seen:
    """The observe stage's result."""

    spec: models.VideoPipelineSpec | None
    spec_failure: Failure | None
    group: GroupState | None
    group_failure: Failure | None
    depth: QueueDepth | None
    queue_failure: Failure | None


def _observe_aws(snapshot: Snapshot, group_name: str, *, aws: AwsApi, scale: bool) -> _Seen:
    spec: models.VideoPipelineSpec | None = None
    spec_failure = group_failure = queue_failure = None
    try:
        spec = models.parse_spec(dict(snapshot.spec))
    except ValidationError as error:
        spec_failure = Failure("InvalidSpec", f"{models.describe_errors(error)}; scaling waits for a corrected spec")
    group: GroupState | None = None
    if not group_name:
        group_failure = Failure(
            "InvalidSpec", "spec.nodeGroup.autoScalingGroupName is not set; protection waits for a corrected spec"
        )
    else:
        try:
            group = aws.describe_group(group_name)
        except AwsError as error:
            group_failure = _aws_failure(error)
    depth: QueueDepth | None = None
    if scale and spec is not None and group is not None and snapshot.deleting_since is None:
        try:
            depth = aws.queue_depth(spec.queue_url)
        except AwsError as error:
            queue_failure = _aws_failure(error)
    return _Seen(spec, spec_failure, group, group_failure, depth, queue_failure)


def reconcile(
    ref: PipelineRef,
    snapshot: Snapshot,
    *,
    aws: AwsApi,
    nodes_api: NodeApi,
    leases_api: LeaseApi,
    scale: bool = True,
    new_token: Callable[[], str] = busy_lease.new_drain_token,
) -> Outcome:
    """One level-based pass: observe, plan, execute, report. ``scale=False`` does not read the
    queue (it goes on toward the target the last scaling pass decided)."""
    old = dict(snapshot.status)
    group_name = _group_name(snapshot.spec)
    seen = _observe_aws(snapshot, group_name, aws=aws, scale=scale)
    planned: plan_.Plan | None = None
    executed: execute.Result | None = None
    protection_failure = seen.group_failure
    # A protection pass (scale False) leaves the Scaling condition to the scaling passes, unless
    # one of its own scaling steps (a termination, a drain request) fails.
    scaling_failure = (seen.spec_failure or seen.group_failure or seen.queue_failure) if scale else None
    if seen.group is not None:
        group = seen.group
        try:
            busy_ids = [
                i.instance_id
                for i in group.instances
                if i.in_service
                and any(
                    lease.live and lease.record.busy and _instance_of(snapshot, lease) == i.instance_id
                    for lease in snapshot.leases
                )
            ]
            termination = aws.termination_protection(busy_ids)
            markers = aws.protection_markers(i.instance_id for i in group.instances if i.in_service)
        except AwsError as error:
            protection_failure = _aws_failure(error)
        else:
            observation = plan_.Observation(
                owner=ref.owner,
                pipeline=ref.name,
                spec=seen.spec,
                group=group,
                depth=seen.depth,
                leases=snapshot.leases,
                nodes=snapshot.nodes,
                termination_protected=termination,
                markers=markers,
                now=snapshot.now,
                ownership=snapshot.ownership,
                memory=_memory(old),
                limits=snapshot.limits,
                deleting_since=snapshot.deleting_since,
            )
            planned = plan_.plan(observation, new_token)
            executed = execute.execute(
                planned.steps,
                owner=ref.owner,
                nodes=dict(snapshot.nodes),
                aws=aws,
                nodes_api=nodes_api,
                leases_api=leases_api,
            )
            failure = _step_failure(executed)
            if failure is not None and isinstance(executed.failed, PROTECTION_STEPS):
                protection_failure = failure
            elif failure is not None:
                scaling_failure = scaling_failure or failure
            if executed.node_errors and protection_failure is None:
                retryable = any(isinstance(error, KubeRetryable) for error in executed.node_errors)
                protection_failure = Failure(
                    "NodeAnnotationFailed",
                    f"{len(executed.node_errors)} Node patch(es) failed, first: {executed.node_errors[0]}; "
                    + (RETRYING if retryable else NEXT_PASS),
                    retryable=retryable,
                )
    return _report(
        ref,
        snapshot,
        old=old,
        seen=seen,
        planned=planned,
        executed=executed,
        protection_failure=protection_failure,
        scaling_failure=scaling_failure,
        scale=scale,
        group_name=group_name,
    )


def _instance_of(snapshot: Snapshot, lease: plan_.NodeLease) -> str | None:
    record = snapshot.nodes.get(lease.record.node_name)
    return record.instance_id if record is not None else None


def _step_failure(executed: execute.Result) -> Failure | None:
    error = executed.error
    if error is None or executed.failed is None:
        return None
    failure = _aws_failure(error) if isinstance(error, AwsError) else _kube_failure(error)
    return Failure(failure.reason, f"{executed.failed.describe()} failed: {failure.message}", failure.retryable)


EVENT_REASONS: dict[type[plan_.Step], str] = {
    plan_.SetDesiredCapacity: "Scaled",
    plan_.Terminate: "ScaledIn",
    plan_.RequestDrain: "DrainRequested",
    plan_.WithdrawDrain: "DrainWithdrawn",
    plan_.CompleteLifecycle: "TerminationReleased",
    plan_.ProtectNewInstances: "GroupAdopted",
}


def _report(
    ref: PipelineRef,
    snapshot: Snapshot,
    *,
    old: dict[str, Any],
    seen: _Seen,
    planned: plan_.Plan | None,
    executed: execute.Result | None,
    protection_failure: Failure | None,
    scaling_failure: Failure | None,
    scale: bool,
    group_name: str,
) -> Outcome:
    """The status to write and the Events to post, from what the pass saw and did."""
    new: dict[str, Any] = {**old, "observedGeneration": snapshot.generation}
    events: list[EventNote] = []
    actions: list[str] = []
    group = seen.group
    if group is not None:
        new["replicas"] = group.in_service
    if seen.depth is not None:
        new.update(backlog=seen.depth.backlog, inFlight=seen.depth.in_flight, delayed=seen.depth.delayed)
    done = executed.done if executed is not None else []
    for step in done:
        actions.append(step.describe())
        if isinstance(step, plan_.Event):
            events.append(EventNote(step.type, step.reason, step.message))
        elif isinstance(step, plan_.SetDesiredCapacity) and planned is not None and planned.decision is not None:
            events.append(EventNote("Normal", "Scaled", f"{step.describe()}: {planned.decision.message}"))
        elif type(step) in EVENT_REASONS:
            events.append(EventNote("Normal", EVENT_REASONS[type(step)], step.describe()))
        elif isinstance(step, plan_.SetTerminationProtection):
            events.append(EventNote("Normal", "Protected" if step.enabled else "Released", step.describe()))
        log.info("%s", step.describe(), extra=ref.log_extra(step=type(step).__name__))
    if planned is not None and planned.conflict is None:
        new["busyNodes"] = sorted(node.node_name for node in planned.busy)
        if executed is not None and (executed.failed is None or not isinstance(executed.failed, PROTECTION_STEPS)):
            new["protectedInstances"] = protection.instances_of(planned.busy)
        new["drainingNodes"] = list(planned.draining)
        new["lifecycleHolds"] = [
            {
                "instanceId": instance_id,
                "since": format_time(hold.since),
                **({"lastHeartbeat": format_time(hold.last_heartbeat)} if hold.last_heartbeat else {}),
                "deadline": format_time(hold.since + timedelta(seconds=snapshot.limits.lifecycle_max_hold_seconds)),
            }
            for instance_id, hold in sorted(planned.holds.items())
        ]
        since = planned.scale_in_wanted_since
        new["scaleInWantedSince"] = busy_lease.format_micro_time(since) if since is not None else None
        if planned.target is not None:
            new["desiredReplicas"] = planned.target
        changed = [s for s in done if isinstance(s, plan_.SetDesiredCapacity | plan_.Terminate)]
        if changed:
            new["lastScaleTime"] = busy_lease.format_micro_time(snapshot.now)
            last = changed[-1]
            out = isinstance(last, plan_.SetDesiredCapacity) and last.desired > last.previous
            new["lastScaleDirection"] = (ScaleDirection.OUT if out else ScaleDirection.IN).value
    if seen.spec is not None and scale:
        mode = seen.spec.mode.value
        if old.get("mode") not in (None, mode):
            message = f"{old['mode']} -> {mode}: {_mode_message(seen.spec)}"
            events.append(EventNote("Normal", "ModeChanged", message))
            actions.append(f"mode {message}")
        new["mode"] = mode
    new["conditions"] = _conditions(
        ref,
        snapshot,
        old=old,
        group_name=group_name,
        planned=planned,
        events=events,
        protection_failure=protection_failure,
        scaling_failure=scaling_failure,
        scale=scale,
    )
    status = {key: value for key, value in new.items() if value is not None}
    return Outcome(
        status=status,
        status_patch=status_patch(old, status),
        events=events,
        depth=seen.depth,
        group=group,
        plan=planned,
        executed=executed,
        scaling_failure=scaling_failure,
        protection_failure=protection_failure,
        actions=actions,
    )


def _conditions(
    ref: PipelineRef,
    snapshot: Snapshot,
    *,
    old: Mapping[str, Any],
    group_name: str,
    planned: plan_.Plan | None,
    events: list[EventNote],
    protection_failure: Failure | None,
    scaling_failure: Failure | None,
    scale: bool,
) -> list[dict[str, Any]]:
    """Owned, Protected, Fleet and (on a scaling pass) Scaling from this pass; Ready from all.
    Posts the Warnings for new failures and the Event for recovery."""
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
            events.append(EventNote("Warning", reason, message))
            log.warning("%s: %s", reason, message, extra=ref.log_extra(reason=reason, condition=type))

    if planned is not None and planned.conflict is not None:
        put(OWNED, False, "Conflict", f"{planned.conflict}; this pipeline does not act")
    elif planned is not None:
        put(OWNED, True, "Owner", f"this pipeline owns Auto Scaling group {group_name} and its queue")

    if protection_failure is not None:
        put(PROTECTED, False, protection_failure.reason, protection_failure.message)
    elif planned is not None and planned.conflict is None:
        count = len(protection.instances_of(planned.busy))
        put(
            PROTECTED,
            True,
            "UpToDate",
            f"every instance protected from scale-in; {count} busy instance(s) also protected from termination",
        )
    if planned is not None and planned.conflict is None:
        notes = []
        if planned.standby:
            notes.append(f"in Standby, left alone (not chosen, not counted): {', '.join(planned.standby)}")
        if planned.unhealthy:
            notes.append(
                f"unhealthy, not admitted (the group replaces them through the hook): {', '.join(planned.unhealthy)}"
            )
        put(FLEET, True, "Noted" if notes else "AllManaged", "; ".join(notes) or "every instance is managed")
    if planned is not None and planned.refusal is not None:
        put(SCALING, False, "WarmPoolUnsupported", f"{planned.refusal}; scaling is refused, protection goes on")
    elif scaling_failure is not None:
        put(SCALING, False, scaling_failure.reason, scaling_failure.message)
    elif planned is not None and planned.decision is not None:
        message = planned.decision.message
        if planned.draining:
            message += f"; draining {', '.join(planned.draining)}"
        put(SCALING, True, planned.decision.reason.value, message)

    current = {c["type"]: c for c in conditions}
    failing = next(
        (
            current[t]
            for t in (OWNED, SCALING, PROTECTED)
            if current.get(t, {}).get("status") == ConditionStatus.FALSE.value
        ),
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
            events.append(EventNote("Normal", "Recovered", note))
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


def release(
    ref: PipelineRef,
    snapshot: Snapshot,
    *,
    aws: AwsApi,
    nodes_api: NodeApi,
    leases_api: LeaseApi,
    new_token: Callable[[], str] = busy_lease.new_drain_token,
) -> Outcome:
    """A pass of a pipeline being deleted (``snapshot.deleting_since`` set): drain, release idle
    nodes, keep busy ones protected. ``Outcome.released``: the finalizer may go."""
    if snapshot.deleting_since is None:
        raise ValueError("release() is for a pipeline being deleted: snapshot.deleting_since must be set")
    group_name = _group_name(snapshot.spec)
    if not group_name:
        return Outcome(status=dict(snapshot.status), status_patch={}, plan=plan_.Plan(steps=()))
    try:
        aws.describe_group(group_name)
    except GroupNotFound:
        return Outcome(status=dict(snapshot.status), status_patch={}, plan=plan_.Plan(steps=()))
    except AwsError:
        pass  # the pass reports it
    return reconcile(
        ref, snapshot, aws=aws, nodes_api=nodes_api, leases_api=leases_api, scale=False, new_token=new_token
    )
