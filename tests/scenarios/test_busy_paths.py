"""The other ways a node can go, over the real stack: a termination from outside held by the
lifecycle hook, a pipeline deleted with busy nodes, two pipelines naming one group or one queue,
the operator killed in the middle of a drain, workers whose clocks are two minutes off, and two
operator replicas. Each test ends with the referee's counts: nothing terminated with a job in
hand, no victim chosen by AWS, every message done exactly once."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from framescale import busy_lease, names
from tests.integration.operator.conftest import wait_for
from tests.scenarios import harness, scenario

pytestmark = [pytest.mark.integration, pytest.mark.operator, pytest.mark.slow, pytest.mark.needs_handshake]

WAIT = 60.0
SLOW_JOBS = harness.NodeTiming(slots=1, job_seconds=(8.0, 8.0), boot_seconds=(0.0, 0.0))


@dataclass
class World:
    """One pipeline's namespace, queue and group, managed by the fleet."""

    stack: harness.Stack
    namespace: str
    name: str
    queue_url: str
    group: str

    @property
    def owner(self) -> str:
        return f"{self.namespace}/{self.name}"

    def create(self, replicas: int | None = None, **autoscaling: Any) -> None:
        settings = {**scenario.pipeline_settings(scenario.ScenarioSize(0, 0)), **autoscaling}
        self.stack.pipeline(
            namespace=self.namespace,
            name=self.name,
            queue_url=self.queue_url,
            group=self.group,
            replicas=replicas,
            **settings,
        )

    def vp(self) -> dict[str, Any] | None:
        found = self.stack.kube.maybe_get(self.stack.kube.vp_path(self.namespace, self.name))
        return dict(found) if found else None

    def status(self) -> dict[str, Any]:
        return dict((self.vp() or {}).get("status") or {})

    def condition(self, type: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions", []) if c.get("type") == type), {})

    def group_view(self) -> dict[str, Any]:
        return harness.group_view(self.group)

    def instances(self, state: str = "InService") -> list[dict[str, Any]]:
        return [i for i in self.group_view()["Instances"] if i["LifecycleState"] == state]

    def admitted_nodes(self) -> list[harness.FakeNode]:
        """Live nodes whose Lease the operator admitted."""
        out = []
        for node in self.stack.fleet.live_nodes():
            if node.group != self.group:
                continue
            lease = self.stack.kube.maybe_get(self.stack.kube.lease_path(self.namespace, node.lease_name))
            record = busy_lease.parse_lease(lease) if lease else None
            if record is not None and record.admitted_by:
                out.append(node)
        return out

    def leases(self) -> list[busy_lease.LeaseRecord]:
        items = self.stack.kube.get(self.stack.kube.lease_path(self.namespace)).get("items", [])
        return [record for item in items if (record := busy_lease.parse_lease(item)) is not None]

    def send(self, count: int, prefix: str = "job") -> list[str]:
        return harness.send_jobs(self.queue_url, self.stack.ledger, count, prefix)

    def warnings(self) -> list[dict[str, Any]]:
        events = self.stack.kube.get(f"/api/v1/namespaces/{self.namespace}/events").get("items", [])
        return [
            e for e in events if e.get("type") == "Warning" and e.get("involvedObject", {}).get("name") == self.name
        ]


def _world(stack: harness.Stack, *, group: str | None = None, queue_url: str | None = None, **spec: Any) -> World:
    suffix = uuid.uuid4().hex[:6]
    made = World(
        stack=stack,
        namespace=f"ns-{suffix}",
        name=f"vp-{suffix}",
        queue_url=queue_url or harness.make_queue(f"q-{suffix}", visibility_timeout=20),
        group=group or harness.make_group(f"g-{suffix}", harness.GroupSpec(**spec)),
    )
    if group is None:
        stack.fleet.manage(made.group, namespace=made.namespace, pipeline=made.name, queue_url=made.queue_url)
    return made


def _clean(stack: harness.Stack, *groups: str) -> None:
    found = stack.ledger.violations(set(groups))
    assert found == {key: [] for key in found}, found


def _termination_protected(instance_id: str) -> bool:
    response = harness.client("ec2").describe_instance_attribute(
        InstanceId=instance_id, Attribute="disableApiTermination"
    )
    return bool(response["DisableApiTermination"]["Value"])


def _framescale_tags(instance_id: str) -> dict[str, str]:
    found = harness.client("ec2").describe_tags(Filters=[{"Name": "resource-id", "Values": [instance_id]}])["Tags"]
    return {t["Key"]: t["Value"] for t in found if t["Key"] in names.PROTECTION_MARKER_TAGS}


def _needs_lifecycle_simulation(stack: harness.Stack) -> None:
    if stack.moto.extensions is None:
        pytest.skip("waiting for framescale.local.moto_extensions (moto's Terminating:Wait simulation)")


# ---------------------------------------------------------------------------- the lifecycle hook


@pytest.mark.parametrize("stack", [SLOW_JOBS], indirect=True)
def test_an_outside_termination_waits_for_a_busy_node_to_drain_and_lets_an_idle_one_go(
    stack: harness.Stack,
) -> None:
    _needs_lifecycle_simulation(stack)
    world = _world(stack, max_size=4)
    stack.operator()
    world.create(replicas=2)
    wait_for(lambda: len(world.admitted_nodes()) == 2, "2 admitted nodes", timeout=WAIT)
    (job,) = world.send(1)
    busy = wait_for(lambda: [n for n in world.admitted_nodes() if n.jobs_in_hand()], "a busy node")[0]
    (idle,) = [n for n in world.admitted_nodes() if n is not busy]
    started = time.monotonic()

    # Someone else terminates both (Spot rebalancing, an instance refresh, Cluster Autoscaler).
    autoscaling = harness.client("autoscaling")
    for node in (busy, idle):
        autoscaling.terminate_instance_in_auto_scaling_group(
            InstanceId=node.instance_id, ShouldDecrementDesiredCapacity=False
        )
    wait_for(lambda: not idle.alive, "the idle node gone", timeout=20)
    assert busy.alive, "the busy node went with the idle one"
    wait_for(
        lambda: busy.instance_id in [h.get("instanceId") for h in world.status().get("lifecycleHolds", [])],
        "the hold shown in status",
        timeout=20,
    )
    assert busy.alive and busy.jobs_in_hand(), "the busy node went before its job was done"
    wait_for(lambda: not busy.alive, "the busy node gone once drained", timeout=WAIT)
    (done,) = [j for j in stack.ledger.jobs() if j.job_id == job]
    (gone,) = [t for t in stack.ledger.terminations if t.instance_id == busy.instance_id]
    assert done.outcome == "done" and done.ended is not None
    assert gone.at >= done.ended, "terminated before its job ended"
    assert gone.at - started >= 6.0, "the hold did not last while the job ran"
    _clean(stack, world.group)


# ---------------------------------------------------------------------------- deletion


@pytest.mark.parametrize("stack", [SLOW_JOBS], indirect=True)
def test_deleting_a_pipeline_keeps_busy_nodes_protected_until_they_drain(stack: harness.Stack) -> None:
    world = _world(stack, max_size=4)
    stack.operator()
    world.create(replicas=3)
    wait_for(lambda: len(world.admitted_nodes()) == 3, "3 admitted nodes", timeout=WAIT)
    jobs = world.send(2)
    wait_for(lambda: sum(1 for n in world.admitted_nodes() if n.jobs_in_hand()) == 2, "2 busy nodes")
    busy = [n for n in world.admitted_nodes() if n.jobs_in_hand()]
    wait_for(lambda: all(_termination_protected(n.instance_id) for n in busy), "the busy nodes fully protected")

    stack.kube.delete(stack.kube.vp_path(world.namespace, world.name))
    # While the jobs run: the pipeline waits in its finalizer, and no busy node loses protection.
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert world.vp() is not None, "the finalizer let go while nodes were busy"
        view = {i["InstanceId"]: i for i in world.group_view()["Instances"]}
        for node in busy:
            if node.jobs_in_hand():
                assert view[node.instance_id]["ProtectedFromScaleIn"], f"{node.instance_id} exposed to scale-in"
                assert _termination_protected(node.instance_id), f"{node.instance_id} lost termination protection"
        time.sleep(0.5)
    wait_for(lambda: world.vp() is None, "the pipeline gone once its nodes drained", timeout=WAIT)
    assert all(stack.ledger.done_counts()[job] == 1 for job in jobs)
    for node in busy:
        assert not _termination_protected(node.instance_id) or not node.alive
        assert _framescale_tags(node.instance_id) == {} or not node.alive
    _clean(stack, world.group)


# ---------------------------------------------------------------------------- ownership


def test_a_second_pipeline_on_an_owned_group_or_queue_is_refused_and_does_not_act(stack: harness.Stack) -> None:
    first = _world(stack, max_size=4)
    same_group = _world(stack, group=first.group)
    same_queue = _world(stack, queue_url=first.queue_url, max_size=4)
    stack.operator()
    first.create()
    wait_for(lambda: first.condition("Ready"), "the first pipeline's status", timeout=WAIT)
    # The oldest pipeline owns (creationTimestamp has whole seconds, and ties go by name): the
    # others must be created in a later second to be the younger ones.
    time.sleep(1.1)
    same_group.create()
    same_queue.create()
    for refused in (same_group, same_queue):
        condition = wait_for(lambda r=refused: r.condition("Owned"), f"{refused.name}'s Owned condition")
        assert condition["status"] == "False" and condition["reason"] == "Conflict", condition
        assert first.name in condition["message"]
        wait_for(lambda r=refused: r.warnings(), f"a Warning Event on {refused.name}")

    # Backlog on the second pipeline's own queue: it must not size the first one's group; and the
    # first one's backlog must not size the group of the pipeline that shares its queue.
    stranded = same_group.send(3, "other-queue")
    first.send(2, "first")
    wait_for(lambda: first.group_view()["DesiredCapacity"] >= 1, "the owner scales its group")
    time.sleep(6)
    assert harness.group_view(same_queue.group)["DesiredCapacity"] == 0, "the refused pipeline acted"
    assert first.group_view()["DesiredCapacity"] <= 2, "the refused pipeline sized the owner's group"
    assert all(c.group != same_queue.group for c in stack.ledger.capacity)
    wait_for(lambda: stack.ledger.all_done("first"), "the owner's jobs done", timeout=WAIT)
    found = stack.ledger.violations({first.group, same_queue.group})
    # The refused pipeline's own queue is served by nobody: its messages wait, none is lost.
    assert sorted(found.pop("never_done")) == sorted(stranded)
    assert found == {key: [] for key in found}, found


# ---------------------------------------------------------------------------- operator restart


def test_an_operator_killed_mid_drain_leaves_no_node_fenced_or_protected_after_restart(
    stack: harness.Stack,
) -> None:
    world = _world(stack, max_size=6)
    operator = stack.operator()
    world.create(maxReplicas=6)
    world.send(6, "first")
    wait_for(lambda: len(world.admitted_nodes()) >= 4, "nodes up", timeout=WAIT)

    def drain_requested() -> bool:
        return any(r.drain_request for r in world.leases())

    wait_for(drain_requested, "the operator asking a node to drain", timeout=WAIT, interval=0.05)
    operator.kill()  # SIGKILL mid-drain: whatever it wrote stays
    stale = [r.node_name for r in world.leases() if r.drain_request]
    assert stale
    world.send(8, "after-restart")  # every node is needed again
    stack.operator(name="operator-restarted")

    # No node stays fenced: each stale request is withdrawn, or its instance went after draining.
    def settled() -> bool:
        live = {n.node_name for n in stack.fleet.live_nodes() if n.group == world.group}
        return not [r for r in world.leases() if r.drain_request and r.node_name in live and r.node_name in stale]

    wait_for(settled, "stale drain requests withdrawn or finished", timeout=WAIT)
    wait_for(stack.ledger.all_done, "every job done", timeout=WAIT)
    # Then the group drains to zero: no instance is held protected forever.
    wait_for(lambda: world.group_view()["Instances"] == [], "every instance scaled in", timeout=WAIT)
    _clean(stack, world.group)


# ---------------------------------------------------------------------------- clocks


@pytest.mark.parametrize(
    "stack",
    [harness.NodeTiming(clock_offset=timedelta(seconds=-120)), harness.NodeTiming(clock_offset=timedelta(seconds=120))],
    indirect=True,
    ids=["worker-clock-120s-behind", "worker-clock-120s-ahead"],
)
def test_worker_clocks_two_minutes_off_change_nothing(stack: harness.Stack) -> None:
    operator = stack.operator()
    result = scenario.run(stack, scenario.ScenarioSize(scale_ins=25, time_limit=150), seed=5)
    print(f"clock skew run: {result.as_dict()}")
    assert result.violations == {key: [] for key in result.violations}, result.violations
    assert result.scale_ins >= 25
    # Busy nodes were seen busy: the operator turned termination protection on for them.
    assert "ModifyInstanceAttribute" in stack.moto.writes_by(operator.name)
    assert result.drain_answers.get("refused", 0) > 0


# ---------------------------------------------------------------------------- two replicas


def _leader_election() -> dict[str, str]:
    """The settings that make two operator replicas elect a leader, if the operator has them."""
    from framescale_operator.settings import OperatorSettings

    if "leader_election" in OperatorSettings.model_fields:
        return {"FRAMESCALE_OPERATOR_LEADER_ELECTION": "true"}
    pytest.skip("waiting for the operator's leader election (framescale_operator.leader)")


def test_two_operator_replicas_one_acts_and_the_other_takes_over(stack: harness.Stack) -> None:
    env = _leader_election()
    first = stack.operator("operator-a", **env)
    second = stack.operator("operator-b", **env)
    result = scenario.run(stack, scenario.ScenarioSize(scale_ins=20, time_limit=150), seed=3)
    assert result.violations == {key: [] for key in result.violations}, result.violations
    acted = {run.name: stack.moto.writes_by(run.name) for run in (first, second)}
    leaders = [name for name, writes in acted.items() if writes]
    assert len(leaders) == 1, f"AWS writes by each replica: { {k: len(v) for k, v in acted.items()} }"
    leader = first if leaders == [first.name] else second
    other = second if leader is first else first
    before = len(stack.moto.writes_by(other.name))
    leader.kill()
    result = scenario.run(stack, scenario.ScenarioSize(scale_ins=10, time_limit=150), seed=4)
    assert result.violations == {key: [] for key in result.violations}, result.violations
    assert len(stack.moto.writes_by(other.name)) > before, "the surviving replica never took over"
