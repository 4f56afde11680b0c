"""The plan's details as exact values: each step's text, each branch's steps and reasons, the boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from framescale.busy_lease import DrainMode, DrainReply, DrainVerdict, LeaseRecord, WorkerState
from framescale_operator import models, plan, protection
from framescale_operator.aws_actuators import GroupState, QueueDepth
from framescale_operator.protection import GroupInstance, Markers, NodeRecord

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
OWNER = "jobs/detector"
A, B, C = "i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c"
HOOK = "hook-x"


def rec(node: str, **fields: Any) -> LeaseRecord:
    values: dict[str, Any] = {
        "name": f"l-{node}",
        "namespace": "ns",
        "node_name": node,
        "pipeline": "detector",
        "holder": "w",
        "duration_seconds": 30,
        "renew_time": "t",
        "active_jobs": 0,
        "state": WorkerState.IDLE,
        "admitted_by": OWNER,
        "drain_request": None,
        "drain_mode": DrainMode.IF_IDLE,
        "drain_requested_by": None,
        "drain_reply": None,
    }
    values.update(fields)
    return LeaseRecord(**values)


def lease(node: str, live: bool = True, idle_since: float | None = None, expires_in: float | None = None, **f: Any):
    return plan.NodeLease(rec(node, **f), live=live, idle_since=idle_since, expires_in=expires_in)


def ours(
    token: str = "tok", mode: DrainMode = DrainMode.IF_IDLE, reply: DrainVerdict | None = None, **f: Any
) -> dict[str, Any]:
    extra: dict[str, Any] = {"drain_request": token, "drain_mode": mode, "drain_requested_by": OWNER}
    if reply is not None:
        extra["drain_reply"] = DrainReply(token, reply)
        if reply is DrainVerdict.DRAINED:
            extra["state"] = WorkerState.DRAINED
    return {**extra, **f}


def inst(instance_id: str, state: str = "InService", protected: bool = True, health: str = "Healthy"):
    return GroupInstance(instance_id, state, protected, health_status=health)


def world(
    instances: list[GroupInstance],
    leases: list[plan.NodeLease] = (),  # type: ignore[assignment]
    *,
    desired: int | None = None,
    spec: models.VideoPipelineSpec | None = None,
    depth: QueueDepth | None = None,
    markers: dict[str, Markers] | None = None,
    group: dict[str, Any] | None = None,
    **extra: Any,
) -> plan.Observation:
    nodes = {
        f"n{i.instance_id[-1]}": NodeRecord(f"n{i.instance_id[-1]}", f"aws:///z/{i.instance_id}") for i in instances
    }
    nodes.update(extra.pop("nodes", {}))
    return plan.Observation(
        owner=OWNER,
        pipeline="detector",
        spec=spec,
        group=GroupState("g", len(instances) if desired is None else desired, 0, 10, tuple(instances), **(group or {})),
        depth=depth,
        leases=tuple(leases),
        nodes=nodes,
        termination_protected=extra.pop("termination_protected", {}),
        markers={i.instance_id: Markers(scale_in=OWNER) for i in instances} if markers is None else markers,
        now=NOW,
        limits=extra.pop("limits", plan.Limits(lifecycle_hook=HOOK)),
        **extra,
    )


def pinned(replicas: int) -> models.VideoPipelineSpec:
    return models.parse_spec(
        {
            "queueUrl": "https://sqs.us-east-1.amazonaws.com/1/jobs",
            "nodeGroup": {"autoScalingGroupName": "g"},
            "mode": "Manual",
            "replicas": replicas,
            "autoscaling": {"scaleInStabilizationSeconds": 100},
        }
    )


def auto(**autoscaling: Any) -> models.VideoPipelineSpec:
    return models.parse_spec(
        {
            "queueUrl": "https://sqs.us-east-1.amazonaws.com/1/jobs",
            "nodeGroup": {"autoScalingGroupName": "g"},
            "autoscaling": {"targetBacklogPerReplica": 1, "scaleInStabilizationSeconds": 0, **autoscaling},
        }
    )


def tokens():
    numbers = iter(range(100))
    return lambda: f"new{next(numbers)}"


# ---------------------------------------------------------------------------- texts and defaults


@pytest.mark.parametrize(
    ("step", "text"),
    [
        (plan.ProtectNewInstances("g"), "group g launches new instances protected from scale-in"),
        (plan.MarkInstance("i-1", "k"), "instance i-1 marked k"),
        (plan.SetScaleInProtection("g", ("i-1", "i-2"), True), "instance(s) i-1, i-2 protected from scale-in"),
        (plan.SetScaleInProtection("g", ("i-1",), False), "instance(s) i-1 released for scale-in"),
        (plan.SetTerminationProtection("i-1", True), "instance i-1 termination protection on"),
        (plan.SetTerminationProtection("i-1", False), "instance i-1 termination protection off"),
        (plan.UnmarkInstance("i-1", "k"), "instance i-1 unmarked k"),
        (plan.AnnotateNode("n1", True), "node n1 annotated"),
        (plan.AnnotateNode("n1", False), "node n1 annotations removed"),
        (
            plan.RequestDrain("ns", "l", "n1", "t", DrainMode.FINISH, "why"),
            "node n1 asked to drain (finish, token t): why",
        ),
        (plan.WithdrawDrain("ns", "l", "n1", "why"), "drain request of node n1 withdrawn: why"),
        (plan.Admit("ns", "l", "n1"), "node n1 admitted"),
        (plan.Terminate("i-1", "n1", "why"), "instance i-1 (node n1) terminated: why"),
        (plan.Terminate("i-1", None, "why"), "instance i-1 (node ?) terminated: why"),
        (plan.SetDesiredCapacity("g", 3, 1), "desired capacity 1 -> 3"),
        (plan.HeartbeatLifecycle("g", "h", "i-1"), "held termination of i-1 kept alive (lifecycle heartbeat)"),
        (plan.CompleteLifecycle("g", "h", "i-1", "why"), "held termination of i-1 completed (CONTINUE): why"),
        (plan.Event("Warning", "R", "m"), "R: m"),
    ],
)
def test_each_step_says_what_it_does(step: plan.Step, text: str) -> None:
    assert step.describe() == text


def test_defaults() -> None:
    with pytest.raises(NotImplementedError):
        plan.Step().describe()
    assert plan.Terminate("i", None, "w").decrement is True
    assert plan.CompleteLifecycle("g", "h", "i", "w").result == "CONTINUE"
    assert plan.Limits() == plan.Limits("framescale-drain", 3600.0, 60.0, 3600.0)
    assert plan.Memory() == plan.Memory(None, None, None, {})
    assert plan.Ownership() == plan.Ownership(None, None)
    assert plan.Hold(NOW).last_heartbeat is None
    assert plan.Plan(()) == plan.Plan((), None, None, (), (), {}, None, None, None, (), (), True, ())
    assert plan.TERMINATING_WAIT == "Terminating:Wait"
    obs = world([])
    assert (obs.ownership, obs.memory, obs.deleting_since) == (plan.Ownership(), plan.Memory(), None)
    assert plan.Observation(**{**obs.__dict__, "limits": plan.Limits()}).limits == plan.Limits()
    nl = plan.NodeLease(rec("n"), live=True)
    assert (nl.idle_since, nl.expires_in) == (None, None)


def test_owner_of_needs_a_group_or_a_queue() -> None:
    claims = [plan.Claim("a/x", "1", "g", "q")]
    assert plan.owner_of(claims) is None
    assert plan.owner_of(claims, group="g", queue="other") == "a/x"
    assert plan.owner_of(claims, group="other", queue="q") == "a/x"


def test_scaling_spec_carries_every_field() -> None:
    spec = auto(
        minReplicas=1,
        maxReplicas=7,
        targetBacklogPerReplica=3,
        activationBacklog=2,
        scaleOutCooldownSeconds=11,
        scaleInCooldownSeconds=13,
    )
    from framescale_operator import policy

    assert plan.scaling_spec(spec) == policy.ScalingSpec(None, 1, 7, 3, 2, 11, 13)
    assert plan.scaling_spec(pinned(4)).replicas == 4


# ---------------------------------------------------------------------------- the fleet


def test_fleet_nodes_and_leases() -> None:
    foreign = plan.NodeLease(rec("nb", pipeline="other"), live=True)
    unnamed = plan.NodeLease(rec("nc", pipeline=None), live=True)
    obs = world([inst(A), inst(B), inst(C)], [foreign, unnamed], nodes={"x": NodeRecord("x", None)})
    fleet = plan._fleet(obs)
    assert [(n.instance.instance_id, n.node, n.lease) for n in fleet] == [
        (A, "na", None),
        (B, "nb", None),
        (C, "nc", unnamed),
    ]
    obs = world([inst(A)], [lease("na")], nodes={"na": NodeRecord("na", None)})
    assert [(n.node, n.lease) for n in plan._fleet(obs)] == [(None, None)]


def test_node_live_and_busy() -> None:
    i = inst(A)
    assert plan._Node(i, "na", None).live is None
    dead = lease("na", live=False, active_jobs=1)
    assert plan._Node(i, "na", dead).live is None and not plan._Node(i, "na", dead).busy
    busy = lease("na", active_jobs=1)
    assert plan._Node(i, "na", busy).live is busy and plan._Node(i, "na", busy).busy
    assert not plan._Node(i, "na", lease("na")).busy
    assert not plan._ours(None, OWNER)
    assert not plan._ours(lease("na", drain_requested_by=OWNER), OWNER)
    assert not plan._ours(lease("na", drain_request="t", drain_requested_by="x/y"), OWNER)
    assert plan._ours(lease("na", **ours()), OWNER)


def test_expiry_and_busy_nodes() -> None:
    assert plan._expiry(None, NOW) is None
    assert plan._expiry(lease("n"), NOW) is None
    assert plan._expiry(lease("n", expires_in=5.0), NOW) == NOW + timedelta(seconds=5)
    obs = world(
        [inst(C), inst(A, "Terminating:Wait"), inst(B)],
        [
            lease("nc", active_jobs=2, expires_in=3.0),
            lease("na", state=WorkerState.BUSY),
            lease("nb", live=False, active_jobs=1),
        ],
    )
    assert plan.busy_nodes(plan._fleet(obs), NOW) == (
        protection.BusyNode("na", None, None, 0),
        protection.BusyNode("nc", C, NOW + timedelta(seconds=3), 2),
    )


# ---------------------------------------------------------------------------- protection


def test_protection_steps_in_order() -> None:
    obs = world(
        [inst(A, protected=False), inst(B)],
        [lease("nb", active_jobs=1)],
        markers={},
        group={"new_instances_protected": False},
    )
    busy = plan.busy_nodes(plan._fleet(obs), NOW)
    S, T = protection.SCALE_IN_MARKER, protection.TERMINATION_MARKER
    assert plan.protection_steps(obs, busy, None) == [
        plan.ProtectNewInstances("g"),
        plan.MarkInstance(A, S),
        plan.MarkInstance(B, S),
        plan.SetScaleInProtection("g", (A,), True),
        plan.MarkInstance(B, T),
        plan.SetTerminationProtection(B, True),
        plan.AnnotateNode("nb", True),
    ]
    assert plan.ProtectNewInstances("g") not in plan.protection_steps(obs, busy, set())
    assert plan.protection_steps(world([inst(A)]), (), None) == []


def test_release_steps_in_order() -> None:
    annotated = NodeRecord("nc", "aws:///z/" + C, annotations={protection.PROTECTED_BY_ANNOTATION: OWNER})
    obs = world(
        [inst(A), inst(B, protected=False), inst(C)],
        markers={A: Markers(OWNER, OWNER), B: Markers(OWNER, None), C: Markers(None, OWNER)},
        nodes={"nc": annotated},
    )
    S, T = protection.SCALE_IN_MARKER, protection.TERMINATION_MARKER
    assert plan.release_steps(obs, (), set()) == [
        plan.SetTerminationProtection(A, False),
        plan.UnmarkInstance(A, T),
        plan.SetTerminationProtection(C, False),
        plan.UnmarkInstance(C, T),
        plan.SetScaleInProtection("g", (A,), False),
        plan.UnmarkInstance(A, S),
        plan.UnmarkInstance(B, S),
        plan.AnnotateNode("nc", False),
    ]
    assert plan.release_steps(world([inst(A)]), (), None) == []


# ---------------------------------------------------------------------------- held terminations


def held(leases: list[plan.NodeLease], holds: dict[str, plan.Hold] | None = None, **extra: Any):
    obs = world([inst(A, "Terminating:Wait"), inst(B)], leases, memory=plan.Memory(holds=holds or {}), **extra)
    return plan._lifecycle(obs, plan._fleet(obs), tokens())


def complete(why: str) -> plan.CompleteLifecycle:
    return plan.CompleteLifecycle("g", HOOK, A, why)


def test_a_held_termination_without_a_live_worker_goes() -> None:
    assert held([]) == ([complete("no live worker on it")], {}, set())
    assert held([lease("na", live=False)]) == ([complete("no live worker on it")], {}, set())


@pytest.mark.parametrize("mode", list(DrainMode))
def test_a_held_termination_drained_for_our_request_goes(mode: DrainMode) -> None:
    assert held([lease("na", **ours(mode=mode, reply=DrainVerdict.DRAINED))]) == (
        [complete("its worker drained")],
        {},
        set(),
    )


def test_a_held_termination_is_asked_to_finish_and_remembered() -> None:
    ask = plan.RequestDrain("ns", "l-na", "na", "new0", DrainMode.FINISH, "its instance is being terminated")
    assert held([lease("na")]) == ([ask], {A: plan.Hold(NOW)}, {"na"})
    # drained for another pipeline's request, or our if-idle request still open: asked anew
    other: dict[str, Any] = {
        "drain_request": "t",
        "drain_requested_by": "x/y",
        "drain_reply": DrainReply("t", DrainVerdict.DRAINED),
    }
    assert held([lease("na", state=WorkerState.DRAINED, **other)])[0] == [ask]
    assert held([lease("na", **ours())])[0] == [ask]
    # ours in mode finish: not asked again
    assert held([lease("na", **ours(mode=DrainMode.FINISH))]) == ([], {A: plan.Hold(NOW)}, {"na"})


@pytest.mark.parametrize(
    ("since", "last", "beat"),
    [(60, None, True), (59, None, False), (100, 60, True), (100, 59, False)],
)
def test_lifecycle_heartbeat_boundary(since: int, last: int | None, beat: bool) -> None:
    hold = plan.Hold(NOW - timedelta(seconds=since), None if last is None else NOW - timedelta(seconds=last))
    steps, holds, draining = held([lease("na", **ours(mode=DrainMode.FINISH))], {A: hold})
    if beat:
        assert steps == [plan.HeartbeatLifecycle("g", HOOK, A)]
        assert holds == {A: plan.Hold(hold.since, NOW)}
    else:
        assert (steps, holds) == ([], {A: hold})
    assert draining == {"na"}


def test_lifecycle_max_hold_boundary() -> None:
    limits = plan.Limits(lifecycle_hook=HOOK, lifecycle_max_hold_seconds=100.4)
    why = "still busy after the maximum hold of 100 s"
    late = held(
        [lease("na", **ours(mode=DrainMode.FINISH))], {A: plan.Hold(NOW - timedelta(seconds=100.4))}, limits=limits
    )
    assert late == (
        [complete(why), plan.Event("Warning", "LifecycleHoldExpired", f"instance {A} (node na) {why}")],
        {},
        set(),
    )
    early = held(
        [lease("na", **ours(mode=DrainMode.FINISH))], {A: plan.Hold(NOW - timedelta(seconds=100))}, limits=limits
    )
    assert early[0] == [plan.HeartbeatLifecycle("g", HOOK, A)]


# ---------------------------------------------------------------------------- decisions


def desired(obs: plan.Observation, spec: models.VideoPipelineSpec, busy: int = 0) -> int:
    decision, _ = plan._decide(obs, spec, busy)
    assert decision is not None
    return decision.desired


def test_decide_reads_every_part_of_the_observation() -> None:
    since = NOW - timedelta(seconds=5)
    obs = world([], desired=2, depth=None, memory=plan.Memory(scale_in_wanted_since=since))
    assert plan._decide(obs, auto(), 0) == (None, since)
    d, _ = plan._decide(world([], desired=2, depth=QueueDepth(3, 2, 1)), auto(), 0)
    assert d is not None
    assert (d.desired, d.message) == (6, "backlog 6 (2 in flight) at 1 per node: scaling out 2 -> 6")
    capped = plan.Observation(
        **{**world([], desired=2).__dict__, "group": GroupState("g", 2, 3, 4, ()), "depth": QueueDepth(9, 0)}
    )
    assert desired(capped, auto()) == 4
    low = plan.Observation(**{**capped.__dict__, "group": GroupState("g", 5, 3, 9, ()), "depth": QueueDepth(0, 0)})
    assert desired(low, auto()) == 3
    assert desired(low, auto(), 4) == 4  # busy floor
    from framescale_operator import policy

    recent = policy.LastScale(NOW - timedelta(seconds=10), policy.ScaleDirection.OUT)
    cool = world([], desired=2, depth=QueueDepth(5, 0), memory=plan.Memory(last_scale=recent))
    assert desired(cool, auto(scaleOutCooldownSeconds=60)) == 2


def test_decide_holds_a_scale_in_for_the_window_but_not_when_pinned() -> None:
    since = NOW - timedelta(seconds=40)
    obs = world([], desired=3, depth=QueueDepth(0, 0), memory=plan.Memory(scale_in_wanted_since=since))
    d, new_since = plan._decide(obs, auto(scaleInStabilizationSeconds=100), 0)
    assert d is not None
    assert (d.desired, d.hold_until, new_since) == (3, since + timedelta(seconds=100), since)
    d, new_since = plan._decide(obs, pinned(1), 0)
    assert d is not None
    assert (d.desired, new_since) == (1, since)


# ---------------------------------------------------------------------------- whole plans


def test_a_conflict_plans_nothing() -> None:
    obs = world([inst(A)], memory=plan.Memory(target=3), ownership=plan.Ownership(group_owner="x/old"))
    assert plan.plan(obs, tokens()) == plan.Plan(
        steps=(), conflict="Auto Scaling group g is owned by VideoPipeline x/old", target=3
    )
    obs = world([inst(A)], ownership=plan.Ownership(queue_owner="x/q"))
    assert plan.plan(obs, tokens()).conflict == "the queue is owned by VideoPipeline x/q"
    obs = world([inst(A)], ownership=plan.Ownership(OWNER, OWNER), spec=auto(), depth=QueueDepth(0, 0))
    assert plan.plan(obs, tokens()).conflict is None


@pytest.mark.parametrize("case", ["warm", "nospec"])
def test_without_a_decision_requests_of_ours_are_withdrawn(case: str) -> None:
    leases = [lease("na", **ours()), lease("nb", **ours(mode=DrainMode.FINISH))]
    obs = world(
        [inst(A), inst(B), inst(C, "Terminating:Wait")],
        [*leases, lease("nc", **ours())],
        spec=None if case == "nospec" else auto(),
        depth=QueueDepth(5, 0),
        memory=plan.Memory(target=1),
        group={"warm_pool": case == "warm"},
    )
    result = plan.plan(obs, tokens())
    assert result.of_type(plan.WithdrawDrain) == [plan.WithdrawDrain("ns", "l-na", "na", "no scaling decision stands")]
    assert (result.decision, result.target) == (None, 1)
    warm = "the group has a warm pool, which framescale does not manage"
    assert result.refusal == (warm if case == "warm" else None)
    assert result.of_type(plan.SetDesiredCapacity) == result.of_type(plan.Terminate) == []


def test_a_whole_scale_out_plan() -> None:
    obs = world(
        [inst(A), inst(B, "Standby"), inst(C, health="Unhealthy")],
        [lease("na", admitted_by=None), lease("nb", admitted_by=None)],
        desired=1,
        spec=auto(),
        depth=QueueDepth(3, 0),
    )
    result = plan.plan(obs, tokens())
    assert result.steps == (plan.Admit("ns", "l-na", "na"), plan.SetDesiredCapacity("g", 3, 1))
    assert (result.target, result.standby, result.unhealthy, result.draining) == (3, (B,), (C,), ())
    assert result.decision is not None and result.decision.desired == 3
    steady = plan.plan(world([inst(A)], spec=auto(), depth=QueueDepth(1, 0)), tokens())
    assert steady.steps == () and steady.target == 1 and steady.scale_in_wanted_since is None


def test_a_pass_without_the_queue_works_toward_the_remembered_target() -> None:
    obs = world([inst(A), inst(B)], spec=auto(), memory=plan.Memory(target=1))
    result = plan.plan(obs, tokens())
    assert result.steps == (plan.Terminate(A, "na", "no worker holds a live Lease on it"),)
    assert result.target == 1


def test_withdrawals_of_foreign_requests() -> None:
    obs = world(
        [inst(A), inst(B), inst(C), inst("i-d", "Terminating:Wait")],
        [
            lease("na", drain_request="t", drain_requested_by="x/y"),
            lease("nb", drain_request="t"),
            lease("nc", **ours()),
        ],
    )
    assert plan._withdraw_foreign(obs, plan._fleet(obs)) == [
        plan.WithdrawDrain("ns", "l-na", "na", "stale request of x/y"),
        plan.WithdrawDrain("ns", "l-nb", "nb", "stale request of an unknown requester"),
    ]
    assert plan._withdraw_all(obs, plan._fleet(obs), "w") == [plan.WithdrawDrain("ns", "l-nc", "nc", "w")]


def test_candidate_order() -> None:
    assert plan._candidate_order(plan._Node(inst(A), "na", lease("na", live=False))) == (0, 0.0, A)
    unhealthy = plan._Node(inst(A, health="Unhealthy"), "na", lease("na", idle_since=5.0))
    assert plan._candidate_order(unhealthy) == (1, 5.0, A)
    assert plan._candidate_order(plan._Node(inst(B), "nb", lease("nb"))) == (2, float("inf"), B)


# ---------------------------------------------------------------------------- shedding


def shed(instances: list[GroupInstance], leases: list[plan.NodeLease], target: int, desired: int | None = None):
    obs = world(instances, leases, desired=desired)
    return plan._shed(obs, plan._fleet(obs), target, tokens())


def test_unlaunched_capacity_goes_first() -> None:
    assert shed([inst(A)], [lease("na")], 2, desired=4) == ([plan.SetDesiredCapacity("g", 2, 4)], set(), set())
    steps, victims, draining = shed([inst(A)], [lease("na")], 0, desired=4)
    assert steps == [
        plan.SetDesiredCapacity("g", 1, 4),
        plan.RequestDrain("ns", "l-na", "na", "new0", DrainMode.IF_IDLE, "scale-in"),
    ]
    assert (victims, draining) == ({A}, {"na"})


def test_standing_requests_by_their_answer() -> None:
    W = plan.WithdrawDrain
    assert shed([inst(A)], [lease("na", **ours())], 1) == (
        [W("ns", "l-na", "na", "the node is needed again")],
        set(),
        set(),
    )
    refused = lease("na", **ours(reply=DrainVerdict.REFUSED))
    assert shed([inst(A)], [refused], 0) == ([W("ns", "l-na", "na", "its worker is busy")], set(), set())
    dead_refused = lease("na", live=False, **ours(reply=DrainVerdict.REFUSED))
    assert shed([inst(A)], [dead_refused], 0) == (
        [plan.Terminate(A, "na", "its worker's Lease is not renewed")],
        {A},
        set(),
    )
    drained = lease("na", **ours(reply=DrainVerdict.DRAINED))
    assert shed([inst(A), inst(B)], [drained, lease("nb")], 1) == (
        [plan.Terminate(A, "na", "its worker drained")],
        {A},
        set(),
    )
    # finish requests are the lifecycle's business, not shedding's
    assert shed([inst(A)], [lease("na", **ours(mode=DrainMode.FINISH))], 0) == ([], set(), set())


def test_pending_requests_count_toward_the_excess_in_instance_order() -> None:
    pend = [lease("nb", **ours()), lease("na", **ours())]
    assert shed([inst(B), inst(A)], pend, 1) == (
        [plan.WithdrawDrain("ns", "l-nb", "nb", "the node is needed again")],
        {A},
        {"na"},
    )
    assert shed([inst(B), inst(A)], pend, 0) == ([], {A, B}, {"na", "nb"})


def test_new_victims_by_order_and_reason() -> None:
    obs_instances = [inst(A), inst(B), inst(C), inst("i-d", "Pending")]
    leases = [
        lease("na", live=False),
        lease("nb", idle_since=1.0),
        lease("nc", idle_since=2.0, active_jobs=0),
    ]
    steps, victims, draining = shed(obs_instances, leases, 1, desired=4)
    assert steps == [
        plan.Terminate(A, "na", "its worker's Lease is not renewed"),
        plan.Terminate("i-d", None, "no worker holds a live Lease on it"),
        plan.RequestDrain("ns", "l-nb", "nb", "new0", DrainMode.IF_IDLE, "scale-in"),
    ]
    assert (victims, draining) == ({A, "i-d", B}, {"nb"})
    # busy nodes, nodes with a request and instances not in service are never candidates
    busy = [lease("na", active_jobs=1), lease("nb", drain_request="t", drain_requested_by="x/y")]
    assert shed([inst(A), inst(B), inst(C, "Standby")], busy, 0, desired=2) == ([], set(), set())


# ---------------------------------------------------------------------------- admission


def test_admission_rules() -> None:
    obs = world(
        [inst(A), inst(B), inst(C, health="Unhealthy"), inst("i-d", "Standby"), inst("i-e"), inst("i-f")],
        [
            lease("na", admitted_by="x/y"),
            lease("nb", admitted_by=OWNER),
            lease("nc", admitted_by=None),
            lease("nd", admitted_by=None),
            lease("ne", admitted_by=None, drain_request="t"),
            lease("nf", admitted_by=None, live=False),
        ],
    )
    fleet = plan._fleet(obs)
    assert plan._admit(obs, fleet, set(), set()) == [plan.Admit("ns", "l-na", "na")]
    assert plan._admit(obs, fleet, {A}, set()) == []
    assert plan._admit(obs, fleet, set(), {"na"}) == []


# ---------------------------------------------------------------------------- deletion


def deleting(instances: list[GroupInstance], leases: list[plan.NodeLease], ago: float, **extra: Any) -> plan.Plan:
    obs = world(
        instances,
        leases,
        deleting_since=NOW - timedelta(seconds=ago),
        limits=plan.Limits(lifecycle_hook=HOOK, deletion_max_hold_seconds=100.4),
        memory=plan.Memory(target=2),
        **extra,
    )
    return plan.plan(obs, tokens())


def test_deletion_asks_every_live_node_to_finish() -> None:
    S = protection.SCALE_IN_MARKER
    result = deleting(
        [inst(A), inst(B), inst(C), inst("i-d", "Standby"), inst("i-e", "Terminating:Wait")],
        [
            lease("na"),
            lease("nb", **ours(mode=DrainMode.FINISH)),
            lease("nc", **ours(mode=DrainMode.FINISH, reply=DrainVerdict.DRAINED)),
            lease("nd"),
        ],
        10,
    )
    assert result.steps == (
        plan.CompleteLifecycle("g", HOOK, "i-e", "no live worker on it"),
        plan.RequestDrain("ns", "l-na", "na", "new0", DrainMode.FINISH, "its VideoPipeline is being deleted"),
        plan.SetScaleInProtection("g", (C,), False),
        plan.UnmarkInstance(C, S),
    )
    assert (result.kept, result.released, result.draining, result.target) == ((A, B), False, ("na", "nb"), 2)
    assert result.holds == {} and result.busy == ()


def test_deletion_releases_everything_once_drained() -> None:
    result = deleting([inst(A)], [lease("na", live=False)], 10)
    assert (result.kept, result.released) == ((), True)
    assert result.steps[0] == plan.SetScaleInProtection("g", (A,), False)


def test_deletion_bound_keeps_busy_nodes_protected() -> None:
    leases = [lease("na", active_jobs=1, expires_in=1.0), lease("nb")]
    result = deleting([inst(A), inst(B)], leases, 100.4, termination_protected={A: True})
    assert plan.Event("Warning", "DeletedWithBusyNodes", f"still busy after 100 s, left protected: {A}") in result.steps
    assert (result.kept, result.released) == ((A,), True)
    assert plan.SetScaleInProtection("g", (B,), False) in result.steps
    before = deleting([inst(A), inst(B)], leases, 100, termination_protected={A: True})
    assert (before.kept, before.released) == ((A, B), False)
    assert not before.of_type(plan.Event)
    idle = deleting([inst(B)], [lease("nb")], 200)
    assert (idle.kept, idle.released) == ((), True) and not idle.of_type(plan.Event)
