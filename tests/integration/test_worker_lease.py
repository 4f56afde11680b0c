"""The worker holds its node's busy Lease while it has jobs and lets it go idle after.

The worker process talks to a Kubernetes API emulator over HTTP (kmock with the small
extension in tests/integration/operator/kube_emulator.py), found through KUBECONFIG, as
it would find a cluster's API server.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from framescale import busy_lease, names
from framescale.local import stack as local_stack
from framescale.local.videos import write_synthetic_video
from tests.integration.operator.kube_emulator import EmulatorThread
from tests.support import enqueue, read_summary, unique, upload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMESPACE = "video"
NODE = "ip-10-1-2-3.ec2.internal"


def kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "worker", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "worker"}}],
        "current-context": "emulator",
    }
    path.write_text(json.dumps(config))
    return path


def read_lease(server: str) -> dict | None:
    url = f"{server}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{busy_lease.lease_name(NODE)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def test_busy_lease_follows_the_jobs(aws_env, tmp_path: Path, start_worker, kube_api: EmulatorThread) -> None:
    stack = local_stack.provision(unique("lease"))
    video = write_synthetic_video(tmp_path / "long.mp4", width=640, height=360, fps=30, frame_count=240)
    start_worker(
        stack,
        model="person",
        env_overrides={"KUBECONFIG": str(kubeconfig(tmp_path / "kubeconfig", kube_api.url))},
        lease_enabled="true",
        node_name=NODE,
        pod_name="framescale-worker-abcde",
        namespace=NAMESPACE,
        pipeline_name="detect",
        lease_duration_seconds="15",
    )
    # Idle at start: no Lease is written until there is work.
    assert read_lease(kube_api.url) is None
    enqueue(stack, {"video": upload(stack, video.path), "job_id": "lease-job", "sample_fps": 30})

    def busy_now() -> dict | None:
        lease = read_lease(kube_api.url)
        view = busy_lease.read_lease(lease, datetime.now(UTC)) if lease else None
        return lease if view is not None and view.busy else None

    lease = wait_for(busy_now, timeout=60, what="a busy Lease while the job runs")
    assert lease["spec"]["holderIdentity"] == "framescale-worker-abcde"
    assert lease["metadata"]["labels"][names.LEASE_PIPELINE_LABEL] == "detect"
    assert lease["metadata"]["annotations"][names.LEASE_NODE_ANNOTATION] == NODE
    first_renewal = lease["spec"]["renewTime"]

    wait_for(lambda: read_summary(stack, "lease-job"), timeout=120, what="the job to finish")

    def idle_now() -> dict | None:
        current = read_lease(kube_api.url)
        view = busy_lease.read_lease(current, datetime.now(UTC)) if current else None
        return current if view is not None and not view.busy and view.active_jobs == 0 else None

    idle = wait_for(idle_now, timeout=30, what="the Lease to say idle once the job is done")
    assert idle["spec"]["renewTime"] >= first_renewal
    assert kube_api.server_errors() == []
