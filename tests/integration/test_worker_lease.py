"""The worker holds its node Lease for as long as it runs and follows the drain handshake.

The worker process talks to a Kubernetes API emulator over HTTP (kmock with the small
extension in tests/integration/operator/kube_emulator.py), found through KUBECONFIG, as
it would find a cluster's API server. The test plays the operator: it admits the node and asks
for drains with the busy_lease patch builders.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from framescale import busy_lease, names
from framescale.busy_lease import WorkerState
from framescale.local import stack as local_stack
from framescale.local.fake_node import write_kubeconfig
from framescale.local.videos import write_synthetic_video
from tests.integration.operator.kube_emulator import EmulatorThread
from tests.support import client, enqueue, read_summary, unique, upload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMESPACE = "video"
NODE = "ip-10-1-2-3.ec2.internal"
OWNER = "video/detect"


def lease_url(server: str, node: str) -> str:
    return f"{server}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{busy_lease.lease_name(node)}"


def read_lease(server: str, node: str = NODE) -> dict | None:
    try:
        with urllib.request.urlopen(lease_url(server, node), timeout=5) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def record(server: str, node: str = NODE) -> busy_lease.LeaseRecord | None:
    lease = read_lease(server, node)
    return busy_lease.parse_lease(lease) if lease else None


def operator_patch(server: str, node: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        lease_url(server, node),
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Content-Type": "application/merge-patch+json"},
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


def lease_settings(tmp_path: Path, server: str, node: str, pod: str) -> dict[str, Any]:
    return {
        "env_overrides": {"KUBECONFIG": str(write_kubeconfig(tmp_path / f"kubeconfig-{pod}", server))},
        "lease_enabled": "true",
        "node_name": node,
        "pod_name": pod,
        "namespace": NAMESPACE,
        "pipeline_name": "detect",
        "lease_duration_seconds": "15",
        "lease_poll_seconds": "0.25",
    }


def test_the_worker_holds_its_lease_waits_for_admission_and_drains(
    aws_env, tmp_path: Path, start_worker, kube_api: EmulatorThread
) -> None:
    stack = local_stack.provision(unique("lease"))
    video = write_synthetic_video(tmp_path / "long.mp4", width=640, height=360, fps=30, frame_count=240)
    start_worker(stack, model="person", **lease_settings(tmp_path, kube_api.url, NODE, "framescale-worker-abcde"))
    # Idle and not admitted: the Lease is held, and no job starts.
    idle = wait_for(lambda: record(kube_api.url), timeout=60, what="the Lease of an idle worker")
    assert idle.state == WorkerState.STARTING and idle.holder == "framescale-worker-abcde"
    assert idle.pipeline == "detect" and idle.node_name == NODE
    enqueue(stack, {"video": upload(stack, video.path), "job_id": "lease-job", "sample_fps": 30})
    time.sleep(3)
    assert read_summary(stack, "lease-job") is None and record(kube_api.url).active_jobs == 0  # type: ignore[union-attr]

    operator_patch(kube_api.url, NODE, busy_lease.admit_patch(OWNER))
    busy = wait_for(
        lambda: (r := record(kube_api.url)) is not None and r.state == WorkerState.BUSY and r,
        timeout=60,
        what="a busy Lease once admitted",
    )
    assert busy.active_jobs == 1
    token = busy_lease.new_drain_token()
    operator_patch(kube_api.url, NODE, busy_lease.drain_request_patch(token, OWNER))
    wait_for(lambda: record(kube_api.url).refused(token), timeout=5, what="a refusal while busy")  # type: ignore[union-attr]
    operator_patch(kube_api.url, NODE, busy_lease.withdraw_drain_patch())

    wait_for(lambda: read_summary(stack, "lease-job"), timeout=120, what="the job to finish")
    wait_for(lambda: record(kube_api.url).state == WorkerState.IDLE, timeout=10, what="idle")  # type: ignore[union-attr]
    renewed = record(kube_api.url).renew_time  # type: ignore[union-attr]
    wait_for(
        lambda: record(kube_api.url).renew_time != renewed,  # type: ignore[union-attr]
        timeout=10,
        what="a renewal while idle",
    )
    second = busy_lease.new_drain_token()
    operator_patch(kube_api.url, NODE, busy_lease.drain_request_patch(second, OWNER))
    drained = wait_for(lambda: record(kube_api.url).drained_for(second), timeout=5, what="drained when idle")  # type: ignore[union-attr]
    assert drained
    lease = read_lease(kube_api.url)
    assert (
        lease is not None
        and lease["metadata"]["annotations"][names.LEASE_DRAIN_REPLY_ANNOTATION] == f"{second} drained"
    )
    assert kube_api.server_errors() == []


def test_a_worker_sigtermed_mid_job_hands_the_message_back_and_another_completes_it_once(
    aws_env, tmp_path: Path, start_worker, kube_api: EmulatorThread
) -> None:
    """Spot's two-minute notice: the SIGTERM hand-back is the guarantee."""
    stack = local_stack.provision(unique("spot"))
    video = write_synthetic_video(tmp_path / "long.mp4", width=640, height=360, fps=30, frame_count=300)
    first_node, second_node = unique("ip-10-9-0"), unique("ip-10-9-1")
    first = start_worker(
        stack, model="person", shutdown_grace_seconds="0", **lease_settings(tmp_path, kube_api.url, first_node, "w1")
    )
    wait_for(lambda: record(kube_api.url, first_node), timeout=60, what="the first worker's Lease")
    operator_patch(kube_api.url, first_node, busy_lease.admit_patch(OWNER))
    enqueue(stack, {"video": upload(stack, video.path), "job_id": "spot-job", "sample_fps": 30})
    wait_for(
        lambda: (r := record(kube_api.url, first_node)) is not None and r.state == WorkerState.BUSY,
        timeout=60,
        what="the first worker to start the job",
    )
    first.signal(signal.SIGTERM)
    assert first.wait(60) == 0
    assert read_summary(stack, "spot-job") is None, "the job finished before the signal: nothing was tested"
    stopped = record(kube_api.url, first_node)
    assert stopped is not None and stopped.state == WorkerState.STOPPING and stopped.active_jobs == 0
    # Handed back at once (visibility 0), not after its visibility timeout.
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1"

    start_worker(stack, model="person", **lease_settings(tmp_path, kube_api.url, second_node, "w2"))
    wait_for(lambda: record(kube_api.url, second_node), timeout=60, what="the second worker's Lease")
    operator_patch(kube_api.url, second_node, busy_lease.admit_patch(OWNER))
    summary = wait_for(lambda: read_summary(stack, "spot-job"), timeout=180, what="the second worker to complete it")
    assert summary is not None
    wait_for(
        lambda: record(kube_api.url, second_node).state == WorkerState.IDLE,  # type: ignore[union-attr]
        timeout=30,
        what="the second worker idle",
    )
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) == (
        "0",
        "0",
    ), "the message is neither done and deleted once"
