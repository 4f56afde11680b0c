"""Fixtures for the container tests: the images built (cached) by framescale.local.images, the
chart's worker environment, and a runner for the worker image as the chart runs it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from framescale.local import images
from tests.chart.conftest import CHART, Helm

# The chart's scratch folder and temporary folder, both emptyDirs in the pod: tmpfs here.
WORK_DIR = "/var/lib/framescale"
KUBECONFIG_IN_CONTAINER = "/etc/framescale/kubeconfig"


@dataclass(frozen=True)
class BuiltImages:
    engine: images.Engine
    built: dict[str, images.Built]
    first_build_seconds: float


@pytest.fixture(scope="session")
def built_images() -> BuiltImages:
    """The worker and operator images, built once per session (every layer cached after the
    first run). Skipped only where no engine can run; any other build failure fails."""
    started = time.monotonic()
    try:
        built = images.build(("worker", "operator"))
    except images.EngineUnavailable as error:
        pytest.skip(f"no container engine can run here: {error}")
    engine = images.find_engine(install=False)
    return BuiltImages(engine, {b.name: b for b in built}, time.monotonic() - started)


@pytest.fixture(scope="session")
def chart_worker_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The worker container's environment as the chart renders it (kind values): plain values
    only; the downward-API ones (node and pod name) are for the runner to fill."""
    helm = Helm(tmp_path_factory.mktemp("helm-home"))
    rendered = helm.template(CHART / "ci" / "kind-values.yaml", "default")
    (daemonset,) = rendered.of_kind("DaemonSet")
    (worker,) = [c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    env = {e["name"]: str(e["value"]) for e in worker["env"] if "value" in e}
    assert {e["name"] for e in worker["env"] if "valueFrom" in e} == {
        "FRAMESCALE_WORKER_NODE_NAME",
        "FRAMESCALE_WORKER_POD_NAME",
    }, "the chart sets another variable from the downward API: fill it in the runner"
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert {WORK_DIR, "/tmp"} <= mounts, f"the chart's worker mounts changed: {mounts}"
    security = worker["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    assert (security["runAsUser"], security["runAsGroup"]) == (65532, 65532)
    return env


def kubeconfig_json(server: str) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "worker", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "worker"}}],
        "current-context": "emulator",
    }
    return json.dumps(config)


class WorkerContainer:
    """The worker image run the way the chart's pod runs it: uid 65532, read-only root
    filesystem, tmpfs for the scratch and temporary folders, every capability dropped, no
    privilege escalation; on the host network, so it reaches moto and the model server on
    127.0.0.1 as a pod reaches TF Serving on localhost."""

    def __init__(self, engine: images.Engine, image: str, env: Mapping[str, str], log_path: Path) -> None:
        self.engine = engine
        self.image = image
        self.env = dict(env)
        self.log_path = log_path
        self.name = f"framescale-test-worker-{uuid.uuid4().hex[:8]}"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def argv(self, mounts: Mapping[str, str]) -> list[str]:
        argv = ["run", "--rm", "--name", self.name, "--network", "host", "--user", "65532:65532", "--read-only"]
        argv += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        argv += ["--tmpfs", "/tmp:rw,size=256m,mode=1777", "--tmpfs", f"{WORK_DIR}:rw,size=1g,mode=1777"]
        for source, target in mounts.items():
            argv += ["--volume", f"{source}:{target}:ro"]
        for key, value in sorted(self.env.items()):
            argv += ["--env", f"{key}={value}"]
        return [*argv, self.image]

    def start(self, mounts: Mapping[str, str] | None = None) -> WorkerContainer:
        log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.engine.command(*self.argv(mounts or {})),
            env=dict(self.engine.env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, name: str) -> None:
        """A signal to the container's first process, as the kubelet sends SIGTERM."""
        self.engine.run("kill", "--signal", name, self.name, capture=True)

    def wait(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.alive():
            self.engine.run("rm", "--force", "--time", "5", self.name, capture=True, check=False)
            self.wait(30)

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def run_worker(built_images: BuiltImages, tmp_path: Path) -> Iterator[Any]:
    started: list[WorkerContainer] = []

    def run(env: Mapping[str, str], mounts: Mapping[str, str] | None = None) -> WorkerContainer:
        image = built_images.built["worker"].reference
        container = WorkerContainer(built_images.engine, image, env, tmp_path / f"worker-{len(started)}.log")
        started.append(container.start(mounts))
        return container

    yield run
    for container in started:
        container.stop()
