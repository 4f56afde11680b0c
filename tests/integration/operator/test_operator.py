"""The operator end to end: kopf in a child process, the Kubernetes API emulator over HTTP,
the moto server over HTTP. Every assertion reads real state: the Auto Scaling group and the
instances in moto, the VideoPipeline, Nodes and Events in the emulator.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from framescale import busy_lease, names
from framescale.busy_lease import parse_time
from framescale_operator.protection import PROTECTED_BY_ANNOTATION
from framescale_operator.scale_mode import MIRROR_ANNOTATION
from tests.integration.operator.conftest import (
    LEASE_SECONDS,
    POLL,
    KubeClient,
    OperatorProcess,
    Pipeline,
    wait_for,
)
from tests.integration.operator.kube_emulator import EmulatorThread

pytestmark = [pytest.mark.integration, pytest.mark.operator, pytest.mark.slow]
SLACK = 2.5  # seconds beyond one poll interval: the 1 s timer tick and a pass on a loaded machine


def _reasons(kube: KubeClient, namespace: str) -> list[str]:
    return [event.get("reason", "") for event in kube.events(namespace)]


def _scaled(kube: KubeClient, namespace: str) -> list[str]:
    """The messages of the Scaled Events: one per change of the desired capacity."""
    return [event.get("message", "") for event in kube.events(namespace) if event.get("reason") == "Scaled"]


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
    assert pipeline.condition("Protected")["status"] == "True"
    # The finalizer went in through kopf's JSON patch with a resourceVersion test.
    assert "framescale.io/operator" in kube.vp(pipeline.namespace, pipeline.name)["metadata"]["finalizers"]


def test_backlog_scales_out_within_one_poll_interval_of_the_spec(pipeline: Pipeline) -> None:
    """The spec's pollIntervalSeconds (3 s) sets the pace, not the operator's default (60 s)."""
    world = pipeline.world
    poll = 3
    pipeline.create(targetBacklogPerReplica=2, scaleInCooldownSeconds=0, pollIntervalSeconds=poll)
    wait_for(lambda: pipeline.condition("Ready"), "the first status")  # kopf's start-up is not timed

    world.send(pipeline.queue_url, 5)
    sent = time.monotonic()
    wait_for(lambda: world.desired(pipeline.group) == 3, "desired capacity ceil(5 / 2) = 3")
    took = time.monotonic() - sent
    # One poll, plus the 1 s timer tick and a pass on a loaded machine; far below the default.
    assert took <= poll + SLACK, f"scaled out {took:.1f}s after the messages arrived; pollIntervalSeconds is {poll}"
    status = wait_for(lambda: (s := pipeline.status()).get("replicas") == 3 and s, "3 instances in service")
    assert status["backlog"] == 5
    assert status["lastScaleDirection"] == "Out"

    # Workers take every message: nothing is visible, all are in flight, and the nodes stay
    # although scale-in has no cooldown (the pass that saw them in flight also decided).
    received: list[dict[str, Any]] = []
    while len(received) < 5:
        batch = world.sqs.receive_message(QueueUrl=pipeline.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=120)
        received.extend(batch.get("Messages", []))
    status = wait_for(lambda: (s := pipeline.status()).get("inFlight") == 5 and s, "5 messages in flight")
    assert status["backlog"] == 5
    assert status["desiredReplicas"] == 3
    assert world.desired(pipeline.group) == 3


def test_scale_in_waits_for_the_cooldown_then_goes_to_zero(pipeline: Pipeline, kube: KubeClient) -> None:
    world = pipeline.world
    cooldown = 6
    pipeline.create(targetBacklogPerReplica=2, scaleInCooldownSeconds=cooldown)
    wait_for(lambda: pipeline.condition("Ready"), "the first status")
    world.send(pipeline.queue_url, 4)
    status = wait_for(lambda: (s := pipeline.status()).get("desiredReplicas") == 2 and s, "scaled out to 2")
    scaled_out_at = parse_time(status["lastScaleTime"])
    assert scaled_out_at is not None
    world.drain(pipeline.queue_url)  # every job done at once

    # The group stays up for the cooldown, and says why.
    reasons = set()
    while datetime.now(UTC) < scaled_out_at + timedelta(seconds=cooldown - 2):
        assert world.desired(pipeline.group) == 2, "scaled in before the cooldown was over"
        if pipeline.status().get("backlog") == 0:
            reasons.add(pipeline.condition("Scaling").get("reason"))
        time.sleep(0.5)
    assert reasons == {"ScaleInCooldown"}

    # Then it falls, to zero (minReplicas 0), and every instance goes.
    wait_for(lambda: world.desired(pipeline.group) == 0, "desired capacity 0 after the cooldown")
    wait_for(lambda: world.in_service(pipeline.group) == [], "every instance terminated")
    status = wait_for(lambda: (s := pipeline.status()).get("replicas") == 0 and s, "status.replicas 0")
    assert status["lastScaleDirection"] == "In"
    scaled_in_at = parse_time(status["lastScaleTime"])
    assert scaled_in_at is not None
    assert (scaled_in_at - scaled_out_at).total_seconds() >= cooldown
    # No worker Lease on either instance: both go, each by a termination the operator chose.
    assert _reasons(kube, pipeline.namespace).count("ScaledIn") == 2


def test_activation_backlog_gates_the_scale_from_zero(pipeline: Pipeline, kube: KubeClient) -> None:
    world = pipeline.world
    pipeline.create(targetBacklogPerReplica=2, activationBacklog=3)
    wait_for(lambda: pipeline.condition("Ready"), "the first status")

    world.send(pipeline.queue_url, 2)
    wait_for(lambda: pipeline.status().get("backlog") == 2, "backlog 2 in status")
    assert pipeline.condition("Scaling")["reason"] == "BelowActivation"  # stays so while the backlog does
    assert world.desired(pipeline.group) == 0  # decided by the pass that saw the backlog

    world.send(pipeline.queue_url, 2)
    wait_for(lambda: world.desired(pipeline.group) == 2, "from 0 to ceil(4 / 2) = 2")
    wait_for(lambda: _scaled(kube, pipeline.namespace), "the Scaled Event")
    time.sleep(2 * POLL + 0.5)  # later passes must not move it again
    (scaled,) = _scaled(kube, pipeline.namespace)
    assert scaled.startswith("desired capacity 0 -> 2:"), "one step from zero, straight to the size"
    assert world.desired(pipeline.group) == 2


def _scale(kube: KubeClient, pipeline: Pipeline) -> dict[str, Any]:
    return kube.get(kube.vp_path(pipeline.namespace, pipeline.name, "scale"))


def _mirrored(kube: KubeClient, pipeline: Pipeline, count: int) -> bool:
    body = kube.vp(pipeline.namespace, pipeline.name)
    annotation = (body["metadata"].get("annotations") or {}).get(MIRROR_ANNOTATION)
    return body["spec"]["replicas"] == count and annotation == str(count)


def test_scale_subresource_in_both_modes_kubectl_scale_pins_and_the_documented_edit_returns(
    pipeline: Pipeline, kube: KubeClient
) -> None:
    world = pipeline.world
    pipeline.create(scaleInCooldownSeconds=1)
    wait_for(lambda: pipeline.condition("Ready"), "the first status")
    scale_path = kube.vp_path(pipeline.namespace, pipeline.name, "scale")
    selector = f"app.kubernetes.io/component=worker,framescale.io/pipeline={pipeline.name}"

    # Autoscaling: GET /scale works (the CRD's default) and shows the operator's own count.
    scale = wait_for(lambda: (s := _scale(kube, pipeline))["status"]["selector"] and s, "the selector")
    assert scale["spec"]["replicas"] == 0 and scale["status"]["selector"] == selector
    world.send(pipeline.queue_url, 4)
    wait_for(lambda: world.desired(pipeline.group) == 2, "autoscaled to ceil(4 / 2) = 2")
    wait_for(lambda: _mirrored(kube, pipeline, 2), "2 mirrored into spec.replicas")
    wait_for(lambda: _scale(kube, pipeline)["status"]["replicas"] == 2, "GET /scale: 2 in service")
    assert pipeline.status()["mode"] == "Autoscaling"
    assert "Pinned" not in _reasons(kube, pipeline.namespace)

    # What `kubectl scale vp/detector --replicas=1` sends: a merge patch of /scale. It pins.
    assert kube.merge_patch(scale_path, {"spec": {"replicas": 1}})["spec"]["replicas"] == 1
    wait_for(lambda: kube.vp(pipeline.namespace, pipeline.name)["spec"]["mode"] == "Manual", "spec.mode Manual")
    wait_for(lambda: pipeline.status().get("mode") == "Manual", "status.mode Manual")
    wait_for(lambda: world.desired(pipeline.group) == 1, "held at the pinned 1 despite the backlog")
    assert "Pinned" in _reasons(kube, pipeline.namespace)
    assert _scale(kube, pipeline)["spec"]["replicas"] == 1
    # Manual: a second kubectl scale moves the count; the operator never writes spec.replicas.
    kube.merge_patch(scale_path, {"spec": {"replicas": 3}})
    wait_for(lambda: world.desired(pipeline.group) == 3, "pinned to 3")
    time.sleep(2 * POLL + 0.5)
    assert _scale(kube, pipeline)["spec"]["replicas"] == 3
    assert pipeline.condition("Scaling")["reason"] == "Pinned"

    # The documented edit back: kubectl patch vp/detector --type=merge -p '{"spec":{"mode":"Autoscaling"}}'
    kube.merge_patch(kube.vp_path(pipeline.namespace, pipeline.name), {"spec": {"mode": "Autoscaling"}})
    wait_for(lambda: pipeline.status().get("mode") == "Autoscaling", "status.mode Autoscaling")
    wait_for(lambda: world.desired(pipeline.group) == 2, "autoscaling again: back to 2 for the backlog of 4")
    wait_for(lambda: _mirrored(kube, pipeline, 2), "2 mirrored again")
    assert kube.vp(pipeline.namespace, pipeline.name)["spec"]["mode"] == "Autoscaling"
    assert _reasons(kube, pipeline.namespace).count("Pinned") == 1


def test_kubectl_scale_racing_the_mirror_write_is_never_lost(
    pipeline: Pipeline, kube: KubeClient, kube_api: EmulatorThread
) -> None:
    """kubectl scale lands between the operator's read and its mirror write: in even rounds exactly
    there (the emulator runs the kubectl write just before applying the mirror's), in odd rounds at
    a random moment. Every round must end pinned at the count kubectl wrote, never overwritten."""
    world = pipeline.world
    rng = random.Random(10)
    pipeline.create(maxReplicas=6, scaleInCooldownSeconds=0)
    wait_for(lambda: pipeline.condition("Ready"), "the first status")
    path = kube.vp_path(pipeline.namespace, pipeline.name)
    armed: dict[str, int] = {}
    interleaved: list[int] = []

    async def kubectl_scale_first(request: Any) -> None:
        """Before the operator's mirror write of this pipeline is applied, kubectl scale wins."""
        data = request.data if isinstance(request.data, dict) else {}
        mirror = MIRROR_ANNOTATION in ((data.get("metadata") or {}).get("annotations") or {})
        if "wanted" in armed and mirror and "replicas" in (data.get("spec") or {}) and request.name == pipeline.name:
            wanted = armed.pop("wanted")
            await asyncio.to_thread(kube.merge_patch, f"{path}/scale", {"spec": {"replicas": wanted}})
            interleaved.append(wanted)

    assert kube_api.emulator is not None
    kube_api.emulator.before_write.append(kubectl_scale_first)
    lost: list[str] = []
    rounds = 10
    try:
        for round_ in range(rounds):
            wanted = 4 + round_ % 2  # never a count the backlog (0..4 messages, 2 per node) asks for
            world.drain(pipeline.queue_url)
            if round_ % 2 == 0:
                wait_for(lambda: _mirrored(kube, pipeline, 0), "the empty queue mirrored as 0")
                armed["wanted"] = wanted
                world.send(pipeline.queue_url, 1 + round_ % 4)  # a new count to mirror: 1 or 2
                wait_for(lambda: len(interleaved) == round_ // 2 + 1, "the interleaved kubectl scale")  # noqa: B023
            else:
                world.send(pipeline.queue_url, rng.choice([0, 1, 2, 3, 4]))
                time.sleep(rng.uniform(0.0, 1.5))
                kube.merge_patch(f"{path}/scale", {"spec": {"replicas": wanted}})
            try:
                wait_for(lambda: kube.vp(pipeline.namespace, pipeline.name)["spec"]["mode"] == "Manual", "pinned")
                wait_for(lambda: world.desired(pipeline.group) == wanted, f"desired {wanted}", timeout=10)  # noqa: B023
            except AssertionError as error:
                lost.append(f"round {round_}: {error}")
            spec = kube.vp(pipeline.namespace, pipeline.name)["spec"]
            if (spec["replicas"], spec["mode"]) != (wanted, "Manual"):
                lost.append(f"round {round_}: wrote {wanted}, found {spec}")
            kube.merge_patch(path, {"spec": {"mode": "Autoscaling"}})
            wait_for(lambda: pipeline.status().get("mode") == "Autoscaling", "autoscaling again")
    finally:
        kube_api.emulator.before_write.remove(kubectl_scale_first)
    assert lost == []
    assert _reasons(kube, pipeline.namespace).count("Pinned") == rounds


def test_busy_node_is_protected_survives_scale_in_and_is_released_when_its_lease_lapses(
    pipeline: Pipeline, kube: KubeClient
) -> None:
    world = pipeline.world
    pipeline.create(targetBacklogPerReplica=2, scaleInCooldownSeconds=1)
    world.send(pipeline.queue_url, 4)
    wait_for(lambda: len(world.in_service(pipeline.group)) == 2, "2 instances in service")
    busy_id, idle_id = world.in_service(pipeline.group)
    busy_node, idle_node = pipeline.node_for(busy_id), pipeline.node_for(idle_id)
    owner = f"{pipeline.namespace}/{pipeline.name}"

    with pipeline.busy(busy_node):
        wait_for(lambda: world.fully_protected(pipeline.group, busy_id), "scale-in and termination protection on")
        wait_for(lambda: _node_protected(kube, busy_node), "the busy Node annotated")
        status = wait_for(lambda: (s := pipeline.status()).get("protectedInstances") and s, "status shows it")
        assert status["busyNodes"] == [busy_node]
        assert status["protectedInstances"] == [busy_id]
        assert world.tags(busy_id) == {
            "framescale.io/scale-in-protected-by": owner,
            "framescale.io/termination-protected-by": owner,
        }
        assert _annotations(kube, busy_node)[PROTECTED_BY_ANNOTATION] == owner
        assert world.scale_in_protected(pipeline.group, idle_id)  # every instance: AWS never picks
        assert not world.termination_protected(idle_id)
        assert _node_clear(kube, idle_node)
        assert pipeline.condition("Protected")["status"] == "True"
        assert "Protected" in _reasons(kube, pipeline.namespace)

        # The queue drains: the idle instance (no worker Lease on it) is terminated, the busy one kept.
        world.drain(pipeline.queue_url)
        wait_for(lambda: world.in_service(pipeline.group) == [busy_id], "the idle instance removed")
        wait_for(lambda: "ScaledIn" in _reasons(kube, pipeline.namespace), "a ScaledIn Event")
        assert world.instance_state(idle_id) in {"shutting-down", "terminated"}
        assert world.desired(pipeline.group) == 1
        assert world.scale_in_protected(pipeline.group, busy_id)
        assert pipeline.condition("Scaling")["reason"] == "BusyNodes"

    # The worker stops renewing (as if it crashed): the Lease lapses with no further write.
    wait_for(lambda: not world.termination_protected(busy_id), "termination protection off")
    assert world.tags(busy_id) == {"framescale.io/scale-in-protected-by": owner}
    wait_for(lambda: _node_clear(kube, busy_node), "the Node annotations removed")
    wait_for(lambda: pipeline.status().get("busyNodes") == [], "no busy nodes in status")
    assert pipeline.status()["protectedInstances"] == []
    assert "Released" in _reasons(kube, pipeline.namespace)
    wait_for(lambda: world.in_service(pipeline.group) == [], "min 0: the last instance goes too")


@pytest.mark.parametrize("offset", [-120.0, 120.0])
def test_a_worker_clock_two_minutes_off_keeps_its_busy_node_protected(
    pipeline: Pipeline, kube: KubeClient, offset: float
) -> None:
    """Liveness is judged on the operator's clock (renewTime changing), never by comparing clocks:
    a worker 120 s behind or ahead is busy for as long as it renews, and lapses when it stops."""
    world = pipeline.world
    pipeline.create(spec=pipeline.pinned(1))
    wait_for(lambda: len(world.in_service(pipeline.group)) == 1, "1 instance in service")
    (instance_id,) = world.in_service(pipeline.group)
    node = pipeline.node_for(instance_id)
    with pipeline.busy(node, clock_offset=offset):
        wait_for(lambda: world.fully_protected(pipeline.group, instance_id), "protected")
        for _ in range(int(2 * LEASE_SECONDS)):  # twice the Lease's duration: never seen lapsed
            assert world.termination_protected(instance_id)
            assert pipeline.status().get("busyNodes") == [node]
            time.sleep(1)
    wait_for(lambda: not world.termination_protected(instance_id), "released once it stopped renewing")


def test_a_lapsed_or_deleted_lease_releases_without_waiting_for_a_poll(pipeline: Pipeline, kube: KubeClient) -> None:
    """With a 60 s poll, only the Lease's own expiry (renewTime + leaseDurationSeconds) and its
    deletion can wake the pipeline in time."""
    world = pipeline.world
    pipeline.create(spec=pipeline.pinned(2, pollIntervalSeconds=60))
    wait_for(lambda: len(world.in_service(pipeline.group)) == 2, "2 instances in service")
    lapsing_id, deleted_id = world.in_service(pipeline.group)
    lapsing, deleted = pipeline.node_for(lapsing_id), pipeline.node_for(deleted_id)

    pipeline.hold_lease(deleted, duration=300)
    pipeline.hold_lease(lapsing, duration=LEASE_SECONDS - 1)  # never renewed
    protected_at = time.monotonic()
    wait_for(lambda: world.fully_protected(pipeline.group, lapsing_id), "the lapsing node protected")
    wait_for(lambda: world.fully_protected(pipeline.group, deleted_id), "the other node protected")
    assert time.monotonic() - protected_at < LEASE_SECONDS - 1, "protected too late to see it lapse"

    wait_for(lambda: not world.termination_protected(lapsing_id), "released once the Lease lapsed")
    assert world.fully_protected(pipeline.group, deleted_id)
    assert _node_protected(kube, deleted)
    wait_for(lambda: _node_clear(kube, lapsing), "the lapsed node's annotations removed")

    pipeline.delete_lease(deleted)  # a worker that cleaned up on its way out
    wait_for(lambda: not world.termination_protected(deleted_id), "released once the Lease was deleted")
    wait_for(lambda: _node_clear(kube, deleted), "the node's annotations removed")
    assert pipeline.status()["busyNodes"] == []


def test_idle_lease_releases_protection_at_once(pipeline: Pipeline, kube: KubeClient) -> None:
    world = pipeline.world
    pipeline.create(spec=pipeline.pinned(1))
    wait_for(lambda: len(world.in_service(pipeline.group)) == 1, "1 instance in service")
    (instance_id,) = world.in_service(pipeline.group)
    node = pipeline.node_for(instance_id)

    pipeline.hold_lease(node, active_jobs=2)
    wait_for(lambda: world.fully_protected(pipeline.group, instance_id), "scale-in and termination protection on")
    wait_for(lambda: _node_protected(kube, node), "Node annotated")

    pipeline.hold_lease(node, active_jobs=0)  # the worker finished its last job
    wait_for(lambda: not world.termination_protected(instance_id), "termination protection off")
    assert world.scale_in_protected(pipeline.group, instance_id)  # always on while managed
    wait_for(lambda: _node_clear(kube, node), "Node annotations removed")
    assert world.desired(pipeline.group) == 1  # pinned: the count does not move


def test_protection_goes_on_while_the_queue_is_missing(pipeline: Pipeline, kube: KubeClient) -> None:
    world = pipeline.world
    pipeline.create(spec=pipeline.pinned(1))
    wait_for(lambda: len(world.in_service(pipeline.group)) == 1, "1 instance in service")
    (instance_id,) = world.in_service(pipeline.group)
    node = pipeline.node_for(instance_id)
    world.sqs.delete_queue(QueueUrl=pipeline.queue_url)
    wait_for(lambda: pipeline.condition("Ready").get("reason") == "QueueNotFound", "Ready=False, QueueNotFound")

    pipeline.hold_lease(node)
    wait_for(lambda: world.fully_protected(pipeline.group, instance_id), "a new busy node protected")
    wait_for(lambda: _node_protected(kube, node), "its Node annotated")
    assert pipeline.condition("Protected")["status"] == "True"
    assert pipeline.condition("Scaling")["reason"] == "QueueNotFound"

    pipeline.hold_lease(node, active_jobs=0)
    wait_for(lambda: not world.termination_protected(instance_id), "released when idle")
    assert pipeline.condition("Ready")["reason"] == "QueueNotFound"


def test_protection_set_by_someone_else_is_left_in_place(pipeline: Pipeline, kube: KubeClient) -> None:
    """A person protected one instance by hand: its termination protection and node annotation
    survive the pipeline's passes and releases."""
    world = pipeline.world
    pipeline.create(spec=pipeline.pinned(2))
    wait_for(lambda: len(world.in_service(pipeline.group)) == 2, "2 instances in service")
    theirs, ours = world.in_service(pipeline.group)
    world.protect(pipeline.group, theirs)
    their_node = pipeline.node_for(theirs)
    kube.merge_patch(
        f"/api/v1/nodes/{their_node}", {"metadata": {"annotations": {names.KARPENTER_DO_NOT_DISRUPT: "true"}}}
    )
    for instance_id in (theirs, ours):
        pipeline.hold_lease(pipeline.node_for(instance_id))
    wait_for(lambda: world.fully_protected(pipeline.group, ours), "the busy instance protected")
    status = wait_for(
        lambda: (s := pipeline.status()).get("protectedInstances") == sorted([theirs, ours]) and s, "both counted"
    )
    assert status["busyNodes"] == sorted(pipeline.node_for(i) for i in (theirs, ours))
    assert "framescale.io/termination-protected-by" not in world.tags(theirs)  # already on: not ours

    for instance_id in (theirs, ours):
        pipeline.hold_lease(pipeline.node_for(instance_id), active_jobs=0)
    wait_for(lambda: not world.termination_protected(ours), "ours released when idle")
    assert world.termination_protected(theirs), "a person's protection was taken away"
    annotations = wait_for(
        lambda: (
            (a := kube.node(their_node)["metadata"].get("annotations", {})).get(PROTECTED_BY_ANNOTATION) is None and a
        ),
        "our annotations gone from their node",
    )
    assert annotations.get(names.KARPENTER_DO_NOT_DISRUPT) == "true", "a person's node annotation was removed"
    assert names.CLUSTER_AUTOSCALER_SCALE_DOWN_DISABLED not in annotations


def test_a_second_pipeline_on_the_group_or_the_queue_is_refused(pipeline: Pipeline, kube: KubeClient) -> None:
    world = pipeline.world
    pipeline.create(spec=pipeline.pinned(1))
    wait_for(lambda: pipeline.condition("Owned").get("status") == "True", "the first pipeline owns its group")
    pipeline.create(spec=pipeline.pinned(3), name="same-group")
    other_queue = world.queue(f"other-{pipeline.namespace}")
    pipeline.create(
        spec={
            **pipeline.pinned(2),
            "queueUrl": pipeline.queue_url,
            "nodeGroup": {"autoScalingGroupName": world.group(f"other-{pipeline.group}")},
        },
        name="same-queue",
    )
    assert other_queue

    def refused(name: str) -> dict[str, Any]:
        status = kube.status(pipeline.namespace, name)
        owned = next((c for c in status.get("conditions", []) if c.get("type") == "Owned"), {})
        return owned if owned.get("status") == "False" else {}

    group_conflict = wait_for(lambda: refused("same-group"), "Owned=False on the second pipeline of the group")
    assert group_conflict["reason"] == "Conflict"
    assert f"{pipeline.namespace}/{pipeline.name}" in group_conflict["message"]
    queue_conflict = wait_for(lambda: refused("same-queue"), "Owned=False on the second pipeline of the queue")
    assert "queue" in queue_conflict["message"]
    time.sleep(3 * POLL)
    assert world.desired(pipeline.group) == 1  # never 3: the second one does not act
    assert world.desired(f"other-{pipeline.group}") == 0
    assert "Conflict" in _reasons(kube, pipeline.namespace)


def test_scale_in_drains_an_idle_worker_first_and_a_refusal_keeps_its_node(
    pipeline: Pipeline, kube: KubeClient
) -> None:
    world = pipeline.world
    pipeline.create(spec=pipeline.pinned(2))
    wait_for(lambda: len(world.in_service(pipeline.group)) == 2, "2 instances in service")
    first, second = world.in_service(pipeline.group)
    nodes = {first: pipeline.node_for(first), second: pipeline.node_for(second)}
    for node in nodes.values():
        pipeline.hold_lease(node, active_jobs=0, state=busy_lease.WorkerState.IDLE)
    wait_for(lambda: all((r := pipeline.lease(n)) and r.admitted_by for n in nodes.values()), "both workers admitted")
    kube.merge_patch(kube.vp_path(pipeline.namespace, pipeline.name), {"spec": {"replicas": 1}})
    asked = wait_for(
        lambda: [i for i, n in nodes.items() if (r := pipeline.lease(n)) and r.drain_request], "a drain request"
    )
    (victim,) = asked
    keeper = first if victim == second else second
    time.sleep(2 * POLL)
    assert sorted(world.in_service(pipeline.group)) == sorted(nodes), "terminated before it drained"
    # The worker took a job before it saw the request: it refuses, and its node stays.
    assert pipeline.answer_drain(nodes[victim], active_jobs=1) == busy_lease.DrainVerdict.REFUSED
    wait_for(lambda: (r := pipeline.lease(nodes[victim])) and r.drain_request is None, "the request withdrawn")
    # The other worker is asked next; it drains and its instance goes, the busy one stays.
    wait_for(lambda: (r := pipeline.lease(nodes[keeper])) and r.drain_request, "the other node asked")
    assert pipeline.answer_drain(nodes[keeper]) == busy_lease.DrainVerdict.DRAINED
    wait_for(lambda: world.in_service(pipeline.group) == [victim], "the drained instance terminated")
    assert world.desired(pipeline.group) == 1
    assert "DrainWithdrawn" in _reasons(kube, pipeline.namespace)


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
    wait_for(lambda: "Recovered" in _reasons(kube, pipeline.namespace), "a Recovered Event")


def test_deleting_a_pipeline_keeps_a_busy_node_protected_until_it_drains(pipeline: Pipeline, kube: KubeClient) -> None:
    world = pipeline.world
    pipeline.create(spec=pipeline.pinned(1))
    wait_for(lambda: len(world.in_service(pipeline.group)) == 1, "1 instance in service")
    (instance_id,) = world.in_service(pipeline.group)
    node = pipeline.node_for(instance_id)
    pipeline.hold_lease(node, state=busy_lease.WorkerState.BUSY)
    wait_for(lambda: world.fully_protected(pipeline.group, instance_id) and _node_protected(kube, node), "protected")

    kube.delete(kube.vp_path(pipeline.namespace, pipeline.name))
    wait_for(lambda: (r := pipeline.lease(node)) and r.drain_mode.value == "finish" and r.drain_request, "drain asked")
    time.sleep(2 * POLL)
    assert kube.maybe_get(kube.vp_path(pipeline.namespace, pipeline.name)) is not None, "gone with a busy node"
    assert world.fully_protected(pipeline.group, instance_id)
    assert _node_protected(kube, node)

    pipeline.answer_drain(node)  # its job finished: drained
    wait_for(
        lambda: kube.maybe_get(kube.vp_path(pipeline.namespace, pipeline.name)) is None,
        "the finalizer released and the object gone",
    )
    assert world.unprotected(pipeline.group, instance_id)
    assert world.tags(instance_id) == {}
    assert _node_clear(kube, node)


def test_a_steady_pipeline_writes_nothing(pipeline: Pipeline, kube: KubeClient) -> None:
    """Level-based: once the world matches the spec, further passes change nothing."""
    world = pipeline.world
    pipeline.create(targetBacklogPerReplica=2)
    world.send(pipeline.queue_url, 3)
    wait_for(lambda: pipeline.status().get("replicas") == 2, "2 instances in service")
    wait_for(lambda: pipeline.condition("Scaling").get("reason") == "Steady", "the pass after the scale-out")

    def observed_the_mirror() -> bool:
        # The operator's own mirror of the count into spec.replicas bumps the generation; steady
        # means a pass has seen that too (kopf's watch may hand the timer the older body first).
        body = kube.vp(pipeline.namespace, pipeline.name)
        return (body.get("status") or {}).get("observedGeneration") == body["metadata"]["generation"]

    wait_for(observed_the_mirror, "a pass over the mirrored spec")
    version = kube.vp(pipeline.namespace, pipeline.name)["metadata"]["resourceVersion"]
    instances = world.in_service(pipeline.group)
    events = len(kube.events(pipeline.namespace))

    time.sleep(3 * POLL + 0.5)  # three more passes

    assert kube.vp(pipeline.namespace, pipeline.name)["metadata"]["resourceVersion"] == version
    assert world.in_service(pipeline.group) == instances
    assert world.desired(pipeline.group) == 2
    assert len(kube.events(pipeline.namespace)) == events


def test_metrics_and_liveness(pipeline: Pipeline, operator_process: OperatorProcess) -> None:
    pipeline.create(spec=pipeline.pinned(0))
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
