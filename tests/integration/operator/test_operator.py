"""The operator end to end: kopf in a child process, the Kubernetes API emulator over HTTP,
the moto server over HTTP. Every assertion reads real state: the Auto Scaling group and the
instances in moto, the VideoPipeline, Nodes and Events in the emulator.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from framescale import names
from framescale.busy_lease import parse_time
from framescale_operator.protection import PROTECTED_BY_ANNOTATION
from tests.integration.operator.conftest import POLL, KubeClient, OperatorProcess, Pipeline, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.operator, pytest.mark.slow]


def _reasons(kube: KubeClient, namespace: str) -> list[str]:
    return [event.get("reason", "") for event in kube.events(namespace)]


def _annotations(kube: KubeClient, node: str) -> dict[str, str]:
    return kube.node(node).get("metadata", {}).get("annotations") or {}


def _node_protected(kube: KubeClient, node: str) -> bool:
    annotations = _annotations(kube, node)
    return (
        annotations.get(names.CLUSTER_AUTOSCALER_SCALE_DOWN_DISABLED) == "true"
        and annotations.get(names.KARPENTER_DO_NOT_DISRUPT) == "true"
    )


def _node_clear(kube: KubeClient, node: str) -> bool:
    annotations = _annotations(kube, node)
    ours = (names.CLUSTER_AUTOSCALER_SCALE_DOWN_DISABLED, names.KARPENTER_DO_NOT_DISRUPT, PROTECTED_BY_ANNOTATION)
    return not any(key in annotations for key in ours)


def test_status_appears_when_a_pipeline_is_created(pipeline: Pipeline, kube: KubeClient) -> None:
    pipeline.create()

    status = wait_for(lambda: pipeline.condition("Ready") and pipeline.status(), "the first status")
    assert status["mode"] == "Autoscaling"
    assert status["desiredReplicas"] == 0
    assert status["replicas"] == 0
    assert status["backlog"] == 0
    assert status["inFlight"] == 0
    assert status["busyNodes"] == []
    assert status["protectedInstances"] == []
    assert status["observedGeneration"] == 1
    assert pipeline.condition("Ready")["status"] == "True"
    assert pipeline.condition("Scaling")["reason"] == "Steady"
    # The finalizer went in through kopf's JSON patch with a resourceVersion test.
    assert "framescale.io/operator" in kube.vp(pipeline.namespace, pipeline.name)["metadata"]["finalizers"]


def test_backlog_scales_out_within_a_poll_and_in_to_zero_after_the_cooldown(
    pipeline: Pipeline, kube: KubeClient
) -> None:
    world = pipeline.world
    cooldown = 3
    pipeline.create(targetBacklogPerReplica=2, scaleInCooldownSeconds=cooldown)
    wait_for(lambda: pipeline.condition("Ready"), "the first status")

    world.send(pipeline.queue_url, 5)
    wait_for(lambda: world.desired(pipeline.group) == 3, "desired capacity ceil(5 / 2) = 3")
    status = wait_for(lambda: (s := pipeline.status()).get("replicas") == 3 and s, "3 instances in service")
    assert status["backlog"] == 5
    assert status["desiredReplicas"] == 3
    assert status["lastScaleDirection"] == "Out"
    scaled_out_at = parse_time(status["lastScaleTime"])
    assert "Scaled" in _reasons(kube, pipeline.namespace)

    # Workers take every message: nothing is visible, all are in flight, and the nodes stay.
    received = []
    while len(received) < 5:
        batch = world.sqs.receive_message(QueueUrl=pipeline.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=120)
        received.extend(batch.get("Messages", []))
    status = wait_for(lambda: (s := pipeline.status()).get("inFlight") == 5 and s, "5 messages in flight")
    assert status["backlog"] == 5
    assert world.desired(pipeline.group) == 3

    # The jobs finish: the queue is empty, and after the cooldown the group goes to zero.
    for message in received:
        world.sqs.delete_message(QueueUrl=pipeline.queue_url, ReceiptHandle=message["ReceiptHandle"])
    wait_for(lambda: world.desired(pipeline.group) == 0, "desired capacity 0")
    wait_for(lambda: world.in_service(pipeline.group) == [], "every instance terminated")
    status = wait_for(lambda: (s := pipeline.status()).get("replicas") == 0 and s, "status.replicas 0")
    assert status["backlog"] == 0
    assert status["lastScaleDirection"] == "In"
    scaled_in_at = parse_time(status["lastScaleTime"])
    assert scaled_out_at is not None and scaled_in_at is not None
    assert (scaled_in_at - scaled_out_at).total_seconds() >= cooldown


def test_activation_backlog_gates_the_scale_from_zero(pipeline: Pipeline) -> None:
    world = pipeline.world
    pipeline.create(targetBacklogPerReplica=2, activationBacklog=3)
    wait_for(lambda: pipeline.condition("Ready"), "the first status")

    world.send(pipeline.queue_url, 2)
    wait_for(lambda: pipeline.status().get("backlog") == 2, "backlog 2 in status")
    assert pipeline.condition("Scaling")["reason"] == "BelowActivation"
    assert world.desired(pipeline.group) == 0

    world.send(pipeline.queue_url, 2)
    wait_for(lambda: world.desired(pipeline.group) == 2, "one step from 0 to ceil(4 / 2) = 2")
    assert pipeline.condition("Scaling")["reason"] == "ScaleFromZero"


def test_scale_subresource_pins_the_count_and_null_returns_to_autoscaling(pipeline: Pipeline, kube: KubeClient) -> None:
    world = pipeline.world
    pipeline.create(scaleInCooldownSeconds=1)
    wait_for(lambda: pipeline.condition("Ready"), "the first status")

    # What `kubectl scale vp/detector --replicas=2` sends.
    kube.merge_patch(kube.vp_path(pipeline.namespace, pipeline.name, "scale"), {"spec": {"replicas": 2}})
    wait_for(lambda: world.desired(pipeline.group) == 2, "desired capacity pinned to 2")
    status = wait_for(lambda: (s := pipeline.status()).get("mode") == "Manual" and s, "mode Manual")
    assert status["desiredReplicas"] == 2
    assert pipeline.condition("Scaling")["reason"] == "Pinned"

    kube.merge_patch(kube.vp_path(pipeline.namespace, pipeline.name), {"spec": {"replicas": None}})
    wait_for(lambda: pipeline.status().get("mode") == "Autoscaling", "mode Autoscaling")
    wait_for(lambda: world.desired(pipeline.group) == 0, "the empty queue brings the group back to 0")
    assert pipeline.status()["observedGeneration"] == 3


def test_busy_node_is_protected_survives_scale_in_and_is_released_when_its_lease_lapses(
    pipeline: Pipeline, kube: KubeClient
) -> None:
    world = pipeline.world
    pipeline.create(targetBacklogPerReplica=2, scaleInCooldownSeconds=1)
    world.send(pipeline.queue_url, 4)
    wait_for(lambda: len(world.in_service(pipeline.group)) == 2, "2 instances in service")
    busy_id, idle_id = world.in_service(pipeline.group)
    busy_node, idle_node = pipeline.node_for(busy_id), pipeline.node_for(idle_id)

    with pipeline.busy(busy_node):
        wait_for(lambda: world.scale_in_protected(pipeline.group, busy_id), "scale-in protection on")
        wait_for(lambda: world.termination_protected(busy_id), "DisableApiTermination on")
        wait_for(lambda: _node_protected(kube, busy_node), "the busy Node annotated")
        status = wait_for(lambda: (s := pipeline.status()).get("protectedInstances") and s, "status shows it")
        assert status["busyNodes"] == [busy_node]
        assert status["protectedInstances"] == [busy_id]
        assert _annotations(kube, busy_node)[PROTECTED_BY_ANNOTATION] == f"{pipeline.namespace}/{pipeline.name}"
        assert not world.scale_in_protected(pipeline.group, idle_id)
        assert not world.termination_protected(idle_id)
        assert _node_clear(kube, idle_node)
        assert "Protected" in _reasons(kube, pipeline.namespace)

        # The queue drains: the group scales in, but not below the busy node, and keeps it.
        world.drain(pipeline.queue_url)
        wait_for(lambda: world.in_service(pipeline.group) == [busy_id], "the idle instance removed")
        assert world.instance_state(idle_id) in {"shutting-down", "terminated"}
        assert world.desired(pipeline.group) == 1
        assert world.scale_in_protected(pipeline.group, busy_id)
        assert pipeline.condition("Scaling")["reason"] == "BusyNodes"

    # The worker stops renewing (as if it crashed): the Lease lapses with no further write.
    wait_for(lambda: not world.scale_in_protected(pipeline.group, busy_id), "scale-in protection off")
    wait_for(lambda: not world.termination_protected(busy_id), "DisableApiTermination off")
    wait_for(lambda: _node_clear(kube, busy_node), "the Node annotations removed")
    wait_for(lambda: pipeline.status().get("busyNodes") == [], "no busy nodes in status")
    assert pipeline.status()["protectedInstances"] == []
    assert "Released" in _reasons(kube, pipeline.namespace)
    wait_for(lambda: world.in_service(pipeline.group) == [], "min 0: the last instance goes too")


def test_idle_lease_releases_protection_at_once(pipeline: Pipeline, kube: KubeClient) -> None:
    world = pipeline.world
    pipeline.create(spec={**pipeline.spec(), "replicas": 1})
    wait_for(lambda: len(world.in_service(pipeline.group)) == 1, "1 instance in service")
    (instance_id,) = world.in_service(pipeline.group)
    node = pipeline.node_for(instance_id)

    pipeline.hold_lease(node, active_jobs=2, duration=300)
    wait_for(lambda: world.scale_in_protected(pipeline.group, instance_id), "scale-in protection on")
    wait_for(lambda: world.termination_protected(instance_id), "DisableApiTermination on")
    wait_for(lambda: _node_protected(kube, node), "Node annotated")

    pipeline.hold_lease(node, active_jobs=0, duration=300)  # the worker finished its last job
    wait_for(lambda: not world.scale_in_protected(pipeline.group, instance_id), "scale-in protection off")
    wait_for(lambda: not world.termination_protected(instance_id), "DisableApiTermination off")
    wait_for(lambda: _node_clear(kube, node), "Node annotations removed")
    assert world.desired(pipeline.group) == 1  # pinned: the count does not move


def test_invalid_spec_is_reported_in_a_condition_and_recovers(pipeline: Pipeline, kube: KubeClient) -> None:
    # The CRD's CEL rule rejects this on a real API server; the emulator has no schema,
    # so the operator's own validation must catch it.
    pipeline.create(minReplicas=3, maxReplicas=1)
    ready = wait_for(lambda: pipeline.condition("Ready"), "a Ready condition")
    assert ready["status"] == "False"
    assert ready["reason"] == "InvalidSpec"
    assert "minReplicas" in ready["message"]
    assert "InvalidSpec" in _reasons(kube, pipeline.namespace)
    assert pipeline.world.desired(pipeline.group) == 0

    kube.merge_patch(kube.vp_path(pipeline.namespace, pipeline.name), {"spec": {"autoscaling": {"maxReplicas": 4}}})
    wait_for(lambda: pipeline.condition("Ready").get("status") == "True", "Ready once the spec is fixed")
    wait_for(lambda: pipeline.world.desired(pipeline.group) == 3, "minReplicas 3 applied")


def test_deleting_a_pipeline_releases_its_protection(pipeline: Pipeline, kube: KubeClient) -> None:
    world = pipeline.world
    pipeline.create(spec={**pipeline.spec(), "replicas": 1})
    wait_for(lambda: len(world.in_service(pipeline.group)) == 1, "1 instance in service")
    (instance_id,) = world.in_service(pipeline.group)
    node = pipeline.node_for(instance_id)
    pipeline.hold_lease(node, duration=300)
    wait_for(lambda: world.termination_protected(instance_id) and _node_protected(kube, node), "protected")

    kube.delete(kube.vp_path(pipeline.namespace, pipeline.name))
    wait_for(
        lambda: kube.maybe_get(kube.vp_path(pipeline.namespace, pipeline.name)) is None,
        "the finalizer released and the object gone",
    )
    assert not world.scale_in_protected(pipeline.group, instance_id)
    assert not world.termination_protected(instance_id)
    assert _node_clear(kube, node)


def test_a_steady_pipeline_writes_nothing(pipeline: Pipeline, kube: KubeClient) -> None:
    """Level-based: once the world matches the spec, further passes change nothing."""
    world = pipeline.world
    pipeline.create(targetBacklogPerReplica=2)
    world.send(pipeline.queue_url, 3)
    wait_for(lambda: pipeline.status().get("replicas") == 2, "2 instances in service")
    version = kube.vp(pipeline.namespace, pipeline.name)["metadata"]["resourceVersion"]
    activities = world.autoscaling.describe_scaling_activities(AutoScalingGroupName=pipeline.group)["Activities"]
    events = len(kube.events(pipeline.namespace))

    time.sleep(4 * POLL)  # four more passes

    assert kube.vp(pipeline.namespace, pipeline.name)["metadata"]["resourceVersion"] == version
    again = world.autoscaling.describe_scaling_activities(AutoScalingGroupName=pipeline.group)["Activities"]
    assert len(again) == len(activities)
    assert len(kube.events(pipeline.namespace)) == events


def test_metrics_and_liveness(pipeline: Pipeline, operator_process: OperatorProcess) -> None:
    pipeline.create(spec={**pipeline.spec(), "replicas": 0})
    pipeline.world.send(pipeline.queue_url, 3)
    labels = f'namespace="{pipeline.namespace}",pipeline="{pipeline.name}"'

    def exported() -> str | None:
        text = operator_process.metrics()
        return text if f"framescale_approximate_backlog_size{{{labels}}} 3.0" in text else None

    text = wait_for(exported, "the backlog exported")
    assert f"framescale_has_backlog_without_capacity{{{labels}}} 1.0" in text
    assert f"framescale_approximate_backlog_size_per_instance{{{labels}}} 3.0" in text
    assert f"framescale_desired_replicas{{{labels}}} 0.0" in text
    assert f"framescale_current_replicas{{{labels}}} 0.0" in text
    assert f"framescale_protected_instances{{{labels}}} 0.0" in text
    assert "framescale_scaling_events_total" in text
    with urllib.request.urlopen(operator_process.health_url, timeout=5) as response:
        assert response.status == 200
