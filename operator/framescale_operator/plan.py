"""One pass's plan: what the operator saw (``Observation``) in, an ordered tuple of steps out. Pure.

A pass is observe -> plan -> execute -> report (``reconcile``). This module is the middle: it
reads nothing, writes nothing and has no clock of its own, so the order of the steps, which is
what keeps a crash safe, is a property a test checks over plans of random worlds.

The rules (the operator README tells the same story for users):

1. **AWS never chooses a victim.** Every instance of the group is protected from scale-in and
   marked as ours; the group launches new ones protected (``ProtectNewInstances``). Capacity
   goes down only by ``Terminate`` (``TerminateInstanceInAutoScalingGroup`` with
   ``ShouldDecrementDesiredCapacity``) of an instance chosen here; ``SetDesiredCapacity`` raises
   the count, and lowers it only by capacity the group has not launched yet (never below the
   instances it has, all of them protected, so no instance can go with it). Busy nodes also
   get EC2 termination protection and the Cluster Autoscaler / Karpenter annotations
   (``protection``).
2. **Drain handshake first.** To shed nodes the plan picks victims among the instances that are
   not busy: first those with no live Lease (no worker, or a worker that cannot renew: neither
   starts a job), then idle live ones, idle longest first. A live one is asked to drain
   (``RequestDrain`` mode if-idle, a fresh token); it is terminated only in a later pass, once
   its Lease says "<token> drained". "refused" withdraws the request and the plan looks again.
   A standing request that is no longer needed (the backlog came back, the operator restarted
   with a new target) is withdrawn, so no node stays fenced.
3. **Held terminations.** An instance in ``Terminating:Wait`` (the termination lifecycle hook
   holds what AWS or anyone else terminates) is asked to drain in mode finish; while its jobs
   finish it gets lifecycle heartbeats; once drained, or without a live worker, or when the
   configured maximum hold has passed, the action is completed with CONTINUE.
4. **Deletion** drains every node in mode finish and releases the protection of each node once
   it is drained (or has no live worker); busy nodes keep theirs until they drain, up to the
   configured maximum, then the finalizer goes and leaves them protected.
5. **One owner** per group and per queue (``owner_of``): a pipeline that does not own both plans
   nothing but its status.
6. Admission: a live Lease of an instance that stays gets ``admitted-by``; until then its worker
   takes no job. An instance chosen as a victim is never admitted.

Order of the steps in a plan: protection first (group flag, scale-in protection and marks,
busy nodes' termination protection and annotations), then the release of idle nodes' termination
protection and annotations (a victim must not carry ``DisableApiTermination``), then held
terminations, withdrawals, terminations of drained victims, new drain requests, admissions and a
scale-out. Deleting, scale-in protection of released nodes is lifted last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from framescale.busy_lease import DrainMode, LeaseRecord
from framescale_operator import models, policy, protection
from framescale_operator.aws_actuators import GroupState, QueueDepth
from framescale_operator.protection import GroupInstance, Markers, NodeRecord

TERMINATING_WAIT = "Terminating:Wait"


# ---------------------------------------------------------------------------- what was seen


@dataclass(frozen=True)
class NodeLease:
    """One worker's Lease, with what only the operator's clock can say about it."""

    record: LeaseRecord
    live: bool  # renewed within its duration, judged on the operator's monotonic clock
    idle_since: float | None = None  # monotonic: since when the operator has seen it idle
    expires_in: float | None = None  # seconds until it stops being live unless renewed


@dataclass(frozen=True)
class Claim:
    """A pipeline's claim on a group and a queue (for ``owner_of``)."""

    owner: str  # namespace/name
    created: str  # metadata.creationTimestamp (RFC 3339, so text order is time order)
    group: str
    queue: str


def owner_of(claims: Sequence[Claim], *, group: str | None = None, queue: str | None = None) -> str | None:
    """The pipeline that owns this group (or queue): the oldest claim naming it, then by namespace/name."""
    named = [c for c in claims if (group is not None and c.group == group) or (queue is not None and c.queue == queue)]
    if not named:
        return None
    return min(named, key=lambda c: (c.created, c.owner)).owner


@dataclass(frozen=True)
class Ownership:
    """Who owns the pipeline's group and queue (None: nobody else claims them)."""

    group_owner: str | None = None
    queue_owner: str | None = None


@dataclass(frozen=True)
class Limits:
    """The operator's settings that bound a plan."""

    lifecycle_hook: str = "framescale-drain"
    lifecycle_max_hold_seconds: float = 3600.0
    lifecycle_heartbeat_seconds: float = 60.0
    deletion_max_hold_seconds: float = 3600.0


@dataclass(frozen=True)
class Hold:
    """A held termination as the status remembers it."""

    since: datetime
    last_heartbeat: datetime | None = None


@dataclass(frozen=True)
class Memory:
    """What earlier passes left in status."""

    last_scale: policy.LastScale | None = None
    scale_in_wanted_since: datetime | None = None
    target: int | None = None  # the node count the last scaling pass decided
    holds: Mapping[str, Hold] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """Everything one pass saw; ``depth`` None on a pass that does not read the queue."""

    owner: str  # namespace/name of the pipeline
    pipeline: str  # its name (the label workers put on their Leases)
    spec: models.VideoPipelineSpec | None
    group: GroupState
    depth: QueueDepth | None
    leases: Sequence[NodeLease]
    nodes: Mapping[str, NodeRecord]
    termination_protected: Mapping[str, bool]
    markers: Mapping[str, Markers]
    now: datetime
    ownership: Ownership = Ownership()
    memory: Memory = Memory()
    limits: Limits = Limits()
    deleting_since: datetime | None = None  # set: the pipeline is being deleted


# ---------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class ProtectNewInstances(Step):
    group: str

    def describe(self) -> str:
        return f"group {self.group} launches new instances protected from scale-in"


@dataclass(frozen=True)
class MarkInstance(Step):
    instance_id: str
    key: str

    def describe(self) -> str:
        return f"instance {self.instance_id} marked {self.key}"


@dataclass(frozen=True)
class SetScaleInProtection(Step):
    group: str
    instance_ids: tuple[str, ...]
    protected: bool

    def describe(self) -> str:
        what = "protected from" if self.protected else "released for"
        return f"instance(s) {', '.join(self.instance_ids)} {what} scale-in"


@dataclass(frozen=True)
class SetTerminationProtection(Step):
    instance_id: str
    enabled: bool

    def describe(self) -> str:
        return f"instance {self.instance_id} termination protection {'on' if self.enabled else 'off'}"


@dataclass(frozen=True)
class UnmarkInstance(Step):
    instance_id: str
    key: str

    def describe(self) -> str:
        return f"instance {self.instance_id} unmarked {self.key}"


@dataclass(frozen=True)
class AnnotateNode(Step):
    node: str
    protect: bool

    def describe(self) -> str:
        return f"node {self.node} {'annotated' if self.protect else 'annotations removed'}"


@dataclass(frozen=True)
class RequestDrain(Step):
    namespace: str
    lease: str
    node: str
    token: str
    mode: DrainMode
    why: str

    def describe(self) -> str:
        return f"node {self.node} asked to drain ({self.mode.value}, token {self.token}): {self.why}"


@dataclass(frozen=True)
class WithdrawDrain(Step):
    namespace: str
    lease: str
    node: str
    why: str

    def describe(self) -> str:
        return f"drain request of node {self.node} withdrawn: {self.why}"


@dataclass(frozen=True)
class Admit(Step):
    namespace: str
    lease: str
    node: str

    def describe(self) -> str:
        return f"node {self.node} admitted"


@dataclass(frozen=True)
class Terminate(Step):
    instance_id: str
    node: str | None
    why: str
    decrement: bool = True  # always: the desired capacity goes down with the instance

    def describe(self) -> str:
        return f"instance {self.instance_id} (node {self.node or '?'}) terminated: {self.why}"


@dataclass(frozen=True)
class SetDesiredCapacity(Step):
    group: str
    desired: int
    previous: int

    def describe(self) -> str:
        return f"desired capacity {self.previous} -> {self.desired}"


@dataclass(frozen=True)
class HeartbeatLifecycle(Step):
    group: str
    hook: str
    instance_id: str

    def describe(self) -> str:
        return f"held termination of {self.instance_id} kept alive (lifecycle heartbeat)"


@dataclass(frozen=True)
class CompleteLifecycle(Step):
    group: str
    hook: str
    instance_id: str
    why: str
    result: str = "CONTINUE"

    def describe(self) -> str:
        return f"held termination of {self.instance_id} completed ({self.result}): {self.why}"


@dataclass(frozen=True)
class Event(Step):
    """A Kubernetes Event on the pipeline (the executor only records it)."""

    type: str
    reason: str
    message: str

    def describe(self) -> str:
        return f"{self.reason}: {self.message}"


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    decision: policy.Decision | None = None
    target: int | None = None
    busy: tuple[protection.BusyNode, ...] = ()
    draining: tuple[str, ...] = ()  # node names with a standing drain request of ours after the plan
    holds: Mapping[str, Hold] = field(default_factory=dict)
    scale_in_wanted_since: datetime | None = None
    conflict: str | None = None  # why this pipeline may not act (another one owns its group or queue)
    refusal: str | None = None  # why scaling is refused (a warm pool)
    standby: tuple[str, ...] = ()
    unhealthy: tuple[str, ...] = ()
    released: bool = True  # deletion: every node is released (the finalizer may go)
    kept: tuple[str, ...] = ()  # deletion: instances kept protected because they are busy

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [step for step in self.steps if isinstance(step, kind)]


@dataclass
class _Node:
    """One instance of the group with its Node and Lease (either may be missing)."""

    instance: GroupInstance
    node: str | None
    lease: NodeLease | None

    @property
    def live(self) -> NodeLease | None:
        return self.lease if self.lease is not None and self.lease.live else None

    @property
    def busy(self) -> bool:
        return self.live is not None and self.live.record.busy


def scaling_spec(spec: models.VideoPipelineSpec) -> policy.ScalingSpec:
    auto = spec.autoscaling
    return policy.ScalingSpec(
        replicas=spec.replicas if spec.mode is models.Mode.MANUAL else None,
        min_replicas=auto.min_replicas,
        max_replicas=auto.max_replicas,
        target_backlog_per_replica=auto.target_backlog_per_replica,
        activation_backlog=auto.activation_backlog,
        scale_out_cooldown_seconds=auto.scale_out_cooldown_seconds,
        scale_in_cooldown_seconds=auto.scale_in_cooldown_seconds,
    )


def _ours(lease: NodeLease | None, owner: str) -> bool:
    """A drain request of this pipeline stands on the Lease."""
    return lease is not None and lease.record.drain_request is not None and lease.record.drain_requested_by == owner


def _fleet(obs: Observation) -> list[_Node]:
    node_of = {record.instance_id: name for name, record in obs.nodes.items() if record.instance_id}
    lease_of: dict[str, NodeLease] = {}
    for lease in obs.leases:
        if lease.record.pipeline and lease.record.pipeline != obs.pipeline:
            continue  # another pipeline's worker
        lease_of[lease.record.node_name] = lease
    fleet = []
    for instance in obs.group.instances:
        node = node_of.get(instance.instance_id)
        fleet.append(_Node(instance, node, lease_of.get(node) if node else None))
    return fleet


def _expiry(lease: NodeLease | None, now: datetime) -> datetime | None:
    if lease is None or lease.expires_in is None:
        return None
    return now + timedelta(seconds=lease.expires_in)


def busy_nodes(fleet: Sequence[_Node], now: datetime) -> tuple[protection.BusyNode, ...]:
    """The live busy nodes of the group (they get termination protection and the annotations)."""
    return tuple(
        protection.BusyNode(
            node_name=n.node or "",
            instance_id=n.instance.instance_id if n.instance.in_service else None,
            expires_at=_expiry(n.live, now),
            active_jobs=n.live.record.active_jobs if n.live else 0,
        )
        for n in sorted(fleet, key=lambda n: n.node or "")
        if n.busy and n.node
    )


def protection_steps(obs: Observation, busy: tuple[protection.BusyNode, ...], keep: set[str] | None) -> list[Step]:
    """Protection in crash-safe order: group flag, marks before flags, flags; releases come later."""
    group = obs.group
    prot = protection.plan(
        owner=obs.owner,
        busy=busy,
        nodes=obs.nodes,
        instances=group.instances,
        termination_protected=obs.termination_protected,
        markers=obs.markers,
        scale_in_keep=keep,
    )
    steps: list[Step] = []
    if keep is None and not group.new_instances_protected:
        steps.append(ProtectNewInstances(group.name))
    steps += [MarkInstance(i, protection.SCALE_IN_MARKER) for i in prot.mark_scale_in]
    if prot.protect_scale_in:
        steps.append(SetScaleInProtection(group.name, prot.protect_scale_in, True))
    steps += [MarkInstance(i, protection.TERMINATION_MARKER) for i in prot.mark_termination]
    steps += [SetTerminationProtection(i, True) for i in prot.protect_termination]
    steps += [AnnotateNode(n, True) for n in prot.annotate_nodes]
    return steps


def release_steps(obs: Observation, busy: tuple[protection.BusyNode, ...], keep: set[str] | None) -> list[Step]:
    """What this pipeline set and no longer needs: a flag goes off before its mark."""
    prot = protection.plan(
        owner=obs.owner,
        busy=busy,
        nodes=obs.nodes,
        instances=obs.group.instances,
        termination_protected=obs.termination_protected,
        markers=obs.markers,
        scale_in_keep=keep,
    )
    steps: list[Step] = []
    for i in prot.release_termination:
        steps += [SetTerminationProtection(i, False), UnmarkInstance(i, protection.TERMINATION_MARKER)]
    if prot.release_scale_in:
        steps.append(SetScaleInProtection(obs.group.name, prot.release_scale_in, False))
    steps += [UnmarkInstance(i, protection.SCALE_IN_MARKER) for i in prot.unmark_scale_in]
    steps += [AnnotateNode(n, False) for n in prot.unannotate_nodes]
    return steps


def _lifecycle(
    obs: Observation, fleet: Sequence[_Node], new_token: Callable[[], str]
) -> tuple[list[Step], dict[str, Hold], set[str]]:
    """Held terminations: drain in mode finish, heartbeat while jobs finish, then CONTINUE."""
    steps: list[Step] = []
    holds: dict[str, Hold] = {}
    draining: set[str] = set()
    limits, group = obs.limits, obs.group
    for n in fleet:
        if n.instance.lifecycle_state != TERMINATING_WAIT:
            continue
        instance_id = n.instance.instance_id
        hold = obs.memory.holds.get(instance_id, Hold(since=obs.now))
        live = n.live
        deadline = hold.since + timedelta(seconds=limits.lifecycle_max_hold_seconds)
        record = live.record if live else None
        if record is None:
            steps.append(CompleteLifecycle(group.name, limits.lifecycle_hook, instance_id, "no live worker on it"))
            continue
        # Drained for any request of ours (an instance we terminated ourselves may be held too).
        if _ours(live, obs.owner) and record.drain_request and record.drained_for(record.drain_request):
            steps.append(CompleteLifecycle(group.name, limits.lifecycle_hook, instance_id, "its worker drained"))
            continue
        mine = _ours(live, obs.owner) and record.drain_mode == DrainMode.FINISH
        if obs.now >= deadline:
            why = f"still busy after the maximum hold of {limits.lifecycle_max_hold_seconds:.0f} s"
            steps.append(CompleteLifecycle(group.name, limits.lifecycle_hook, instance_id, why))
            steps.append(Event("Warning", "LifecycleHoldExpired", f"instance {instance_id} (node {n.node}) {why}"))
            continue
        if not mine:
            steps.append(
                RequestDrain(
                    record.namespace,
                    record.name,
                    record.node_name,
                    new_token(),
                    DrainMode.FINISH,
                    "its instance is being terminated",
                )
            )
        last = hold.last_heartbeat or hold.since  # first seen now: the hook's timeout has just started
        if (obs.now - last).total_seconds() >= limits.lifecycle_heartbeat_seconds:
            steps.append(HeartbeatLifecycle(group.name, limits.lifecycle_hook, instance_id))
            hold = Hold(since=hold.since, last_heartbeat=obs.now)
        holds[instance_id] = hold
        draining.add(record.node_name)
    return steps, holds, draining


def _decide(
    obs: Observation, spec: models.VideoPipelineSpec, busy_count: int
) -> tuple[policy.Decision | None, datetime | None]:
    """The scaling decision of this pass, with the scale-in stabilization window applied."""
    if obs.depth is None:
        return None, obs.memory.scale_in_wanted_since
    group = obs.group
    observation = policy.Observation(
        visible=obs.depth.visible,
        in_flight=obs.depth.in_flight,
        delayed=obs.depth.delayed,
        current_desired=group.desired,
        busy_nodes=busy_count,
        group_min=group.min_size,
        group_max=group.max_size,
    )
    decision = policy.decide(observation, scaling_spec(spec), obs.memory.last_scale, obs.now)
    window = 0 if spec.mode is models.Mode.MANUAL else spec.autoscaling.scale_in_stabilization_seconds
    return policy.stabilize(decision, group.desired, obs.memory.scale_in_wanted_since, obs.now, window)


def plan(obs: Observation, new_token: Callable[[], str]) -> Plan:
    """The steps of this pass, in the order they must run. ``new_token`` makes drain tokens."""
    conflict = _conflict(obs)
    if conflict is not None:
        return Plan(steps=(), conflict=conflict, target=obs.memory.target)
    fleet = _fleet(obs)
    busy = busy_nodes(fleet, obs.now)
    if obs.deleting_since is not None:
        return _deletion_plan(obs, fleet, busy, new_token)

    # Releases of idle nodes' termination protection and annotations come early too: a node
    # about to be terminated must not carry DisableApiTermination (the termination would fail).
    steps: list[Step] = protection_steps(obs, busy, None) + release_steps(obs, busy, None)
    life_steps, holds, draining = _lifecycle(obs, fleet, new_token)
    steps += life_steps

    decision: policy.Decision | None = None
    since = obs.memory.scale_in_wanted_since
    refusal = "the group has a warm pool, which framescale does not manage" if obs.group.warm_pool else None
    target = obs.memory.target
    if obs.spec is not None and refusal is None:
        decision, since = _decide(obs, obs.spec, len(busy))
        if decision is not None:
            target = decision.desired
    steps += _withdraw_foreign(obs, fleet)
    victims: set[str] = set()
    if target is not None and refusal is None and obs.spec is not None:
        shed_steps, victims, shed_draining = _shed(obs, fleet, target, new_token)
        steps += shed_steps
        draining |= shed_draining
    else:
        # No target to work toward: keep no node fenced by an if-idle request of ours.
        steps += _withdraw_all(obs, fleet, "no scaling decision stands")
    steps += _admit(obs, fleet, victims, draining)
    if target is not None and refusal is None and obs.spec is not None and target > obs.group.desired:
        steps.append(SetDesiredCapacity(obs.group.name, target, obs.group.desired))
    return Plan(
        steps=tuple(steps),
        decision=decision,
        target=target,
        busy=busy,
        draining=tuple(sorted(draining)),
        holds=holds,
        scale_in_wanted_since=since,
        refusal=refusal,
        standby=tuple(
            sorted(n.instance.instance_id for n in fleet if n.instance.lifecycle_state.startswith("Standby"))
        ),
        unhealthy=tuple(sorted(n.instance.instance_id for n in fleet if not n.instance.healthy)),
    )


def _conflict(obs: Observation) -> str | None:
    own = obs.ownership
    if own.group_owner is not None and own.group_owner != obs.owner:
        return f"Auto Scaling group {obs.group.name} is owned by VideoPipeline {own.group_owner}"
    if own.queue_owner is not None and own.queue_owner != obs.owner:
        return f"the queue is owned by VideoPipeline {own.queue_owner}"
    return None


def _withdraw_all(obs: Observation, fleet: Sequence[_Node], why: str) -> list[Step]:
    return [
        WithdrawDrain(n.lease.record.namespace, n.lease.record.name, n.lease.record.node_name, why)
        for n in fleet
        if n.lease is not None
        and _ours(n.lease, obs.owner)
        and n.lease.record.drain_mode == DrainMode.IF_IDLE
        and n.instance.lifecycle_state != TERMINATING_WAIT
    ]


def _withdraw_foreign(obs: Observation, fleet: Sequence[_Node]) -> list[Step]:
    """Requests another pipeline left on nodes of a group this one owns (it was deleted, or lost
    the group): stale, withdrawn so that no node stays fenced."""
    return [
        WithdrawDrain(
            n.lease.record.namespace,
            n.lease.record.name,
            n.lease.record.node_name,
            f"stale request of {n.lease.record.drain_requested_by or 'an unknown requester'}",
        )
        for n in fleet
        if n.lease is not None
        and n.lease.record.drain_request is not None
        and not _ours(n.lease, obs.owner)
        and n.instance.lifecycle_state != TERMINATING_WAIT
    ]


def _candidate_order(n: _Node) -> tuple[int, float, str]:
    """Victims first: no worker or a dead one, then the live idle ones idle longest, unhealthy first."""
    live = n.live
    if live is None:
        return (0, 0.0, n.instance.instance_id)
    idle = live.idle_since if live.idle_since is not None else float("inf")
    return (1 if not n.instance.healthy else 2, idle, n.instance.instance_id)


def _shed(
    obs: Observation, fleet: Sequence[_Node], target: int, new_token: Callable[[], str]
) -> tuple[list[Step], set[str], set[str]]:
    """Move toward ``target`` nodes by the handshake: returns steps, victim instances, draining nodes."""
    steps: list[Step] = []
    victims: set[str] = set()
    draining: set[str] = set()
    excess = obs.group.desired - target
    active = [n for n in fleet if n.instance.in_service]
    # Capacity the group has not launched yet is given back at once: no instance goes with it
    # (never below the instances that exist, and every one of them is protected from scale-in).
    unlaunched = min(excess, obs.group.desired - len(active))
    if unlaunched > 0:
        steps.append(SetDesiredCapacity(obs.group.name, obs.group.desired - unlaunched, obs.group.desired))
        excess -= unlaunched
    pending: list[_Node] = []
    for n in sorted(active, key=lambda n: n.instance.instance_id):
        lease = n.lease
        if lease is None or not _ours(lease, obs.owner) or lease.record.drain_mode != DrainMode.IF_IDLE:
            continue
        record = lease.record
        token = record.drain_request or ""
        if excess <= 0:
            steps.append(WithdrawDrain(record.namespace, record.name, record.node_name, "the node is needed again"))
        elif record.refused(token) and lease.live:
            steps.append(WithdrawDrain(record.namespace, record.name, record.node_name, "its worker is busy"))
        elif not lease.live or record.drained_for(token):
            why = "its worker drained" if lease.live else "its worker's Lease is not renewed"
            steps.append(Terminate(n.instance.instance_id, n.node, why))
            victims.add(n.instance.instance_id)
            excess -= 1
        else:
            pending.append(n)
    for n in pending:
        if n.lease is None:
            continue
        record = n.lease.record
        if excess > 0:
            victims.add(n.instance.instance_id)
            draining.add(record.node_name)
            excess -= 1
        else:
            steps.append(WithdrawDrain(record.namespace, record.name, record.node_name, "the node is needed again"))
    if excess <= 0:
        return steps, victims, draining
    taken = {step.node for step in steps if isinstance(step, WithdrawDrain)}
    candidates = [
        n
        for n in active
        if n.instance.instance_id not in victims
        and not n.busy
        and (n.lease is None or n.lease.record.drain_request is None)
        and (n.node is None or n.node not in taken)
    ]
    for n in sorted(candidates, key=_candidate_order)[:excess]:
        victims.add(n.instance.instance_id)
        live = n.live
        if live is None:
            why = "no worker holds a live Lease on it" if n.lease is None else "its worker's Lease is not renewed"
            steps.append(Terminate(n.instance.instance_id, n.node, why))
        else:
            record = live.record
            steps.append(
                RequestDrain(
                    record.namespace, record.name, record.node_name, new_token(), DrainMode.IF_IDLE, "scale-in"
                )
            )
            draining.add(record.node_name)
    return steps, victims, draining


def _admit(obs: Observation, fleet: Sequence[_Node], victims: set[str], draining: set[str]) -> list[Step]:
    steps: list[Step] = []
    for n in fleet:
        live = n.live
        if live is None or n.instance.instance_id in victims or not n.instance.in_service:
            continue
        record = live.record
        if record.admitted_by == obs.owner or record.drain_request is not None or record.node_name in draining:
            continue
        if not n.instance.healthy:
            continue
        steps.append(Admit(record.namespace, record.name, record.node_name))
    return steps


def _deletion_plan(
    obs: Observation, fleet: Sequence[_Node], busy: tuple[protection.BusyNode, ...], new_token: Callable[[], str]
) -> Plan:
    """Drain every node in mode finish; release each once drained; keep busy ones until the bound."""
    steps: list[Step] = []
    keep: set[str] = set()
    draining: set[str] = set()
    since = obs.deleting_since or obs.now
    expired = obs.now >= since + timedelta(seconds=obs.limits.deletion_max_hold_seconds)
    life_steps, holds, life_draining = _lifecycle(obs, fleet, new_token)
    for n in fleet:
        if not n.instance.in_service:
            continue
        live = n.live
        if live is None:
            continue  # no job can start there: release it
        record = live.record
        mine = _ours(live, obs.owner) and record.drain_mode == DrainMode.FINISH
        if mine and record.drain_request and record.drained_for(record.drain_request):
            continue
        keep.add(n.instance.instance_id)
        draining.add(record.node_name)
        if not mine:
            steps.append(
                RequestDrain(
                    record.namespace,
                    record.name,
                    record.node_name,
                    new_token(),
                    DrainMode.FINISH,
                    "its VideoPipeline is being deleted",
                )
            )
    kept_busy = tuple(sorted(i for i in keep if any(n.instance.instance_id == i and n.busy for n in fleet)))
    if expired:
        # The bound: the finalizer goes. Busy nodes keep their protection rather than be exposed.
        keep = set(kept_busy)
        if kept_busy:
            steps.append(
                Event(
                    "Warning",
                    "DeletedWithBusyNodes",
                    f"still busy after {obs.limits.deletion_max_hold_seconds:.0f} s, left protected: "
                    + ", ".join(kept_busy),
                )
            )
    all_steps = protection_steps(obs, busy, keep) + life_steps + steps + release_steps(obs, busy, keep)
    return Plan(
        steps=tuple(all_steps),
        target=obs.memory.target,
        busy=busy,
        draining=tuple(sorted(draining | life_draining)),
        holds=holds,
        released=expired or not keep,
        kept=tuple(sorted(keep)),
    )
