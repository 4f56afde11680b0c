"""The plan, pure: the order of its steps is the crash-safety argument, checked over random worlds.

Each property is counted over hundreds of seeded random worlds (instances in every lifecycle
state, Leases live or dead, busy or idle, admitted or not, with requests and replies of this
pipeline and of others); zero violations is the only passing number.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from framescale import names
from framescale.busy_lease import DrainMode, DrainReply, DrainVerdict, LeaseRecord, WorkerState
from framescale_operator import models, plan
from framescale_operator.aws_actuators import GroupState, QueueDepth
from framescale_operator.protection import SCALE_IN_MARKER, GroupInstance, Markers, NodeRecord

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
OWNER = "jobs/detector"
WORLDS = 600
STATES = ["InService", "InService", "InService", "Pending", "Terminating:Wait", "Standby", "Terminating"]


def record(
    node: str,
    *,
    jobs: int = 0,
    state: WorkerState | None = WorkerState.IDLE,
    admitted_by: str | None = None,
    request: str | None = None,
    mode: DrainMode = DrainMode.IF_IDLE,
    requested_by: str | None = None,
    reply: DrainReply | None = None,
) -> LeaseRecord:
    return LeaseRecord(
        name=f"framescale-busy-{node}",
        namespace="jobs",
        node_name=node,
        pipeline="detector",
        holder=f"w-{node}",
        duration_seconds=30,
        renew_time="2026-01-01T12:00:00.000000Z",
        active_jobs=jobs,
        state=state,
        admitted_by=admitted_by,
        drain_request=request,
        drain_mode=mode,
        drain_requested_by=requested_by,
        drain_reply=reply,
    )


def spec(replicas: int | None = None, **autoscaling: Any) -> models.VideoPipelineSpec:
    return models.parse_spec(
        {
            "queueUrl": "https://sqs.us-east-1.amazonaws.com/1/jobs",
            "nodeGroup": {"autoScalingGroupName": "g"},
            **({"mode": "Manual", "replicas": replicas} if replicas is not None else {}),
            "autoscaling": {"targetBacklogPerReplica": 1, "scaleInStabilizationSeconds": 0, **autoscaling},
        }
    )


def random_world(rng: random.Random) -> plan.Observation:
    count = rng.randint(0, 6)
    instances, nodes, leases, markers = [], {}, [], {}
    for index in range(count):
        instance_id = f"i-{index:017x}"
        instances.append(
            GroupInstance(
                instance_id,
                rng.choice(STATES),
                rng.random() < 0.5,
                health_status="Healthy" if rng.random() < 0.85 else "Unhealthy",
            )
        )
        if rng.random() < 0.5:
            markers[instance_id] = Markers(scale_in=rng.choice([OWNER, "jobs/other", None]))
        if rng.random() < 0.15:
            continue  # no Node yet
        node = f"n{index}"
        nodes[node] = NodeRecord(name=node, provider_id=f"aws:///us-east-1a/{instance_id}")
        if rng.random() < 0.2:
            continue  # no Lease
        jobs = rng.choice([0, 0, 1, 2])
        token = rng.choice([None, "tok", "old"])
        reply_token = rng.choice([token, "old", "zzz"]) if token else rng.choice([None, "zzz"])
        reply = DrainReply(reply_token, rng.choice(list(DrainVerdict))) if reply_token and rng.random() < 0.7 else None
        state = rng.choice([WorkerState.IDLE, WorkerState.BUSY, WorkerState.DRAINED, WorkerState.STARTING, None])
        leases.append(
            plan.NodeLease(
                record=record(
                    node,
                    jobs=jobs,
                    state=state,
                    admitted_by=rng.choice([None, OWNER, "jobs/other"]),
                    request=token,
                    mode=rng.choice(list(DrainMode)),
                    requested_by=rng.choice([OWNER, OWNER, "jobs/other"]) if token else None,
                    reply=reply,
                ),
                live=rng.random() < 0.8,
                idle_since=rng.choice([None, rng.uniform(0, 100)]),
                expires_in=rng.uniform(0, 30),
            )
        )
    desired = rng.randint(0, 8)
    pinned = rng.choice([None, None, rng.randint(0, 6)])
    deleting = NOW - timedelta(seconds=rng.choice([1, 7200])) if rng.random() < 0.15 else None
    return plan.Observation(
        owner=OWNER,
        pipeline="detector",
        spec=spec(pinned, scaleInCooldownSeconds=0) if rng.random() < 0.95 else None,
        group=GroupState(
            name="g",
            desired=desired,
            min_size=0,
            max_size=10,
            instances=tuple(instances),
            new_instances_protected=rng.random() < 0.7,
            warm_pool=rng.random() < 0.05,
        ),
        depth=QueueDepth(rng.randint(0, 8), rng.randint(0, 3), rng.randint(0, 2)) if rng.random() < 0.8 else None,
        leases=tuple(leases),
        nodes=nodes,
        termination_protected={i.instance_id: rng.random() < 0.5 for i in instances},
        markers=markers,
        now=NOW,
        ownership=plan.Ownership(
            group_owner=rng.choice([None, OWNER, OWNER, "jobs/older"]), queue_owner=rng.choice([None, OWNER])
        ),
        memory=plan.Memory(
            target=rng.choice([None, rng.randint(0, 6)]),
            holds={
                i.instance_id: plan.Hold(NOW - timedelta(seconds=rng.choice([0, 100, 7200])))
                for i in instances
                if i.lifecycle_state == "Terminating:Wait" and rng.random() < 0.5
            },
        ),
        deleting_since=deleting,
    )


def counter() -> Callable[[], str]:
    numbers = iter(range(1_000_000))
    return lambda: f"new{next(numbers)}"


def lease_of(obs: plan.Observation, instance_id: str) -> plan.NodeLease | None:
    node = next((n for n, r in obs.nodes.items() if r.instance_id == instance_id), None)
    return next((lease for lease in obs.leases if lease.record.node_name == node), None) if node else None


def violations(obs: plan.Observation, result: plan.Plan) -> list[str]:
    """Every broken invariant of one plan, in words."""
    found: list[str] = []
    steps = result.steps
    index = {id(step): n for n, step in enumerate(steps)}
    terminates = [s for s in steps if isinstance(s, plan.Terminate)]
    drains = [s for s in steps if isinstance(s, plan.RequestDrain)]
    drained_now = {s.node for s in drains}
    if result.conflict is not None and steps:
        found.append("a pipeline that does not own its group or queue acted")
    for step in terminates:
        lease = lease_of(obs, step.instance_id)
        instance = next(i for i in obs.group.instances if i.instance_id == step.instance_id)
        if not instance.in_service:
            found.append(f"terminated {step.instance_id} in state {instance.lifecycle_state}")
        if lease is not None and lease.live:
            rec = lease.record
            ok = rec.drain_requested_by == OWNER and rec.drain_request and rec.drained_for(rec.drain_request)
            if not ok:
                found.append(f"terminated {step.instance_id} whose live Lease did not say drained for our token")
            if rec.busy:
                found.append(f"terminated busy {step.instance_id}")
            if rec.node_name in drained_now:
                found.append(f"terminated {step.instance_id} in the pass that asked it to drain")
        if not step.decrement:
            found.append("a termination that does not lower the desired capacity")
    # Protection precedes every step that could take capacity or start a drain.
    first_risky = min(
        (index[id(s)] for s in steps if isinstance(s, plan.Terminate | plan.RequestDrain | plan.SetDesiredCapacity)),
        default=len(steps),
    )
    if obs.deleting_since is None and result.conflict is None:
        unprotected = {i.instance_id for i in obs.group.instances if i.in_service and not i.protected_from_scale_in}
        protected_before = {
            instance_id
            for s in steps[:first_risky]
            if isinstance(s, plan.SetScaleInProtection) and s.protected
            for instance_id in s.instance_ids
        }
        if unprotected - protected_before:
            found.append(f"{sorted(unprotected - protected_before)} not protected before the first risky step")
        if not obs.group.new_instances_protected and not any(
            isinstance(s, plan.ProtectNewInstances) for s in steps[:first_risky]
        ):
            found.append("the group's NewInstancesProtectedFromScaleIn not set before the first risky step")
    for step in steps:
        if isinstance(step, plan.SetDesiredCapacity):
            active = sum(1 for i in obs.group.instances if i.in_service)
            if step.desired < step.previous and step.desired < active:
                found.append(f"SetDesiredCapacity {step.desired} below the {active} instances: AWS would choose")
            if obs.deleting_since is not None:
                found.append("a deleting pipeline resized the group")
        if isinstance(step, plan.SetScaleInProtection) and not step.protected:
            if obs.deleting_since is None:
                found.append("scale-in protection released while the group is managed")
            for instance_id in step.instance_ids:
                lease = lease_of(obs, instance_id)
                if lease is not None and lease.live and lease.record.busy:
                    found.append(f"scale-in protection of busy {instance_id} released")
        if isinstance(step, plan.SetTerminationProtection) and not step.enabled:
            lease = lease_of(obs, step.instance_id)
            if lease is not None and lease.live and lease.record.busy:
                found.append(f"termination protection of busy {step.instance_id} released")
        if isinstance(step, plan.Admit):
            victims = {s.node for s in drains} | {s.node for s in terminates}
            if step.node in victims:
                found.append(f"admitted {step.node}, which it is removing")
            lease = next(lease for lease in obs.leases if lease.record.node_name == step.node)
            if lease.record.drain_request is not None or not lease.live:
                found.append(f"admitted {step.node} with a standing request or no live Lease")
        if isinstance(step, plan.CompleteLifecycle):
            instance = next(i for i in obs.group.instances if i.instance_id == step.instance_id)
            if instance.lifecycle_state != "Terminating:Wait":
                found.append(f"completed a lifecycle action of {step.instance_id} in {instance.lifecycle_state}")
            lease = lease_of(obs, step.instance_id)
            hold = obs.memory.holds.get(step.instance_id)
            overdue = hold is not None and NOW - hold.since >= timedelta(seconds=obs.limits.lifecycle_max_hold_seconds)
            if lease is not None and lease.live and not overdue:
                rec = lease.record
                if not (rec.drain_requested_by == OWNER and rec.drain_request and rec.drained_for(rec.drain_request)):
                    found.append(f"let the held termination of {step.instance_id} go before it drained")
        if isinstance(step, plan.RequestDrain):
            lease = next(lease for lease in obs.leases if lease.record.node_name == step.node)
            if not lease.live:
                found.append(f"asked {step.node} to drain without a live Lease")
    if obs.deleting_since is not None and terminates:
        found.append("a deleting pipeline terminated an instance")
    return found


def test_no_plan_of_any_random_world_breaks_an_invariant() -> None:
    rng = random.Random(20261202)
    broken: list[str] = []
    kinds: set[str] = set()
    for _ in range(WORLDS):
        obs = random_world(rng)
        result = plan.plan(obs, counter())
        kinds.update(type(step).__name__ for step in result.steps)
        broken.extend(violations(obs, result))
    assert broken == []
    # The worlds are varied enough to reach every kind of step the invariants speak of.
    assert {"Terminate", "RequestDrain", "WithdrawDrain", "Admit", "SetDesiredCapacity", "CompleteLifecycle"} <= kinds
    assert {"HeartbeatLifecycle", "SetScaleInProtection", "ProtectNewInstances"} <= kinds


def test_the_invariants_catch_a_plan_that_terminates_a_busy_node() -> None:
    """The checker itself can fail: a hand-made plan that breaks the rules is reported."""
    obs = plan.Observation(
        owner=OWNER,
        pipeline="detector",
        spec=spec(1),
        group=GroupState("g", 2, 0, 10, (GroupInstance("i-00000000000000000", "InService", False),)),
        depth=QueueDepth(0, 0),
        leases=(plan.NodeLease(record("n0", jobs=1, state=WorkerState.BUSY), live=True),),
        nodes={"n0": NodeRecord("n0", "aws:///us-east-1a/i-00000000000000000")},
        termination_protected={},
        markers={},
        now=NOW,
    )
    bad = plan.Plan(steps=(plan.Terminate("i-00000000000000000", "n0", "why not"),))
    found = violations(obs, bad)
    assert any("busy" in problem for problem in found)
    assert any("not protected before" in problem for problem in found)


# ---------------------------------------------------------------------------- table cases

A, B, C = "i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c"


def observation(
    *,
    instances: list[GroupInstance],
    leases: list[plan.NodeLease],
    desired: int,
    pinned: int | None = None,
    visible: int = 0,
    **extra: Any,
) -> plan.Observation:
    nodes = {
        f"n{i.instance_id[-1]}": NodeRecord(f"n{i.instance_id[-1]}", f"aws:///z/{i.instance_id}") for i in instances
    }
    return plan.Observation(
        owner=OWNER,
        pipeline="detector",
        spec=spec(pinned),
        group=GroupState("g", desired, 0, 10, tuple(instances)),
        depth=QueueDepth(visible, 0),
        leases=tuple(leases),
        nodes=nodes,
        termination_protected={},
        markers={i.instance_id: Markers(scale_in=OWNER) for i in instances},
        now=NOW,
        **extra,
    )


def live(node: str, **fields: Any) -> plan.NodeLease:
    idle_since = fields.pop("idle_since", None)
    return plan.NodeLease(record(node, **fields), live=True, idle_since=idle_since)


def test_victims_are_the_workerless_first_then_the_idle_longest() -> None:
    obs = observation(
        instances=[GroupInstance(i, "InService", True) for i in (A, B, C)],
        leases=[live("na", admitted_by=OWNER, idle_since=50.0), live("nb", admitted_by=OWNER, idle_since=10.0)],
        desired=3,
        pinned=1,
    )
    result = plan.plan(obs, counter())
    assert result.of_type(plan.Terminate) == [plan.Terminate(C, "nc", "no worker holds a live Lease on it")]
    (drain,) = result.of_type(plan.RequestDrain)
    assert (drain.node, drain.mode, drain.token) == ("nb", DrainMode.IF_IDLE, "new0")  # idle since 10 s: longest
    assert result.draining == ("nb",)


def test_busy_nodes_are_never_asked_and_the_plan_waits() -> None:
    obs = observation(
        instances=[GroupInstance(i, "InService", True) for i in (A, B)],
        leases=[live("na", jobs=1, state=WorkerState.BUSY, admitted_by=OWNER), live("nb", jobs=2, admitted_by=OWNER)],
        desired=2,
        pinned=0,
    )
    result = plan.plan(obs, counter())
    assert result.of_type(plan.Terminate) == result.of_type(plan.RequestDrain) == []


def test_a_drained_reply_for_another_token_is_not_a_drain() -> None:
    stale = DrainReply("old", DrainVerdict.DRAINED)
    obs = observation(
        instances=[GroupInstance(A, "InService", True)],
        leases=[live("na", state=WorkerState.DRAINED, request="tok", requested_by=OWNER, reply=stale)],
        desired=1,
        pinned=0,
    )
    result = plan.plan(obs, counter())
    assert result.of_type(plan.Terminate) == []
    assert result.draining == ("na",)


def test_a_drained_reply_for_our_token_terminates() -> None:
    obs = observation(
        instances=[GroupInstance(A, "InService", True)],
        leases=[
            live(
                "na",
                state=WorkerState.DRAINED,
                request="tok",
                requested_by=OWNER,
                reply=DrainReply("tok", DrainVerdict.DRAINED),
            )
        ],
        desired=1,
        pinned=0,
    )
    assert plan.plan(obs, counter()).of_type(plan.Terminate) == [plan.Terminate(A, "na", "its worker drained")]


def test_capacity_not_launched_yet_is_given_back_without_a_victim() -> None:
    obs = observation(instances=[GroupInstance(A, "InService", True)], leases=[], desired=4, pinned=2)
    result = plan.plan(obs, counter())
    assert result.of_type(plan.SetDesiredCapacity) == [plan.SetDesiredCapacity("g", 2, 4)]
    assert result.of_type(plan.Terminate) == []


def test_standby_and_unhealthy_instances() -> None:
    obs = observation(
        instances=[
            GroupInstance(A, "Standby", True),
            GroupInstance(B, "InService", True, health_status="Unhealthy"),
        ],
        leases=[live("na"), live("nb")],
        desired=1,
        visible=1,
    )
    result = plan.plan(obs, counter())
    assert result.of_type(plan.Admit) == []  # neither is admitted
    assert (result.standby, result.unhealthy) == ((A,), (B,))


def test_a_warm_pool_is_refused() -> None:
    obs = observation(instances=[], leases=[], desired=0, visible=5)
    obs = plan.Observation(**{**obs.__dict__, "group": GroupState("g", 0, 0, 10, (), warm_pool=True)})
    result = plan.plan(obs, counter())
    assert result.refusal and result.of_type(plan.SetDesiredCapacity) == []


@pytest.mark.parametrize(
    ("claims", "group_owner"),
    [
        (
            [
                plan.Claim("b/x", "2026-01-01T00:00:01Z", "g", "q1"),
                plan.Claim("a/y", "2026-01-01T00:00:02Z", "g", "q2"),
            ],
            "b/x",
        ),
        (
            [
                plan.Claim("b/x", "2026-01-01T00:00:01Z", "g", "q1"),
                plan.Claim("a/y", "2026-01-01T00:00:01Z", "g", "q2"),
            ],
            "a/y",
        ),
        ([plan.Claim("b/x", "2026-01-01T00:00:01Z", "h", "q1")], None),
    ],
)
def test_the_oldest_claim_owns_then_namespace_and_name(claims: list[plan.Claim], group_owner: str | None) -> None:
    assert plan.owner_of(claims, group="g") == group_owner


def test_owner_of_a_queue() -> None:
    claims = [
        plan.Claim("b/x", "2026-01-01T00:00:02Z", "g1", "q"),
        plan.Claim("a/y", "2026-01-01T00:00:01Z", "g2", "q"),
    ]
    assert plan.owner_of(claims, queue="q") == "a/y"
    assert plan.owner_of(claims, queue="other") is None


def test_a_new_group_is_adopted_before_anything_else() -> None:
    obs = observation(instances=[GroupInstance(A, "InService", False)], leases=[], desired=1, visible=5)
    obs = plan.Observation(
        **{**obs.__dict__, "group": GroupState("g", 1, 0, 10, obs.group.instances, new_instances_protected=False)}
    )
    steps = plan.plan(obs, counter()).steps
    assert steps[0] == plan.ProtectNewInstances("g")
    assert steps[1] == plan.SetScaleInProtection("g", (A,), True)
    assert names.LEASE_DRAIN_REQUEST_ANNOTATION  # (the contract's keys live in framescale.names)
    assert SCALE_IN_MARKER
