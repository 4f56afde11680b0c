"""One reconcile pass against in-memory AWS, Node and Lease fakes: what it changes, writes and reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from framescale import busy_lease, names
from framescale.busy_lease import WorkerState
from framescale_operator import plan, reconcile
from framescale_operator.aws_actuators import (
    AwsFailure,
    AwsRetryable,
    GroupNotFound,
    GroupState,
    QueueDepth,
    QueueNotFound,
)
from framescale_operator.kube import KubeError, KubeRetryable
from framescale_operator.protection import (
    PROTECTED_BY_ANNOTATION,
    SCALE_IN_MARKER,
    TERMINATION_MARKER,
    GroupInstance,
    Markers,
    NodeRecord,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
REF = reconcile.PipelineRef(namespace="jobs", name="detector")
QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"
GROUP = "gpu-nodes"
HOOK = "framescale-drain"


@dataclass
class FakeAws:
    visible: int = 0
    in_flight: int = 0
    delayed: int = 0
    desired: int = 0
    max_size: int = 10
    instances: dict[str, bool] = field(default_factory=dict)  # id -> protected from scale-in
    states: dict[str, str] = field(default_factory=dict)  # id -> lifecycle state (InService unless set)
    termination: dict[str, bool] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> EC2 tags
    new_instances_protected: bool = True
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)
    queue_exists: bool = True
    group_exists: bool = True

    def _maybe_fail(self, operation: str) -> None:
        if operation in self.fail:
            raise self.fail[operation]

    def queue_depth(self, queue_url: str) -> QueueDepth:
        self._maybe_fail("queue_depth")
        if not self.queue_exists:
            raise QueueNotFound("GetQueueAttributes", "AWS.SimpleQueueService.NonExistentQueue", "no queue")
        return QueueDepth(self.visible, self.in_flight, self.delayed)

    def describe_group(self, name: str) -> GroupState:
        self._maybe_fail("describe_group")
        if not self.group_exists:
            raise GroupNotFound("DescribeAutoScalingGroups", "NotFound", f"no group {name}")
        return GroupState(
            name=name,
            desired=self.desired,
            min_size=0,
            max_size=self.max_size,
            instances=tuple(
                GroupInstance(i, self.states.get(i, "InService"), p) for i, p in sorted(self.instances.items())
            ),
            new_instances_protected=self.new_instances_protected,
        )

    def set_desired_capacity(self, name: str, desired: int) -> None:
        self._maybe_fail("set_desired_capacity")
        self.calls.append(("set_desired_capacity", desired))
        self.desired = desired

    def set_scale_in_protection(self, name: str, instance_ids: Sequence[str], protected: bool) -> None:
        self._maybe_fail("set_scale_in_protection")
        self.calls.append(("set_scale_in_protection", tuple(instance_ids), protected))
        for instance_id in instance_ids:
            self.instances[instance_id] = protected

    def protect_new_instances(self, name: str) -> None:
        self.calls.append(("protect_new_instances",))
        self.new_instances_protected = True

    def terminate_instance(self, instance_id: str) -> None:
        self._maybe_fail("terminate_instance")
        self.calls.append(("terminate_instance", instance_id))
        self.instances.pop(instance_id, None)
        self.desired -= 1

    def record_lifecycle_heartbeat(self, name: str, hook: str, instance_id: str) -> None:
        self.calls.append(("record_lifecycle_heartbeat", instance_id))

    def complete_lifecycle_action(self, name: str, hook: str, instance_id: str) -> None:
        self.calls.append(("complete_lifecycle_action", instance_id))
        self.instances.pop(instance_id, None)

    def termination_protection(self, instance_ids: Iterable[str]) -> dict[str, bool]:
        self._maybe_fail("termination_protection")
        return {i: self.termination.get(i, False) for i in instance_ids if i in self.instances}

    def set_termination_protection(self, instance_id: str, enabled: bool) -> None:
        self._maybe_fail("set_termination_protection")
        self.calls.append(("set_termination_protection", instance_id, enabled))
        self.termination[instance_id] = enabled

    def protection_markers(self, instance_ids: Iterable[str]) -> dict[str, Markers]:
        self._maybe_fail("protection_markers")
        return {
            i: Markers(scale_in=self.tags[i].get(SCALE_IN_MARKER), termination=self.tags[i].get(TERMINATION_MARKER))
            for i in instance_ids
            if self.tags.get(i)
        }

    def set_marker(self, instance_id: str, key: str, owner: str) -> None:
        self.calls.append(("set_marker", instance_id, key))
        self.tags.setdefault(instance_id, {})[key] = owner

    def clear_marker(self, instance_id: str, key: str, owner: str) -> None:
        self.calls.append(("clear_marker", instance_id, key))
        if self.tags.get(instance_id, {}).get(key) == owner:  # as DeleteTags with a value
            del self.tags[instance_id][key]

    def protected_by_someone_else(self, instance_id: str) -> None:
        """Both flags on, set by a person (no framescale tags)."""
        self.instances[instance_id] = True
        self.termination[instance_id] = True

    def protection_calls(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] not in {"set_desired_capacity", "terminate_instance"}]


@dataclass
class FakeNodes:
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: Exception | None = None

    def patch_node(self, name: str, patch: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.patches.append((name, patch))
        record = self.nodes[name]
        annotations = dict(record.annotations)
        for key, value in patch["metadata"]["annotations"].items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        self.nodes[name] = NodeRecord(name=name, provider_id=record.provider_id, annotations=annotations)


@dataclass
class FakeLeases:
    """The node Leases as the API holds them; the operator's merge patches land on them."""

    leases: dict[str, dict[str, Any]] = field(default_factory=dict)  # node name -> body
    patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: Exception | None = None

    def patch_lease(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        for body in self.leases.values():
            if body["metadata"]["name"] == name:
                self.patches.append((body["metadata"]["annotations"][names.LEASE_NODE_ANNOTATION], patch))
                annotations = body["metadata"]["annotations"]
                for key, value in patch["metadata"]["annotations"].items():
                    if value is None:
                        annotations.pop(key, None)
                    else:
                        annotations[key] = value

    def annotations(self, node: str) -> dict[str, str]:
        return self.leases[node]["metadata"]["annotations"]


def spec(**autoscaling: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "queueUrl": QUEUE,
        "nodeGroup": {"autoScalingGroupName": GROUP},
        "autoscaling": {
            "targetBacklogPerReplica": 5,
            "scaleInCooldownSeconds": 60,
            "scaleInStabilizationSeconds": 0,
            **autoscaling,
        },
    }
    return body


def tokens() -> Any:
    counter = iter(range(1, 1_000_000))
    return lambda: f"t{next(counter)}"


@dataclass
class World:
    aws: FakeAws = field(default_factory=FakeAws)
    kube: FakeNodes = field(default_factory=FakeNodes)
    lease_api: FakeLeases = field(default_factory=FakeLeases)
    status: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=spec)
    generation: int = 1
    liveness: busy_lease.LeaseLiveness = field(default_factory=busy_lease.LeaseLiveness)
    idle: reconcile.IdleSince = field(default_factory=reconcile.IdleSince)
    ownership: plan.Ownership = field(default_factory=plan.Ownership)
    new_token: Any = field(default_factory=tokens)

    @property
    def leases(self) -> list[dict[str, Any]]:
        return list(self.lease_api.leases.values())

    def add_instance(self, instance_id: str, node_name: str) -> None:
        self.aws.instances[instance_id] = False
        self.kube.nodes[node_name] = NodeRecord(name=node_name, provider_id=f"aws:///us-east-1a/{instance_id}")

    def worker(
        self,
        node_name: str,
        jobs: int = 0,
        *,
        state: WorkerState | None = None,
        renewed: datetime = NOW,
        reply: busy_lease.DrainReply | None = None,
    ) -> None:
        """The worker's own write of its Lease (a v2 renewal); the operator's keys stay."""
        state = state or (WorkerState.BUSY if jobs else WorkerState.IDLE)
        body = busy_lease.worker_patch(
            node_name=node_name,
            namespace="jobs",
            holder=f"w-{node_name}",
            duration_seconds=30,
            now=renewed,
            active_jobs=jobs,
            state=state,
            acquired=renewed - timedelta(hours=1),
            drain_reply=reply,
        )
        old = self.lease_api.leases.get(node_name)
        if old is not None:
            kept = {k: v for k, v in old["metadata"]["annotations"].items() if k not in body["metadata"]["annotations"]}
            body["metadata"]["annotations"].update(kept)
        self.lease_api.leases[node_name] = body

    def busy(self, node_name: str, jobs: int = 1, renewed: datetime = NOW) -> None:
        self.worker(node_name, jobs, renewed=renewed)

    def answer_drain(self, node_name: str, renewed: datetime) -> busy_lease.DrainVerdict | None:
        """What the worker does with a standing drain request (``busy_lease.respond_to_drain``)."""
        record = busy_lease.parse_lease(self.lease_api.leases[node_name])
        assert record is not None and record.drain_request is not None
        verdict = busy_lease.respond_to_drain(record.drain_mode, record.active_jobs)
        if verdict is None:
            return None
        state = WorkerState.DRAINED if verdict == busy_lease.DrainVerdict.DRAINED else WorkerState.BUSY
        self.worker(
            node_name,
            record.active_jobs,
            state=state,
            renewed=renewed,
            reply=busy_lease.DrainReply(record.drain_request, verdict),
        )
        return verdict

    def run(self, now: datetime = NOW, scale: bool = True, deleting_since: datetime | None = None) -> reconcile.Outcome:
        monotonic = (now - NOW).total_seconds()
        snapshot = reconcile.Snapshot(
            spec=self.spec,
            status=self.status,
            generation=self.generation,
            leases=reconcile.judge_leases(self.leases, self.liveness, self.idle, monotonic),
            nodes=dict(self.kube.nodes),
            now=now,
            ownership=self.ownership,
            deleting_since=deleting_since,
        )
        call = reconcile.release if deleting_since is not None else reconcile.reconcile
        kwargs: dict[str, Any] = {} if deleting_since is not None else {"scale": scale}
        outcome = call(
            REF,
            snapshot,
            aws=self.aws,
            nodes_api=self.kube,
            leases_api=self.lease_api,
            new_token=self.new_token,
            **kwargs,
        )
        # What kopf does with the patch: merge it into status (None deletes).
        for key, value in outcome.status_patch.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        return outcome


def condition(status: dict[str, Any], type: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type)


A, B, C = "i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c"


def test_first_pass_writes_the_whole_status_and_changes_nothing_else() -> None:
    world = World()
    outcome = world.run()
    assert world.aws.calls == []
    assert world.status["mode"] == "Autoscaling"
    assert world.status["desiredReplicas"] == 0
    assert world.status["backlog"] == 0
    assert world.status["observedGeneration"] == 1
    assert condition(world.status, "Ready")["status"] == "True"
    assert condition(world.status, "Scaling")["reason"] == "Steady"
    assert outcome.events == []


def test_running_again_changes_nothing() -> None:
    world = World()
    world.aws.visible = 12
    world.add_instance(A, "na")
    world.busy("na")
    first = world.run()
    assert first.actions and first.status_patch and first.events
    calls = list(world.aws.calls)

    # The second pass does no writes; it only records that the world now matches (Steady).
    second = world.run(now=NOW + timedelta(seconds=1))
    assert second.actions == []
    assert second.events == []
    assert world.aws.calls == calls
    assert condition(world.status, "Scaling")["reason"] == "Steady"

    third = world.run(now=NOW + timedelta(seconds=2))
    assert third.actions == []
    assert third.status_patch == {}
    assert world.aws.calls == calls


def test_backlog_scales_out_and_records_the_change() -> None:
    world = World()
    world.aws.visible, world.aws.in_flight = 8, 4
    outcome = world.run()
    assert world.aws.calls == [("set_desired_capacity", 3)]
    assert world.status["desiredReplicas"] == 3
    assert world.status["backlog"] == 12
    assert world.status["inFlight"] == 4
    assert world.status["lastScaleDirection"] == "Out"
    assert world.status["lastScaleTime"] == busy_lease.format_micro_time(NOW)
    assert [e.reason for e in outcome.events] == ["Scaled"]
    assert outcome.scaled and outcome.scaled_from == 0


def test_scale_in_waits_for_the_cooldown_recorded_in_status() -> None:
    world = World()
    world.aws.visible = 12
    world.run()
    world.aws.visible = 0
    held = world.run(now=NOW + timedelta(seconds=30))
    assert world.aws.desired == 3
    assert held.decision is not None and held.decision.reason.value == "ScaleInCooldown"
    world.run(now=NOW + timedelta(seconds=61))
    assert world.aws.desired == 0
    assert world.status["lastScaleDirection"] == "In"


def test_pinned_mode_shows_in_status() -> None:
    world = World(spec={**spec(), "mode": "Manual", "replicas": 2})
    world.run()
    assert world.aws.desired == 2
    assert world.status["mode"] == "Manual"
    assert condition(world.status, "Scaling")["reason"] == "Pinned"


def test_every_instance_is_marked_and_protected_first_and_the_idle_one_is_drained_not_dropped() -> None:
    world = World()
    world.add_instance(A, "na")
    world.add_instance(B, "nb")
    world.aws.desired = 2
    world.busy("na")
    world.worker("nb")
    outcome = world.run()
    assert world.aws.calls == [
        ("set_marker", A, SCALE_IN_MARKER),  # the tag before its flag: a crash leaves no untracked flag
        ("set_marker", B, SCALE_IN_MARKER),
        ("set_scale_in_protection", (A, B), True),  # busy or idle: the group never picks a victim
        ("set_marker", A, TERMINATION_MARKER),
        ("set_termination_protection", A, True),
    ]
    assert world.aws.desired == 2  # nothing goes before its worker has drained
    assert world.lease_api.annotations("nb")[names.LEASE_DRAIN_REQUEST_ANNOTATION] == "t1"
    assert world.lease_api.annotations("nb")[names.LEASE_DRAIN_MODE_ANNOTATION] == "if-idle"
    assert names.LEASE_DRAIN_REQUEST_ANNOTATION not in world.lease_api.annotations("na")  # busy: never asked
    assert world.lease_api.annotations("na")[names.LEASE_ADMITTED_BY_ANNOTATION] == REF.owner
    assert names.LEASE_ADMITTED_BY_ANNOTATION not in world.lease_api.annotations("nb")  # leaving: not admitted
    assert world.aws.tags[A] == {SCALE_IN_MARKER: REF.owner, TERMINATION_MARKER: REF.owner}
    assert world.kube.nodes["na"].fully_annotated(REF.owner)
    assert world.status["busyNodes"] == ["na"]
    assert world.status["protectedInstances"] == [A]
    assert world.status["drainingNodes"] == ["nb"]
    assert condition(world.status, "Protected")["status"] == "True"
    assert {e.reason for e in outcome.events} == {"Protected", "DrainRequested"}

    assert world.answer_drain("nb", NOW + timedelta(seconds=1)) == busy_lease.DrainVerdict.DRAINED
    world.run(now=NOW + timedelta(seconds=1), scale=False)  # the reply is a Lease change: a protection pass
    assert world.aws.calls[-1] == ("terminate_instance", B)
    assert world.aws.desired == 1 and A in world.aws.instances
    assert world.status["lastScaleDirection"] == "In"
    assert world.status["drainingNodes"] == []


def test_a_refusal_withdraws_the_request_and_the_next_idle_node_is_asked() -> None:
    world = World(spec={**spec(), "mode": "Manual", "replicas": 2})
    world.add_instance(A, "na")
    world.add_instance(B, "nb")
    world.aws.desired = 2
    world.worker("na", renewed=NOW)
    world.run()  # na first seen idle at 0 s
    world.worker("nb", renewed=NOW + timedelta(seconds=1))
    world.run(now=NOW + timedelta(seconds=1))
    world.spec, world.generation = {**spec(), "mode": "Manual", "replicas": 1}, 2
    world.worker("na", renewed=NOW + timedelta(seconds=2))
    world.worker("nb", renewed=NOW + timedelta(seconds=2))
    world.run(now=NOW + timedelta(seconds=2))
    assert world.lease_api.annotations("na")[names.LEASE_DRAIN_REQUEST_ANNOTATION] == "t1"  # idle longest
    assert names.LEASE_DRAIN_REQUEST_ANNOTATION not in world.lease_api.annotations("nb")
    world.worker("na", 1, renewed=NOW + timedelta(seconds=3))  # took a job before it saw the request
    assert world.answer_drain("na", NOW + timedelta(seconds=3)) == busy_lease.DrainVerdict.REFUSED
    world.run(now=NOW + timedelta(seconds=3))
    assert names.LEASE_DRAIN_REQUEST_ANNOTATION not in world.lease_api.annotations("na")  # withdrawn
    assert ("terminate_instance", A) not in world.aws.calls
    world.run(now=NOW + timedelta(seconds=4))
    assert world.lease_api.annotations("nb")[names.LEASE_DRAIN_REQUEST_ANNOTATION] == "t2"
    world.answer_drain("nb", NOW + timedelta(seconds=5))
    world.run(now=NOW + timedelta(seconds=5))
    assert [c for c in world.aws.calls if c[0] == "terminate_instance"] == [("terminate_instance", B)]
    assert world.aws.desired == 1


def test_the_backlog_coming_back_withdraws_the_drain_request() -> None:
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    world.worker("na")
    world.run()
    assert world.lease_api.annotations("na")[names.LEASE_DRAIN_REQUEST_ANNOTATION] == "t1"
    world.aws.visible = 5
    world.run(now=NOW + timedelta(seconds=1))
    assert names.LEASE_DRAIN_REQUEST_ANNOTATION not in world.lease_api.annotations("na")
    world.run(now=NOW + timedelta(seconds=2))  # admitted at the next pass, once no request stands
    assert world.lease_api.annotations("na")[names.LEASE_ADMITTED_BY_ANNOTATION] == REF.owner
    assert world.aws.desired == 1


def test_an_instance_without_a_worker_goes_at_once_and_a_dead_lease_counts_as_none() -> None:
    world = World()
    world.add_instance(A, "na")
    world.add_instance(B, "nb")
    world.aws.desired = 2
    world.busy("nb")
    world.run()
    assert world.aws.calls[-1] == ("terminate_instance", A)  # no Lease: no job can start there
    world.aws.visible = 0
    world.run(now=NOW + timedelta(seconds=31), scale=False)  # nb's Lease not renewed for its duration
    assert ("terminate_instance", B) not in world.aws.calls  # a protection pass keeps the target: 0
    world.status["lastScaleTime"] = busy_lease.format_micro_time(NOW - timedelta(hours=1))
    world.run(now=NOW + timedelta(seconds=32))
    assert world.aws.calls[-1] == ("terminate_instance", B)
    assert world.aws.desired == 0


def test_a_worker_clock_far_off_changes_nothing() -> None:
    """Liveness is judged on the operator's clock: renewTime values two minutes in the past (or
    the future) are fine while they keep changing, and a stuck one expires after its duration."""
    for skew in (timedelta(seconds=-120), timedelta(seconds=120)):
        world = World(spec={**spec(), "mode": "Manual", "replicas": 1})
        world.add_instance(A, "na")
        world.add_instance(B, "nb")
        world.aws.desired = 2
        for second in range(0, 60, 10):
            world.busy("na", renewed=NOW + skew + timedelta(seconds=second))
            world.busy("nb", renewed=NOW + skew + timedelta(seconds=second))
            world.run(now=NOW + timedelta(seconds=second))
            assert world.status["busyNodes"] == ["na", "nb"]
            assert world.aws.desired == 2
        world.run(now=NOW + timedelta(seconds=50 + 31))  # nb and na stop renewing
        assert world.status["busyNodes"] == []


def test_the_scale_in_waits_for_the_stabilization_window() -> None:
    world = World(spec=spec(scaleInStabilizationSeconds=30))
    world.aws.desired = 2
    world.aws.visible = 0
    held = world.run()
    assert held.decision is not None and held.decision.reason.value == "ScaleInStabilizing"
    assert world.status["scaleInWantedSince"] == busy_lease.format_micro_time(NOW)
    world.aws.visible = 10  # one high read resets the window
    world.run(now=NOW + timedelta(seconds=20))
    assert "scaleInWantedSince" not in world.status
    world.aws.visible = 0
    world.run(now=NOW + timedelta(seconds=25))
    world.run(now=NOW + timedelta(seconds=50))
    assert world.aws.desired == 2
    world.run(now=NOW + timedelta(seconds=56))
    assert world.aws.desired == 0


def test_delayed_messages_count_in_the_backlog() -> None:
    world = World()
    world.aws.visible, world.aws.delayed = 1, 9
    world.run()
    assert world.aws.desired == 2
    assert (world.status["backlog"], world.status["delayed"]) == (10, 9)


def test_a_second_pipeline_on_the_group_does_nothing_but_say_so() -> None:
    world = World(ownership=plan.Ownership(group_owner="jobs/older", queue_owner=REF.owner))
    world.add_instance(A, "na")
    world.aws.visible = 50
    outcome = world.run()
    assert world.aws.calls == [] and world.lease_api.patches == []
    owned = condition(world.status, "Owned")
    assert (owned["status"], owned["reason"]) == ("False", "Conflict")
    assert "jobs/older" in owned["message"]
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "Conflict")]
    assert condition(world.status, "Ready")["reason"] == "Conflict"
    queue = World(ownership=plan.Ownership(group_owner=REF.owner, queue_owner="other/first"))
    queue.aws.visible = 50
    queue.run()
    assert queue.aws.calls == []
    assert "other/first" in condition(queue.status, "Owned")["message"]


def test_a_held_termination_drains_heartbeats_and_continues() -> None:
    world = World()
    world.add_instance(A, "na")
    world.add_instance(B, "nb")
    world.aws.desired = 2
    world.aws.visible = 10
    world.busy("na")
    world.run()
    world.aws.states[A] = "Terminating:Wait"  # a Spot rebalance, say: the hook holds it
    world.aws.states[B] = "Terminating:Wait"  # no Lease on nb: nothing to wait for
    world.run(now=NOW + timedelta(seconds=1))
    assert ("complete_lifecycle_action", B) in world.aws.calls
    assert ("complete_lifecycle_action", A) not in world.aws.calls
    assert world.lease_api.annotations("na")[names.LEASE_DRAIN_MODE_ANNOTATION] == "finish"
    assert [h["instanceId"] for h in world.status["lifecycleHolds"]] == [A]
    world.busy("na", renewed=NOW + timedelta(seconds=61))
    world.run(now=NOW + timedelta(seconds=61))
    assert ("record_lifecycle_heartbeat", A) in world.aws.calls
    world.worker("na", 0, renewed=NOW + timedelta(seconds=62))
    world.answer_drain("na", NOW + timedelta(seconds=62))
    world.run(now=NOW + timedelta(seconds=62))
    assert world.aws.calls[-1] == ("complete_lifecycle_action", A)


def test_a_held_termination_is_completed_at_the_configured_maximum() -> None:
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    world.aws.visible = 10
    world.aws.states[A] = "Terminating:Wait"
    for second in (0, 3599, 3600):
        world.busy("na", renewed=NOW + timedelta(seconds=second))
        outcome = world.run(now=NOW + timedelta(seconds=second))
    assert world.aws.calls[-1] == ("complete_lifecycle_action", A)
    assert "LifecycleHoldExpired" in [e.reason for e in outcome.events]


def test_deletion_drains_releases_idle_nodes_and_keeps_busy_ones() -> None:
    world = World(spec={**spec(), "mode": "Manual", "replicas": 1})
    for instance_id, node_name in ((A, "na"), (B, "nb"), (C, "nc")):
        world.add_instance(instance_id, node_name)
    world.aws.desired = 1
    for node_name in ("na", "nb", "nc"):
        world.busy(node_name)
    world.run()
    deleting = NOW + timedelta(seconds=1)
    first = world.run(now=deleting, deleting_since=deleting)
    assert not first.released
    assert all(
        world.lease_api.annotations(n)[names.LEASE_DRAIN_MODE_ANNOTATION] == "finish" for n in ("na", "nb", "nc")
    )
    assert all(world.aws.instances[i] and world.aws.termination[i] for i in (A, B, C))
    world.worker("nb", 0, renewed=deleting)
    world.answer_drain("nb", deleting)
    second = world.run(now=deleting + timedelta(seconds=1), deleting_since=deleting)
    assert not second.released
    assert (world.aws.instances[B], world.aws.termination[B]) == (False, False)  # drained: released
    assert all(world.aws.instances[i] and world.aws.termination[i] for i in (A, C))  # busy: kept
    assert world.aws.desired == 1  # deletion never resizes the group
    late = deleting + timedelta(seconds=3600)
    world.busy("na", renewed=late)
    world.busy("nc", renewed=late)
    last = world.run(now=late, deleting_since=deleting)
    assert last.released  # the bound: the finalizer goes ...
    assert all(world.aws.instances[i] and world.aws.termination[i] for i in (A, C))  # ... busy ones stay safe
    assert "DeletedWithBusyNodes" in [e.reason for e in last.events]


def test_a_restart_mid_drain_leaves_no_node_fenced() -> None:
    """A new operator process (fresh clock and memory) finds a request of ours it no longer needs."""
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    world.worker("na")
    world.run()
    assert world.lease_api.annotations("na")[names.LEASE_DRAIN_REQUEST_ANNOTATION]
    world.liveness, world.idle = busy_lease.LeaseLiveness(), reconcile.IdleSince()
    world.aws.visible = 3
    world.run(now=NOW + timedelta(seconds=5))
    assert names.LEASE_DRAIN_REQUEST_ANNOTATION not in world.lease_api.annotations("na")
    # A request another (deleted) pipeline left on a node of this group is withdrawn too.
    world.lease_api.patch_lease("jobs", busy_lease.lease_name("na"), busy_lease.drain_request_patch("x", "jobs/gone"))
    world.run(now=NOW + timedelta(seconds=6))
    assert names.LEASE_DRAIN_REQUEST_ANNOTATION not in world.lease_api.annotations("na")


def test_invalid_spec_is_a_condition_and_an_event_once() -> None:
    world = World(spec=spec(minReplicas=5, maxReplicas=2))
    world.aws.visible = 50
    outcome = world.run()
    ready = condition(world.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.autoscaling" in ready["message"] and "minReplicas" in ready["message"]
    assert world.aws.calls == []
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "InvalidSpec")]
    again = world.run(now=NOW + timedelta(seconds=1))
    assert again.events == [] and again.status_patch == {}


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"queueUrl": "not a url"}, "queueUrl"),
        ({"nodeGroup": {}}, "autoScalingGroupName"),
        ({"replicas": -1}, "replicas"),
        ({"autoscaling": {"targetBacklogPerReplica": 0}}, "targetBacklogPerReplica"),
        ({"autoscaling": {"pollIntervalSeconds": 0}}, "pollIntervalSeconds"),
        ({"autoscaling": {"surprise": 1}}, "surprise"),
    ],
)
def test_each_invalid_field_is_named(bad: dict[str, Any], where: str) -> None:
    world = World(spec={**spec(), **bad})
    world.run()
    ready = condition(world.status, "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert where in ready["message"]


def test_missing_queue_and_group_are_reported() -> None:
    world = World()
    world.aws.queue_exists = False
    world.run()
    assert condition(world.status, "Ready")["reason"] == "QueueNotFound"
    world.aws.queue_exists, world.aws.group_exists = True, False
    world.run()
    assert condition(world.status, "Ready")["reason"] == "NodeGroupNotFound"
    world.aws.group_exists = True
    world.run()
    ready = condition(world.status, "Ready")
    assert ready["status"] == "True"
    assert ready["lastTransitionTime"] == reconcile.format_time(NOW)


def test_throttling_is_retryable_and_the_status_says_so() -> None:
    world = World()
    world.aws.visible = 10
    world.aws.fail["set_desired_capacity"] = AwsRetryable("SetDesiredCapacity", "ScalingActivityInProgress", "busy")
    outcome = world.run()
    assert outcome.scaling_failure is not None and outcome.scaling_failure.retryable
    assert outcome.protection_failure is None
    ready = condition(world.status, "Ready")
    assert ready["reason"] == "Retrying"
    assert ready["message"].endswith(reconcile.RETRYING)  # says what happens next
    assert condition(world.status, "Scaling")["status"] == "False"
    assert "lastScaleTime" not in world.status  # nothing was scaled
    del world.aws.fail["set_desired_capacity"]
    assert world.run().failures == []
    assert world.aws.desired == 2


def test_node_patch_failures_are_reported_but_never_block_the_aws_side() -> None:
    world = World()
    world.add_instance(A, "na")
    world.add_instance(B, "nb")
    world.aws.desired = 2
    world.busy("na")
    world.kube.fail = KubeRetryable("PatchNode", 409, "Conflict")
    outcome = world.run()
    assert outcome.protection_failure is not None and outcome.protection_failure.retryable
    assert world.aws.instances[A] and world.aws.termination[A]  # protected anyway
    assert world.aws.desired == 1  # and scaled anyway: the instance is safe from scale-in
    ready = condition(world.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NodeAnnotationFailed")
    assert condition(world.status, "Protected")["reason"] == "NodeAnnotationFailed"
    assert [e.reason for e in outcome.events].count("NodeAnnotationFailed") == 1

    again = world.run(now=NOW + timedelta(seconds=1))
    assert "NodeAnnotationFailed" not in [e.reason for e in again.events]  # the same failure: no new Event

    world.kube.fail = KubeError("PatchNode", 403, "Forbidden")
    forbidden = world.run(now=NOW + timedelta(seconds=2))
    assert forbidden.protection_failure is not None
    assert not forbidden.protection_failure.retryable  # not worth a fast retry; the next pass tries again

    world.kube.fail = None
    world.run(now=NOW + timedelta(seconds=3))
    assert condition(world.status, "Ready")["status"] == "True"
    assert world.kube.nodes["na"].fully_annotated(REF.owner)


def test_other_aws_errors_are_reported_not_retried_in_a_loop() -> None:
    world = World()
    world.aws.visible = 3
    world.run()
    world.aws.fail["describe_group"] = AwsFailure("DescribeAutoScalingGroups", "AccessDenied", "no")
    outcome = world.run(now=NOW + timedelta(seconds=1))
    assert [f.retryable for f in outcome.failures] == [False, False]  # both halves need the group
    assert condition(world.status, "Ready")["reason"] == "AwsError"
    assert condition(world.status, "Ready")["message"].endswith(reconcile.NEXT_PASS)
    assert [e.reason for e in outcome.events] == ["AwsError"]  # one Warning, not one per half
    assert world.status["backlog"] == 3  # the last observation stays, marked stale by Ready=False
    assert world.status["desiredReplicas"] == 1


def test_release_undoes_everything_for_a_deleted_pipeline_once_idle() -> None:
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    world.busy("na")
    world.run()
    world.busy("na", jobs=0)
    outcome = world.run(now=NOW + timedelta(seconds=1), deleting_since=NOW)
    assert not outcome.released  # asked to drain first: an idle Lease may take a job any moment
    world.answer_drain("na", NOW + timedelta(seconds=2))
    outcome = world.run(now=NOW + timedelta(seconds=2), deleting_since=NOW)
    assert outcome.released
    assert world.aws.instances[A] is False
    assert world.aws.termination[A] is False
    assert world.aws.tags[A] == {}
    assert PROTECTED_BY_ANNOTATION not in world.kube.nodes["na"].annotations
    assert world.aws.desired == 1  # deletion does not resize the group


def test_release_when_the_group_is_gone() -> None:
    world = World()
    world.aws.group_exists = False
    outcome = world.run(deleting_since=NOW)
    assert outcome.released and world.aws.calls == []


def test_status_patch_deletes_what_disappeared() -> None:
    assert reconcile.status_patch({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"c": 3, "b": None}


def test_release_waits_while_a_node_cannot_be_cleared() -> None:
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    world.busy("na")
    world.run()
    world.lease_api.leases.clear()  # the worker is gone
    world.kube.fail = KubeRetryable("PatchNode", 503, "Unavailable")
    outcome = world.run(now=NOW + timedelta(seconds=1), deleting_since=NOW)
    assert world.aws.instances[A] is False  # the AWS side is released all the same
    assert outcome.protection_failure is not None and outcome.protection_failure.retryable
    assert not outcome.released  # the finalizer must not go while a Node still carries our annotations


QUEUE_FAILURES = [
    pytest.param(None, "QueueNotFound", False, id="queue-missing"),
    pytest.param(AwsRetryable("GetQueueAttributes", "RequestThrottled", "slow down"), "Retrying", True, id="throttled"),
    pytest.param(AwsFailure("GetQueueAttributes", "AccessDenied", "no"), "AwsError", False, id="denied"),
]


@pytest.mark.parametrize(("error", "reason", "retryable"), QUEUE_FAILURES)
def test_protection_goes_on_while_the_queue_cannot_be_read(
    error: Exception | None, reason: str, retryable: bool
) -> None:
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    if error is None:
        world.aws.queue_exists = False
    else:
        world.aws.fail["queue_depth"] = error
    world.busy("na")
    outcome = world.run()
    assert outcome.scaling_failure is not None
    assert (outcome.scaling_failure.reason, outcome.scaling_failure.retryable) == (reason, retryable)
    assert world.aws.instances[A] and world.aws.termination[A]  # a new busy node is protected
    assert condition(world.status, "Protected")["status"] == "True"
    assert condition(world.status, "Ready")["reason"] == reason

    world.run(now=NOW + timedelta(seconds=31), scale=False)  # the Lease lapsed
    assert (world.aws.instances[A], world.aws.termination[A]) == (True, False)  # scale-in: always on
    assert world.status["busyNodes"] == []


def test_protection_goes_on_while_the_spec_is_invalid() -> None:
    world = World(spec=spec(minReplicas=5, maxReplicas=2))
    world.add_instance(A, "na")
    world.busy("na")
    world.run()
    assert condition(world.status, "Ready")["reason"] == "InvalidSpec"
    assert condition(world.status, "Protected")["status"] == "True"
    assert world.aws.instances[A] and world.aws.termination[A]
    world.run(now=NOW + timedelta(seconds=31))
    assert (world.aws.instances[A], world.aws.termination[A]) == (True, False)


def test_a_protection_pass_leaves_the_queue_and_the_scaling_condition_alone() -> None:
    world = World()
    world.aws.visible = 4
    world.run()
    scaling = condition(world.status, "Scaling")
    world.aws.fail["queue_depth"] = AwsFailure("GetQueueAttributes", "AccessDenied", "would fail if read")
    world.aws.visible = 40
    outcome = world.run(now=NOW + timedelta(seconds=1), scale=False)
    assert outcome.failures == []
    assert world.status["backlog"] == 4
    assert condition(world.status, "Scaling") == scaling
    assert world.aws.calls == [("set_desired_capacity", 1)]  # only the first pass's


def test_no_scale_in_while_instance_protection_fails() -> None:
    world = World()
    world.add_instance(A, "na")
    world.add_instance(B, "nb")
    world.aws.desired = 2
    world.busy("na")
    world.aws.fail["set_scale_in_protection"] = AwsRetryable("SetInstanceProtection", "Throttling", "slow down")
    outcome = world.run()
    assert outcome.protection_failure is not None and outcome.protection_failure.retryable
    assert world.aws.desired == 2 and ("terminate_instance", B) not in world.aws.calls  # the run stopped
    assert world.lease_api.patches == []
    assert condition(world.status, "Protected")["status"] == "False"
    assert condition(world.status, "Ready")["reason"] == "Retrying"
    del world.aws.fail["set_scale_in_protection"]
    world.run(now=NOW + timedelta(seconds=1))
    assert world.aws.instances[A]
    assert world.aws.calls[-1] == ("terminate_instance", B)  # nb has no worker: it goes at once
    assert world.aws.desired == 1


def test_a_mode_change_posts_an_event_even_when_the_count_stays() -> None:
    world = World()
    world.aws.visible = 10
    world.run()
    assert world.aws.desired == 2
    world.spec = {**spec(), "mode": "Manual", "replicas": 2}
    world.generation = 2
    pinned = world.run(now=NOW + timedelta(seconds=1))
    assert [(e.type, e.reason) for e in pinned.events] == [("Normal", "ModeChanged")]
    assert "Autoscaling -> Manual" in pinned.events[0].message
    assert world.status["mode"] == "Manual"

    world.spec = spec()
    world.generation = 3
    back = world.run(now=NOW + timedelta(seconds=2))
    assert [(e.reason, e.message.split(":")[0]) for e in back.events] == [("ModeChanged", "Manual -> Autoscaling")]
    assert world.run(now=NOW + timedelta(seconds=3)).events == []


def test_recovery_posts_one_event() -> None:
    world = World()
    world.run()
    assert [e.reason for e in world.run(now=NOW + timedelta(seconds=1)).events] == []  # no recovery from nothing
    world.aws.queue_exists = False
    world.run(now=NOW + timedelta(seconds=2))
    world.aws.queue_exists = True
    recovered = world.run(now=NOW + timedelta(seconds=3))
    assert [(e.type, e.reason) for e in recovered.events] == [("Normal", "Recovered")]
    assert "QueueNotFound" in recovered.events[0].message
    assert condition(world.status, "Ready")["status"] == "True"
    assert world.run(now=NOW + timedelta(seconds=4)).events == []


def test_without_a_group_name_nothing_is_touched() -> None:
    world = World(spec={**spec(), "nodeGroup": {}})
    world.add_instance(A, "na")
    world.kube.nodes["na"] = NodeRecord(
        name="na", provider_id=f"aws:///us-east-1a/{A}", annotations={PROTECTED_BY_ANNOTATION: REF.owner}
    )
    outcome = world.run()
    assert outcome.protection_failure is not None and outcome.protection_failure.reason == "InvalidSpec"
    assert "autoScalingGroupName" in condition(world.status, "Protected")["message"]
    assert world.kube.patches == []  # our annotation stays until we know the group again


def _status_schema() -> dict[str, Any]:
    """The status schema of the CRD the chart installs, as plain JSON Schema (unknown fields are
    an error here: the API server would silently prune them)."""
    import yaml

    from framescale_operator import crd

    document = yaml.safe_load((crd.repo_root() / crd.CHART_CRD_PATH).read_text())
    (version,) = document["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("x-kubernetes-validations", None)
            if "properties" in node:
                node["additionalProperties"] = False
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    strict(schema)
    return schema


def test_the_status_a_pass_writes_fits_the_crd_schema() -> None:
    import jsonschema

    world = World(spec={**spec(), "mode": "Manual", "replicas": 1})
    for instance_id, node_name in ((A, "na"), (B, "nb"), (C, "nc")):
        world.add_instance(instance_id, node_name)
    world.aws.desired, world.aws.delayed = 3, 2
    world.busy("na")
    world.worker("nb")
    world.busy("nc")
    world.aws.states[C] = "Terminating:Wait"
    world.run()
    later = NOW + timedelta(seconds=61)
    world.busy("na", renewed=later)
    world.worker("nb", renewed=later)
    world.busy("nc", renewed=later)
    world.run(now=later)  # a heartbeat recorded in the hold
    assert world.status["drainingNodes"] and world.status["lifecycleHolds"]
    assert world.status["lifecycleHolds"][0]["lastHeartbeat"]
    jsonschema.validate(world.status, _status_schema())
    deleting = World(spec=world.spec, aws=world.aws, kube=world.kube, lease_api=world.lease_api, status=world.status)
    deleting.run(now=NOW + timedelta(seconds=62), deleting_since=NOW + timedelta(seconds=62))
    conflict = World(ownership=plan.Ownership(group_owner="jobs/older"))
    conflict.run()
    for status in (deleting.status, conflict.status):
        jsonschema.validate(status, _status_schema())
