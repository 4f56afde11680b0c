"""The worker and operator images, built here and run for real.

The worker image runs with the chart's environment and the chart pod's restrictions (uid 65532,
read-only root filesystem, tmpfs scratch, no capabilities) against moto, the local model server
and the Kubernetes API emulator (its busy Lease), on the host network. Skipped only where no
container engine can run (framescale.local.images installs podman where it can).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from framescale import busy_lease, synthetic
from framescale.local import images
from framescale.local import stack as local_stack
from framescale.local.processes import free_port
from framescale.local.videos import write_synthetic_video
from tests.containers.conftest import KUBECONFIG_IN_CONTAINER, BuiltImages, kubeconfig_json
from tests.integration.operator.kube_emulator import EmulatorThread
from tests.support import (
    client,
    dead_letters,
    enqueue,
    failure_reason,
    read_lines,
    read_summary,
    unique,
    upload,
    wait_for,
)

# The first run on a fresh machine installs the engine, makes the Debian base and builds.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

# The chart's pipeline (kind values: pipeline demo, Leases in the release namespace).
LEASE_OWNER = "default/demo"
WORKER_BUDGET_BYTES = 300_000_000  # uncompressed, as the engine stores it (the budget)
# What the worker image must not carry (the issue: no operator, harness, demo, model server).
NOT_IN_THE_WORKER = ("framescale_operator", "framescale.local", "framescale.demo", "framescale.modelserver")
NOT_IN_THE_WORKER += ("cv2", "tensorflow", "kopf", "pytest")


@pytest.fixture(scope="module")
def kube_api() -> Any:
    emulator = EmulatorThread().start()
    try:
        yield emulator
    finally:
        emulator.stop()


@dataclass(frozen=True)
class Pod:
    """What a pod of the chart would give the worker: its environment and mounted files."""

    env: dict[str, str]
    mounts: dict[str, str]
    node: str


@pytest.fixture
def pod_for(aws_env, model_server, chart_worker_env, kube_api: EmulatorThread, tmp_path: Path) -> Any:
    """The chart's environment with this machine's endpoints in place of the cluster's: moto
    for AWS, the local model server for TF Serving, the API emulator (via a mounted kubeconfig)
    for the Kubernetes API."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig_json(kube_api.url))
    kubeconfig.chmod(0o644)

    def pod(stack: local_stack.LocalStack, health_port: int, model: str = "synthetic", **overrides: str) -> Pod:
        labels = chart_worker_env["FRAMESCALE_WORKER_LABELS"]
        node = f"{unique('ip-10-9-8-7')}.ec2.internal"
        env = dict(chart_worker_env)
        env.update(aws_env)  # endpoint, region and moto's credentials
        env.update(
            stack.worker_env(
                FRAMESCALE_WORKER_MODEL_SERVER=model_server.grpc_target,
                # The synthetic detector finds the synthetic videos' boxes; "person" (the chart's
                # model, with the chart's labels) is the slow one, for a job still running.
                FRAMESCALE_WORKER_MODEL_NAME=model,
                FRAMESCALE_WORKER_LABELS=json.dumps(synthetic.LABELS) if model == "synthetic" else labels,
                FRAMESCALE_WORKER_HEALTH_PORT=str(health_port),
                FRAMESCALE_WORKER_NODE_NAME=node,
                FRAMESCALE_WORKER_POD_NAME=f"framescale-demo-{unique('pod')}",
                FRAMESCALE_WORKER_WAIT_TIME_SECONDS="1",
                FRAMESCALE_WORKER_LOG_FORMAT="json",
                KUBECONFIG=KUBECONFIG_IN_CONTAINER,
            )
        )
        env.update(overrides)
        return Pod(env, {str(kubeconfig): KUBECONFIG_IN_CONTAINER}, node)

    return pod


def lease_url(server: str, namespace: str, node: str) -> str:
    return f"{server}/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{busy_lease.lease_name(node)}"


def admit(server: str, pod: Pod) -> None:
    """Play the operator: once the worker's Lease is there, admit the node (the worker starts no
    job before that)."""
    url = lease_url(server, pod.env["FRAMESCALE_WORKER_NAMESPACE"], pod.node)
    wait_for(lambda: get(url)[0] == 200, timeout=120, what="the worker's Lease")
    request = urllib.request.Request(
        url,
        data=json.dumps(busy_lease.admit_patch(LEASE_OWNER)).encode(),
        method="PATCH",
        headers={"Content-Type": "application/merge-patch+json"},
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


def wait_for_or_none(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return False


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def in_image(built: BuiltImages, image: str, code: str) -> str:
    out = built.engine.run(
        "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", code, capture=True
    )
    return out.stdout.strip()


def test_the_worker_image_carries_the_worker_only(built_images: BuiltImages) -> None:
    image = built_images.built["worker"].reference
    code = (
        "import importlib.util, shutil, json; "
        f"print(json.dumps([[m for m in {list(NOT_IN_THE_WORKER)!r} if importlib.util.find_spec(m.split('.')[0]) "
        "and importlib.util.find_spec(m)], [t for t in ('gcc', 'cc', 'g++', 'make', 'pip') if shutil.which(t)]]))"
    )
    modules, tools = json.loads(in_image(built_images, image, code))
    assert modules == [], f"the worker image carries {modules}"
    assert tools == [], f"the worker image carries build tools {tools}"
    size = built_images.built["worker"].size_bytes
    assert size <= WORKER_BUDGET_BYTES, f"the worker image is {size / 1e6:.0f} MB, over its 300 MB budget"
    labels = built_images.engine.labels(image)
    for key in ("source", "version", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"label org.opencontainers.image.{key} missing: {labels}"
    expected = images.oci_labels()
    assert labels["org.opencontainers.image.version"] == expected["VERSION"]
    # This commit's, not that of the build whose layers were reused.
    assert labels["org.opencontainers.image.revision"] == expected["REVISION"], labels


def test_worker_image_processes_jobs_with_the_charts_environment(
    pod_for, run_worker, kube_api: EmulatorThread, tmp_path: Path
) -> None:
    stack = local_stack.provision(unique("image"))
    port = free_port()
    pod = pod_for(stack, port)
    worker = run_worker(pod.env, pod.mounts)
    admit(kube_api.url, pod)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(base + "/readyz")[0] == 200 or not worker.alive(), timeout=120, what="worker ready")
    assert worker.alive(), f"the worker container exited:\n{worker.log_text()[-3000:]}"
    assert get(base + "/healthz")[0] == 200

    good = write_synthetic_video(tmp_path / "good.mp4", fps=10, frame_count=30)
    enqueue(stack, {"video": upload(stack, good.path, "in/good.mp4"), "job_id": "good"})
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video at all " * 64)
    enqueue(stack, {"video": upload(stack, bad, "in/bad.mp4"), "job_id": "bad"})

    summary = wait_for(lambda: read_summary(stack, "good"), timeout=180, what="results of the good video")
    assert summary["job_id"] == "good"
    lines = read_lines(stack, "good")
    assert lines and any(line.get("detections") for line in lines), "no detections from the synthetic video"
    letters: list[dict] = []
    wait_for(lambda: letters.extend(dead_letters(stack)) or letters, timeout=120, what="bad video dead-lettered")
    assert [json.loads(m["Body"])["job_id"] for m in letters] == ["bad"]
    assert failure_reason(letters[0]), "the dead letter says why"
    assert read_summary(stack, "bad") is None

    status, metrics = get(base + "/metrics")
    assert status == 200 and "framescale_" in metrics
    # Its busy Lease went to the API server named by the mounted kubeconfig.
    assert kube_api.server_errors() == []
    assert worker.alive()


def test_sigterm_mid_job_exits_0_and_hands_the_job_back(
    pod_for, run_worker, kube_api: EmulatorThread, tmp_path: Path
) -> None:
    stack = local_stack.provision(unique("image-term"))
    # Long enough to be mid-job when the signal comes; a grace too short to finish it.
    video = write_synthetic_video(tmp_path / "long.mp4", width=640, height=360, fps=30, frame_count=300)
    enqueue(stack, {"video": upload(stack, video.path, "in/long.mp4"), "job_id": "long", "sample_fps": 30.0})
    pod = pod_for(
        stack,
        free_port(),
        model="person",
        FRAMESCALE_WORKER_SHUTDOWN_GRACE_SECONDS="1",
        FRAMESCALE_WORKER_VISIBILITY_TIMEOUT_SECONDS="300",
    )
    worker = run_worker(pod.env, pod.mounts)
    admit(kube_api.url, pod)
    sqs = client("sqs")
    wait_for(
        lambda: local_stack.queue_depth(sqs, stack.queue_url)[1] == 1 or not worker.alive(),
        timeout=120,
        what="job in flight",
    )
    assert worker.alive(), worker.log_text()[-3000:]
    time.sleep(1.0)
    signalled = time.monotonic()
    worker.signal("TERM")
    assert worker.wait(60) == 0, f"exit status {worker.process.returncode if worker.process else None}"
    # Handed back at once (visibility 0), not after the 300 s visibility timeout.
    depths: list[tuple[int, int]] = []
    handed_back = wait_for_or_none(
        lambda: depths.append(local_stack.queue_depth(sqs, stack.queue_url)) or depths[-1] == (1, 0), timeout=30
    )
    assert handed_back, (
        f"queue (visible, in flight) {depths[-1]}, summary {read_summary(stack, 'long')}; log ends:\n"
        + "\n".join(worker.log_text().splitlines()[-25:])
    )
    assert time.monotonic() - signalled < 60
    assert read_summary(stack, "long") is None


def test_operator_image_without_a_cluster_stops_with_a_clear_message(built_images: BuiltImages) -> None:
    image = built_images.built["operator"].reference
    result = built_images.engine.run(
        "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL", image, capture=True, check=False,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "framescale operator cannot start: no Kubernetes cluster configured" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
