"""One reconcile pass against in-memory AWS and Node fakes: what it changes, writes and reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from framescale import busy_lease, names
from framescale_operator import reconcile
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


@dataclass
class FakeAws:
    visible: int = 0
    in_flight: int = 0
    desired: int = 0
    max_size: int = 10
    instances: dict[str, bool] = field(default_factory=dict)  # id -> protected from scale-in
    termination: dict[str, bool] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> EC2 tags
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
        return QueueDepth(self.visible, self.in_flight)

    def describe_group(self, name: str) -> GroupState:
        self._maybe_fail("describe_group")
        if not self.group_exists:
            raise GroupNotFound("DescribeAutoScalingGroups", "NotFound", f"no group {name}")
        return GroupState(
            name=name,
            desired=self.desired,
            min_size=0,
            max_size=self.max_size,
            instances=tuple(GroupInstance(i, "InService", p) for i, p in sorted(self.instances.items())),
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


def spec(**autoscaling: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "queueUrl": QUEUE,
        "nodeGroup": {"autoScalingGroupName": GROUP},
        "autoscaling": {"targetBacklogPerReplica": 5, "scaleInCooldownSeconds": 60, **autoscaling},
    }
    return body


@dataclass
class World:
    aws: FakeAws = field(default_factory=FakeAws)
    kube: FakeNodes = field(default_factory=FakeNodes)
    status: dict[str, Any] = field(default_factory=dict)
    leases: list[dict[str, Any]] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=spec)
    generation: int = 1

    def add_instance(self, instance_id: str, node_name: str) -> None:
        self.aws.instances[instance_id] = False
        self.kube.nodes[node_name] = NodeRecord(name=node_name, provider_id=f"aws:///us-east-1a/{instance_id}")

    def busy(self, node_name: str, jobs: int = 1, renewed: datetime = NOW) -> None:
        """A worker's Lease, acquired long before its last renewal (expiry counts from the renewal)."""
        self.leases = [
            lease for lease in self.leases if lease["metadata"]["annotations"][names.LEASE_NODE_ANNOTATION] != node_name
        ]
        self.leases.append(
            busy_lease.lease_body(
                node_name=node_name,
                namespace="jobs",
                holder="w",
                active_jobs=jobs,
                duration_seconds=30,
                now=renewed,
                acquired=renewed - timedelta(hours=1),
            )
        )

    def run(self, now: datetime = NOW, scale: bool = True) -> reconcile.Outcome:
        snapshot = reconcile.Snapshot(
            spec=self.spec,
            status=self.status,
            generation=self.generation,
            leases=list(self.leases),
            nodes=dict(self.kube.nodes),
            now=now,
        )
        outcome = reconcile.reconcile(REF, snapshot, aws=self.aws, nodes_api=self.kube, scale=scale)
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


def test_busy_node_is_marked_and_protected_before_the_scale_in_and_floors_it() -> None:
    world = World()
    world.add_instance(A, "na")
    world.add_instance(B, "nb")
    world.aws.desired = 2
    world.busy("na")
    outcome = world.run()
    assert world.aws.calls == [
        ("set_marker", A, SCALE_IN_MARKER),  # the tag before its flag: a crash leaves no untracked flag
        ("set_scale_in_protection", (A,), True),
        ("set_marker", A, TERMINATION_MARKER),
        ("set_termination_protection", A, True),
        ("set_desired_capacity", 1),
    ]
    assert world.aws.desired == 1  # not 0: one node is busy
    assert world.aws.tags[A] == {SCALE_IN_MARKER: REF.owner, TERMINATION_MARKER: REF.owner}
    assert world.kube.nodes["na"].fully_annotated(REF.owner)
    assert world.status["busyNodes"] == ["na"]
    assert world.status["protectedInstances"] == [A]
    assert condition(world.status, "Protected")["status"] == "True"
    assert {e.reason for e in outcome.events} == {"Protected", "Scaled"}


def test_release_clears_each_flag_before_its_tag_and_scale_in_last() -> None:
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    world.busy("na")
    world.run()
    world.aws.calls.clear()
    world.busy("na", jobs=0)
    world.run()
    protection_calls = [call for call in world.aws.calls if call[0] != "set_desired_capacity"]
    assert protection_calls == [
        ("set_termination_protection", A, False),
        ("clear_marker", A, TERMINATION_MARKER),
        ("set_scale_in_protection", (A,), False),
        ("clear_marker", A, SCALE_IN_MARKER),
    ]
    assert world.aws.tags[A] == {}
    assert PROTECTED_BY_ANNOTATION not in world.kube.nodes["na"].annotations
    assert world.status["protectedInstances"] == []


def test_an_expired_lease_releases_without_any_lease_write() -> None:
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    world.busy("na")
    world.run()
    assert world.aws.instances[A]
    world.run(now=NOW + timedelta(seconds=31))  # the Lease lapsed: 30 s without renewal
    assert world.aws.instances[A] is False
    assert world.aws.termination[A] is False
    assert world.status["busyNodes"] == []


def test_protection_set_by_someone_else_is_left_in_place() -> None:
    """A person's flags (no tags of ours) survive our releases, on idle and on once-busy instances,
    and another VideoPipeline on the same group does not release what this one set."""
    world = World(spec={**spec(), "mode": "Manual", "replicas": 3})
    for instance_id, node_name in ((A, "na"), (B, "nb"), (C, "nc")):
        world.add_instance(instance_id, node_name)
    world.aws.desired = 3
    world.aws.protected_by_someone_else(B)  # never busy
    world.aws.protected_by_someone_else(C)  # becomes busy, then idle
    world.busy("na")
    world.busy("nc")
    world.run()
    assert world.aws.tags[A] == {SCALE_IN_MARKER: REF.owner, TERMINATION_MARKER: REF.owner}
    assert C not in world.aws.tags  # already protected: nothing of ours to add
    assert world.status["protectedInstances"] == [A, C]

    other = reconcile.PipelineRef(namespace="jobs", name="other")  # same group, no busy Leases of its own
    snapshot = reconcile.Snapshot(
        spec=world.spec, status={}, generation=1, leases=[], nodes=dict(world.kube.nodes), now=NOW
    )
    reconcile.reconcile(other, snapshot, aws=world.aws, nodes_api=world.kube)
    assert world.aws.instances[A] and world.aws.termination[A]  # not the other pipeline's to release

    world.busy("na", jobs=0)
    world.busy("nc", jobs=0)
    world.run(now=NOW + timedelta(seconds=1))
    assert (world.aws.instances[A], world.aws.termination[A]) == (False, False)
    for theirs in (B, C):
        assert (world.aws.instances[theirs], world.aws.termination[theirs]) == (True, True)
    assert {call[1] for call in world.aws.calls if call[0] == "set_termination_protection"} == {A}


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


def test_release_undoes_everything_for_a_deleted_pipeline() -> None:
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    world.busy("na")
    world.run()
    actions = reconcile.release(REF, world.spec, world.kube.nodes, aws=world.aws, nodes_api=world.kube)
    assert actions
    assert world.aws.instances[A] is False
    assert world.aws.termination[A] is False
    assert PROTECTED_BY_ANNOTATION not in world.kube.nodes["na"].annotations
    assert world.aws.desired == 1  # deletion does not resize the group


def test_release_when_the_group_is_gone() -> None:
    world = World()
    world.aws.group_exists = False
    assert reconcile.release(REF, world.spec, {}, aws=world.aws, nodes_api=world.kube) == []


def test_status_patch_deletes_what_disappeared() -> None:
    assert reconcile.status_patch({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"c": 3, "b": None}


def test_release_fails_while_a_node_cannot_be_cleared() -> None:
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    world.busy("na")
    world.run()
    world.kube.fail = KubeRetryable("PatchNode", 503, "Unavailable")
    with pytest.raises(KubeRetryable):
        reconcile.release(REF, world.spec, world.kube.nodes, aws=world.aws, nodes_api=world.kube)
    assert world.aws.instances[A] is False  # the AWS side is released all the same


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
    assert (world.aws.instances[A], world.aws.termination[A]) == (False, False)
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
    assert (world.aws.instances[A], world.aws.termination[A]) == (False, False)


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
    assert world.aws.desired == 2  # scaling in could pick the busy, unprotected instance
    assert condition(world.status, "Scaling")["reason"] == "ProtectionPending"
    assert condition(world.status, "Protected")["status"] == "False"
    assert condition(world.status, "Ready")["reason"] == "Retrying"
    del world.aws.fail["set_scale_in_protection"]
    world.run(now=NOW + timedelta(seconds=1))
    assert world.aws.instances[A]
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
