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
from framescale_operator.protection import PROTECTED_BY_ANNOTATION, GroupInstance, NodeRecord

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
        return {i: self.termination.get(i, False) for i in instance_ids if i in self.instances}

    def set_termination_protection(self, instance_id: str, enabled: bool) -> None:
        self._maybe_fail("set_termination_protection")
        self.calls.append(("set_termination_protection", instance_id, enabled))
        self.termination[instance_id] = enabled


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
            )
        )

    def run(self, now: datetime = NOW, audit: bool = False) -> reconcile.Outcome:
        snapshot = reconcile.Snapshot(
            spec=self.spec,
            status=self.status,
            generation=self.generation,
            leases=list(self.leases),
            nodes=dict(self.kube.nodes),
            now=now,
            audit=audit,
        )
        outcome = reconcile.reconcile(REF, snapshot, aws=self.aws, nodes_api=self.kube)
        # What kopf does with the patch: merge it into status (None deletes).
        for key, value in outcome.status_patch.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        return outcome


def condition(status: dict[str, Any], type: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type)


A, B = "i-0000000000000000a", "i-0000000000000000b"


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
    world = World(spec={**spec(), "replicas": 2})
    world.run()
    assert world.aws.desired == 2
    assert world.status["mode"] == "Manual"
    assert condition(world.status, "Scaling")["reason"] == "Pinned"


def test_busy_node_is_protected_before_the_scale_in_and_floors_it() -> None:
    world = World()
    world.add_instance(A, "na")
    world.add_instance(B, "nb")
    world.aws.desired = 2
    world.busy("na")
    outcome = world.run()
    order = [call[0] for call in world.aws.calls]
    assert order == ["set_scale_in_protection", "set_termination_protection", "set_desired_capacity"]
    assert world.aws.desired == 1  # not 0: one node is busy
    assert world.aws.instances[A] is True and world.aws.termination[A] is True
    assert world.kube.nodes["na"].fully_annotated(REF.owner)
    assert world.status["busyNodes"] == ["na"]
    assert world.status["protectedInstances"] == [A]
    assert {e.reason for e in outcome.events} == {"Protected", "Scaled"}


def test_release_order_turns_termination_off_first() -> None:
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
        ("set_scale_in_protection", (A,), False),
    ]
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


def test_audit_heals_a_termination_flag_left_by_a_crash() -> None:
    world = World()
    world.add_instance(A, "na")
    world.aws.desired = 1
    world.aws.termination[A] = True  # set by an operator that crashed before the scale-in flag
    world.run()
    assert world.aws.termination[A] is True  # not seen without a full audit
    world.run(audit=True)
    assert world.aws.termination[A] is False


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
    assert isinstance(outcome.retry, AwsRetryable)
    assert condition(world.status, "Ready")["reason"] == "Retrying"
    assert "lastScaleTime" not in world.status  # nothing was scaled
    del world.aws.fail["set_desired_capacity"]
    assert world.run().retry is None
    assert world.aws.desired == 2


def test_node_patch_failures_are_reported_but_never_block_the_aws_side() -> None:
    world = World()
    world.add_instance(A, "na")
    world.add_instance(B, "nb")
    world.aws.desired = 2
    world.busy("na")
    world.kube.fail = KubeRetryable("PatchNode", 409, "Conflict")
    outcome = world.run()
    assert isinstance(outcome.retry, KubeRetryable)
    assert world.aws.instances[A] and world.aws.termination[A]  # protected anyway
    assert world.aws.desired == 1  # and scaled anyway
    ready = condition(world.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NodeAnnotationFailed")
    assert [e.reason for e in outcome.events].count("NodeAnnotationFailed") == 1

    world.kube.fail = KubeError("PatchNode", 403, "Forbidden")
    again = world.run(now=NOW + timedelta(seconds=1))
    assert again.retry is None  # not worth a fast retry; the next poll tries again
    assert "NodeAnnotationFailed" not in [e.reason for e in again.events]  # no new Event

    world.kube.fail = None
    world.run(now=NOW + timedelta(seconds=2))
    assert condition(world.status, "Ready")["status"] == "True"
    assert world.kube.nodes["na"].fully_annotated(REF.owner)


def test_other_aws_errors_are_reported_not_retried_in_a_loop() -> None:
    world = World()
    world.aws.visible = 3
    world.run()
    world.aws.fail["describe_group"] = AwsFailure("DescribeAutoScalingGroups", "AccessDenied", "no")
    outcome = world.run(now=NOW + timedelta(seconds=1))
    assert outcome.retry is None
    assert condition(world.status, "Ready")["reason"] == "AwsError"
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
