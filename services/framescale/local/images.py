"""Build the worker, operator and moto images with a real engine, without network in the build.

``python -m framescale.local.images build`` (``make images``):

1. finds an engine: podman (preferred: needs no daemon) or a running Docker; where neither is
   there and this runs as root on Debian, installs podman, buildah, runc and debootstrap from apt;
2. picks the base: the Dockerfiles' own ``python:*-slim`` where Docker Hub answers, else a Debian
   bookworm base made here with debootstrap (no registry needed) and kept in the engine's store;
3. makes a wheelhouse on the host for the base's Python and platform (the host's pip trusts the
   host's certificate authorities; pip inside a container would not, and they are never baked
   into an image);
4. stages a small context per image (the Dockerfile, only the sources that image carries, the
   wheelhouse) and builds it with ``--network none``, layers cached.

A second run with nothing changed reuses the base, the wheelhouse and every layer: seconds.
The TF Serving image needs the ``tensorflow/serving`` base from Docker Hub and is built only
where Docker Hub answers (``--only tfserving-local``); it is never built from the Debian base.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
CACHE_DIR = Path(os.environ.get("FRAMESCALE_IMAGES_CACHE") or REPO_ROOT / ".cache" / "images")

# The base made with debootstrap where Docker Hub cannot be reached: Debian bookworm's python3
# (3.11) with venv, the same distribution the python:*-slim-bookworm images are built on.
# The tag says what is in it: bump it when make_debian_base changes, so an older base is not reused.
DEBIAN_BASE = "localhost/framescale-base:bookworm-slim-1"
# The runtime stages' base: the same tree less what only installing needs (package managers,
# perl for their scripts, the wheels ensurepip puts in a new venv) and iconv's modules, which
# Python never loads (its codecs are its own). About 30 MB of the worker image.
DEBIAN_RUNTIME = "localhost/framescale-runtime:bookworm-slim-1"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
APT_PACKAGES = {"podman": ("podman", "buildah", "runc"), "debootstrap": ("debootstrap",), "strip": ("binutils",)}
DOCKER_HUB = "https://registry-1.docker.io/v2/"
# Container rlimits may not exceed the host's (runc refuses to raise them): podman's defaults
# (nofile 1048576) are cut to the host's soft limits, and nproc to this at most.
NPROC_CAP = 32768
TAG = "dev"
# The moto image is test infrastructure (the kind path's AWS endpoint); pinned like the dev extra.
MOTO_REQUIREMENT = "moto[server]==5.2.5"
# Building the project from its sources inside the image needs its build backend from wheels too.
BUILD_REQUIREMENTS = ("setuptools>=77", "wheel")
WHEELHOUSE_FORMAT = "stripped-1"
README_STUB = "# framescale\n\nVideo object detection at fleet scale on Kubernetes; see the project's README.\n"
# What the worker image leaves out of services/framescale: the local harness, the demo, the
# model server and exporter (TensorFlow), the developer CLI (it imports the harness).
WORKER_EXCLUDES = ("local", "demo.py", "modelserver", "cli.py", "helm_values.py")


class ImageError(RuntimeError):
    """A build cannot go on; the message says what is missing and what to do."""


class EngineUnavailable(ImageError):
    """No container engine can run on this machine (and none could be installed)."""


@dataclass(frozen=True)
class ImageSpec:
    name: str
    dockerfile: Path
    # Requirement lines installed into the image from the wheelhouse.
    requirements: tuple[str, ...]
    # Repository paths copied into the context (folders whole, minus ``excludes`` under them).
    sources: tuple[str, ...] = ()
    excludes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    builds_project: bool = True
    needs_docker_hub: bool = False
    # Built with --network none from the wheelhouse; the TF Serving image's export stage
    # installs TensorFlow from the index instead (it is only built where Docker Hub answers).
    offline: bool = True

    @property
    def reference(self) -> str:
        return f"framescale/{self.name}:{TAG}"


def _project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def image_specs() -> dict[str, ImageSpec]:
    project = _project()
    core = tuple(project["dependencies"])
    return {
        "worker": ImageSpec(
            "worker",
            REPO_ROOT / "docker" / "worker.Dockerfile",
            core,
            sources=("pyproject.toml", "README.md", "services"),
            excludes={"services/framescale": WORKER_EXCLUDES},
        ),
        "operator": ImageSpec(
            "operator",
            REPO_ROOT / "docker" / "operator.Dockerfile",
            core + tuple(project["optional-dependencies"]["operator"]),
            sources=("pyproject.toml", "README.md", "services", "operator"),
            excludes={"services/framescale": ("local", "demo.py", "modelserver")},
        ),
        "moto": ImageSpec(
            "moto",
            REPO_ROOT / "docker" / "kind" / "moto.Dockerfile",
            (MOTO_REQUIREMENT,),
            builds_project=False,
        ),
        "tfserving-local": ImageSpec(
            "tfserving-local",
            REPO_ROOT / "docker" / "tfserving-local.Dockerfile",
            (),
            sources=("pyproject.toml", "README.md", "services", "operator"),
            needs_docker_hub=True,
            offline=False,
        ),
    }


DEFAULT_IMAGES = ("worker", "operator", "moto")


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the engine


def containers_conf(cache: Path) -> Path:
    """A containers.conf for podman on this host: runc (crun refuses a mixed cgroup layout) and
    rlimits the host allows. Pointed to by CONTAINERS_CONF; nothing under /etc changes."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    nproc = NPROC_CAP if nproc == resource.RLIM_INFINITY else min(nproc, NPROC_CAP)
    text = (
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        # No systemd or journald need be running.
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    path = cache / "containers.conf"
    cache.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


@dataclass(frozen=True)
class Engine:
    kind: str  # "podman" or "docker"
    program: str
    env: Mapping[str, str]

    def command(self, *args: str) -> list[str]:
        return [self.program, *args]

    def run(
        self,
        *args: str,
        capture: bool = False,
        check: bool = True,
        stdin: int | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args),
            env=dict(self.env),
            stdin=stdin,
            capture_output=capture,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or "").strip()[-2000:] if capture else "(its output is above)"
            raise ImageError(f"{self.kind} {' '.join(args[:2])} failed with status {result.returncode}: {detail}")
        return result

    def image_exists(self, reference: str) -> bool:
        return self.run("image", "inspect", reference, capture=True, check=False).returncode == 0

    def image_id(self, reference: str) -> str:
        return self.run("image", "inspect", "--format", "{{.Id}}", reference, capture=True).stdout.strip()

    def image_size(self, reference: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", reference, capture=True).stdout.strip())

    def labels(self, reference: str) -> dict[str, str]:
        text = self.run("image", "inspect", "--format", "{{json .Config.Labels}}", reference, capture=True).stdout
        return dict(json.loads(text) or {})


def _apt_install(packages: Sequence[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineUnavailable(
            f"{' '.join(packages)} missing and cannot be installed here (needs root and apt-get): "
            f"install them (Debian/Ubuntu: apt-get install {' '.join(packages)}) or start Docker"
        )
    log(f"installing {' '.join(packages)} from apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    for argv in (["apt-get", "update", "-qq"], install):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise EngineUnavailable(f"{' '.join(argv[:2])} failed: {result.stderr.strip()[-1500:]}")


def _podman(cache: Path) -> Engine:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(containers_conf(cache)))
    return Engine("podman", shutil.which("podman") or "podman", env)


def _docker_running() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def find_engine(*, install: bool = True, cache: Path = CACHE_DIR) -> Engine:
    """podman where installed (or installable), else a running Docker. FRAMESCALE_IMAGE_ENGINE
    (podman or docker) chooses."""
    wanted = os.environ.get("FRAMESCALE_IMAGE_ENGINE", "")
    if wanted not in ("", "podman", "docker"):
        raise ImageError(f"FRAMESCALE_IMAGE_ENGINE={wanted!r}: use podman or docker")
    if wanted == "docker" or (not wanted and shutil.which("podman") is None and _docker_running()):
        if not _docker_running():
            raise EngineUnavailable("FRAMESCALE_IMAGE_ENGINE=docker but `docker info` fails: start the Docker daemon")
        return Engine("docker", "docker", dict(os.environ))
    missing = [p for p in APT_PACKAGES["podman"] if shutil.which(p) is None]
    if missing:
        if not install:
            raise EngineUnavailable(f"no container engine: {', '.join(missing)} not installed")
        _apt_install(APT_PACKAGES["podman"])
    engine = _podman(cache)
    probe = engine.run("info", capture=True, check=False, timeout=60)
    if probe.returncode != 0:
        raise EngineUnavailable(f"podman is installed but cannot run here: {probe.stderr.strip()[-1500:]}")
    return engine


# ---------------------------------------------------------------- the base


def docker_hub_reachable(timeout: float = 5.0) -> bool:
    """Whether Docker Hub's registry answers (401 without a token is an answer)."""
    try:
        with urllib.request.urlopen(DOCKER_HUB, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def apt_mirror(roots: Sequence[Path] = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))) -> str:
    """The Debian mirror this machine's apt uses (its package traffic may only reach that one)."""
    files: list[Path] = []
    for root in roots:
        if root.is_dir():
            files += sorted(root.glob("*.list")) + sorted(root.glob("*.sources"))
        elif root.is_file():
            files.append(root)
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            uris = words[1:] if words[:1] == ["URIs:"] else [w for w in words[1:] if "://" in w][:1]
            if words[:1] == ["deb"] or words[:1] == ["URIs:"]:
                for uri in uris:
                    if uri.rstrip("/").endswith("/debian"):
                        return uri.rstrip("/")
    return DEBIAN_MIRROR


# What a container never reads: documentation, manual pages, translations, downloaded packages
# and package lists (about 55 MB of the 176). dpkg is told to leave them out from now on too, as
# Debian's own slim images do.
SLIM_REMOVE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
)
DPKG_EXCLUDES = """# framescale base: no documentation or translations in containers
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
"""


def slim_rootfs(rootfs: Path) -> None:
    for relative in SLIM_REMOVE:
        folder = rootfs / relative
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            keep = relative == "usr/share/doc" or path.name == "locale.alias"
            if path.is_dir() and not path.is_symlink():
                if keep:  # the licences stay: /usr/share/doc/<package>/copyright
                    for inner in path.iterdir():
                        if inner.name != "copyright":
                            shutil.rmtree(inner) if inner.is_dir() and not inner.is_symlink() else inner.unlink()
                else:
                    shutil.rmtree(path)
            elif not keep:
                path.unlink()
    config = rootfs / "etc" / "dpkg" / "dpkg.cfg.d"
    config.mkdir(parents=True, exist_ok=True)
    (config / "framescale-slim").write_text(DPKG_EXCLUDES)


RUNTIME_REMOVE = (
    "usr/bin/perl*",
    "usr/lib/*/perl-base",
    "usr/share/perl5",
    "usr/share/python-wheels",
    "usr/lib/*/gconv",
    "usr/bin/apt*",
    "usr/lib/apt",
    "usr/lib/*/libapt-*",
    "etc/apt",
    "var/lib/apt",
    "var/cache/apt",
    # dpkg's file lists; its status file stays, so scanners still see which packages are in.
    "var/lib/dpkg/info",
)


def _import_rootfs(engine: Engine, rootfs: Path, reference: str) -> None:
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        change = 'CMD ["/bin/bash"]'
        engine.run("import", "--change", change, "-", reference, stdin=tar.stdout.fileno(), capture=True)
    finally:
        tar.stdout.close()
        if tar.wait() != 0:
            raise ImageError(f"tar of the debootstrap tree failed with status {tar.returncode}")


def runtime_rootfs(rootfs: Path) -> None:
    """Turn a build base's tree into the runtime base's (in place)."""
    for pattern in RUNTIME_REMOVE:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def import_bases(engine: Engine, rootfs: Path, build: str = DEBIAN_BASE, runtime: str = DEBIAN_RUNTIME) -> None:
    """The build base from ``rootfs`` as it is, then the runtime base from it less RUNTIME_REMOVE."""
    _import_rootfs(engine, rootfs, build)
    runtime_rootfs(rootfs)
    _import_rootfs(engine, rootfs, runtime)


def make_debian_base(engine: Engine, cache: Path) -> None:
    """debootstrap a minimal bookworm with python3; import it as the build and runtime bases."""
    reference = DEBIAN_BASE
    if shutil.which("debootstrap") is None:
        _apt_install(APT_PACKAGES["debootstrap"])
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root to make the Debian base; or build where Docker Hub is reachable")
    mirror = apt_mirror()
    log(f"making the Debian base {reference} with debootstrap from {mirror} (about a minute)")
    started = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            DEBIAN_SUITE,
            str(rootfs),
            mirror,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageError(f"debootstrap failed: {(result.stdout + result.stderr).strip()[-1500:]}")
        slim_rootfs(rootfs)
        import_bases(engine, rootfs)
    log(f"Debian base made in {time.monotonic() - started:.0f}s")


@dataclass(frozen=True)
class Base:
    reference: str | None  # None: the Dockerfiles' own default
    runtime: str | None  # the runtime stages' base; None: the same as ``reference``
    python: str  # "3.11"
    glibc: str  # "2.36"
    machine: str  # "x86_64"


PROBE = (
    "import platform, sys; "
    "print(f'{sys.version_info[0]}.{sys.version_info[1]}', platform.libc_ver()[1], platform.machine())"
)


def probe_base(engine: Engine, reference: str, cache: Path) -> tuple[str, str, str]:
    """The base's Python version, glibc version and machine (cached by the image's id)."""
    image_id = engine.image_id(reference)
    path = cache / "bases.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    if image_id not in known:
        out = engine.run("run", "--rm", "--network", "none", reference, "python3", "-c", PROBE, capture=True)
        known[image_id] = out.stdout.split()
        path.write_text(json.dumps(known, indent=1))
    python, glibc, machine = known[image_id]
    return python, glibc, machine


def default_base_reference(dockerfile: Path) -> str:
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.partition("=")[2].strip()
    raise ImageError(f"{dockerfile} declares no ARG PYTHON_IMAGE")


def choose_base(engine: Engine, cache: Path, *, hub: bool | None = None) -> Base:
    override = os.environ.get("FRAMESCALE_PYTHON_IMAGE")
    runtime: str | None = None
    if override:
        reference: str | None = override
        pulled = override
    elif hub if hub is not None else docker_hub_reachable():
        reference = None
        pulled = default_base_reference(REPO_ROOT / "docker" / "worker.Dockerfile")
    else:
        if not (engine.image_exists(DEBIAN_BASE) and engine.image_exists(DEBIAN_RUNTIME)):
            make_debian_base(engine, cache)
        reference = pulled = DEBIAN_BASE
        runtime = DEBIAN_RUNTIME
    if not engine.image_exists(pulled):
        engine.run("pull", pulled)
    python, glibc, machine = probe_base(engine, pulled, cache)
    return Base(reference, runtime, python, glibc, machine)


# ---------------------------------------------------------------- the wheelhouse


def pip_platforms(glibc: str, machine: str) -> list[str]:
    """manylinux tags a wheel may carry to run on this glibc (pip takes each one literally)."""
    major, minor = (int(part) for part in glibc.split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 16, -1)]
    tags += [f"manylinux2014_{machine}", f"linux_{machine}"] if major == 2 and minor >= 17 else []
    return tags


def _is_extension_module(name: str) -> bool:
    """A compiled module of the wheel's own (the libraries auditwheel bundles in ``*.libs/``
    come stripped already and are left as they are)."""
    return (name.endswith(".so") or ".so." in name) and ".libs/" not in name


def strip_wheels(folder: Path) -> None:
    """Debug symbols out of the wheels' compiled modules, repacked with a fresh RECORD. PyAV
    ships its Cython modules unstripped: 31 MB in the image that are 6 MB stripped. Needs
    binutils' strip on the host; without it the wheels are kept as they are."""
    strip = shutil.which("strip")
    if strip is None and os.geteuid() == 0 and shutil.which("apt-get"):
        # Without it the worker image would miss its size budget by the symbols (25 MB).
        _apt_install(APT_PACKAGES["strip"])
        strip = shutil.which("strip")
    if strip is None:
        log("strip (binutils) not found: the wheels keep their debug symbols")
        return
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            if not any(_is_extension_module(name) for name in archive.namelist()):
                continue
        with tempfile.TemporaryDirectory(dir=folder, prefix="strip-") as tmp:
            work = Path(tmp)
            subprocess.run([sys.executable, "-m", "wheel", "unpack", "--dest", str(work), str(wheel)], check=True,
                           capture_output=True)  # fmt: skip
            (unpacked,) = [path for path in work.iterdir() if path.is_dir()]
            files = [path for path in unpacked.rglob("*") if path.is_file()]
            modules = [path for path in files if _is_extension_module(path.relative_to(unpacked).as_posix())]
            before = sum(p.stat().st_size for p in modules)
            subprocess.run([strip, "--strip-unneeded", *map(str, modules)], check=True, capture_output=True)
            if sum(p.stat().st_size for p in modules) == before:
                continue
            packed = work / "packed"
            packed.mkdir()
            subprocess.run([sys.executable, "-m", "wheel", "pack", "--dest-dir", str(packed), str(unpacked)],
                           check=True, capture_output=True)  # fmt: skip
            (new,) = list(packed.glob("*.whl"))
            wheel.unlink()
            new.rename(folder / new.name)


def wheelhouse(spec: ImageSpec, base: Base, cache: Path) -> Path:
    """Wheels for ``spec``'s requirements (and the build backend) for the base's Python and
    platform, downloaded by the host's pip; reused while the requirements stay the same."""
    requirements = list(spec.requirements)
    wanted = requirements + (list(BUILD_REQUIREMENTS) if spec.builds_project else [])
    # WHEELHOUSE_FORMAT changes when what is done to the downloaded wheels changes (stripping).
    facts = [WHEELHOUSE_FORMAT, wanted, base.python, base.glibc, base.machine]
    key = hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]
    folder = cache / "wheelhouse" / f"{spec.name}-py{base.python}-{base.machine}-{key}"
    stamp = folder / ".complete"
    if stamp.exists():
        return folder
    log(f"downloading wheels for the {spec.name} image (Python {base.python}, glibc {base.glibc})")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    abi = "cp" + base.python.replace(".", "")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(folder)]
    argv += ["--only-binary=:all:", "--python-version", base.python, "--implementation", "cp", "--abi", abi]
    for tag in pip_platforms(base.glibc, base.machine):
        argv += ["--platform", tag]
    result = subprocess.run([*argv, *wanted], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(folder)
        raise ImageError(f"pip download for the {spec.name} image failed: {result.stderr.strip()[-2000:]}")
    strip_wheels(folder)
    (folder / "requirements.txt").write_text("".join(f"{line}\n" for line in requirements))
    stamp.touch()
    return folder


# ---------------------------------------------------------------- context and build


def _copy_tree(source: Path, target: Path, excludes: Sequence[str]) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.name in excludes or ignore(str(source), [entry.name]):
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, ignore=ignore)
        else:
            shutil.copy2(entry, target / entry.name)


def stage_context(spec: ImageSpec, wheels: Path | None, cache: Path) -> Path:
    """The build context for ``spec``: its Dockerfile, its sources and the wheelhouse, nothing
    else (so every builder, the classic docker one included, sends a few MB, never .git)."""
    context = cache / "context" / spec.name
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    shutil.copy2(spec.dockerfile, context / "Dockerfile")
    for relative in spec.sources:
        source = REPO_ROOT / relative
        if relative == "README.md":
            # Only the package metadata reads it (pyproject's readme): a stub keeps an edit of the
            # real README from rebuilding the project's layer of every image.
            (context / relative).write_text(README_STUB)
        elif source.is_dir():
            _copy_tree(source, context / relative, ())
        else:
            shutil.copy2(source, context / relative)
    for relative, names in spec.excludes.items():
        for name in names:
            path = context / relative / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    if wheels is not None:
        shutil.copytree(wheels, context / "wheelhouse", ignore=shutil.ignore_patterns(".complete"))
    return context


def _git(*args: str) -> str:
    try:
        result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def oci_labels() -> dict[str, str]:
    """Version (the project's), revision (the commit, marked -dirty with local changes) and source."""
    revision = _git("rev-parse", "HEAD") or "unknown"
    if revision != "unknown" and _git("status", "--porcelain", "--untracked-files=no"):
        revision += "-dirty"
    source = os.environ.get("FRAMESCALE_IMAGE_SOURCE") or _git("config", "--get", "remote.origin.url") or "unknown"
    return {"VERSION": str(_project()["version"]), "REVISION": revision, "SOURCE": source}


@dataclass(frozen=True)
class Built:
    name: str
    reference: str
    seconds: float
    size_bytes: int


def context_key(context: Path, arguments: Sequence[str]) -> str:
    """A digest of every file in ``context`` (path, mode, bytes) and of the build arguments."""
    digest = hashlib.sha256(json.dumps(list(arguments)).encode())
    for path in sorted(context.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(context).as_posix()}\0{path.stat().st_mode:o}\0".encode())
            with path.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def build_image(engine: Engine, spec: ImageSpec, base: Base, cache: Path, labels: Mapping[str, str]) -> Built:
    started = time.monotonic()
    wheels = wheelhouse(spec, base, cache) if spec.offline else None
    context = stage_context(spec, wheels, cache)
    argv = ["build", "--file", str(context / "Dockerfile"), "--tag", spec.reference]
    if spec.offline:
        argv += ["--network", "none"]
    if engine.kind == "podman":
        argv += ["--layers", "--format", "docker"]
    if base.reference is not None:
        argv += ["--build-arg", f"PYTHON_IMAGE={base.reference}"]
    if base.runtime is not None:
        argv += ["--build-arg", f"RUNTIME_IMAGE={base.runtime}"]
    for name, value in labels.items():
        argv += ["--build-arg", f"{name}={value}"]
        # Also as --label: buildah's layer cache reuses a LABEL step whose ARG values changed,
        # which left the revision of an earlier build on a new image.
        argv += ["--label", f"org.opencontainers.image.{name.lower()}={value}"]
    # The engine's layer cache makes a rebuild cheap but not free (it re-reads the context and
    # walks every step); an image built from this very context and these arguments is kept.
    key = context_key(context, [engine.kind, *argv, *(base.reference or "", base.runtime or "")])
    records_path = cache / "built.json"
    records = json.loads(records_path.read_text()) if records_path.exists() else {}
    record = records.get(spec.name, {})
    if (
        record.get("key") == key
        and engine.image_exists(spec.reference)
        and engine.image_id(spec.reference) == record.get("id")
    ):
        log(f"{spec.reference} is up to date")
    else:
        log(f"building {spec.reference}")
        try:
            engine.run(*argv, str(context))
        except ImageError:
            raise ImageError(f"building {spec.reference} failed (the {engine.kind} output above says where)") from None
        records[spec.name] = {"key": key, "id": engine.image_id(spec.reference)}
        records_path.write_text(json.dumps(records, indent=1))
    seconds = time.monotonic() - started
    return Built(spec.name, spec.reference, seconds, engine.image_size(spec.reference))


def build(names: Sequence[str] = DEFAULT_IMAGES, *, install: bool = True, cache: Path = CACHE_DIR) -> list[Built]:
    specs = image_specs()
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise ImageError(f"unknown image {', '.join(unknown)}: choose from {', '.join(specs)}")
    engine = find_engine(install=install, cache=cache)
    hub = docker_hub_reachable()
    for name in names:
        if specs[name].needs_docker_hub and not hub:
            raise ImageError(
                f"the {name} image needs its tensorflow/serving base from Docker Hub, which cannot be reached here"
            )
    base = choose_base(engine, cache, hub=hub)
    labels = oci_labels()
    return [build_image(engine, specs[name], base, cache, labels) for name in names]


# ---------------------------------------------------------------- what is inside

# Run inside an image: the size of each installed distribution (from its RECORD), the rest of
# site-packages, and the interpreter's own tree.
SIZES_SCRIPT = r"""
import json, os, sys, sysconfig
from importlib import metadata
site = sysconfig.get_paths()["purelib"]
def size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if not os.path.islink(os.path.join(d, f)))
seen, out = set(), {}
for dist in metadata.distributions(path=[site]):
    total = 0
    for file in dist.files or ():
        full = os.path.realpath(os.path.join(site, file))
        if full not in seen and os.path.isfile(full):
            seen.add(full)
            total += os.path.getsize(full)
    out[dist.metadata["Name"]] = total
out["(site-packages total)"] = size(site)
out["(python stdlib)"] = size(sysconfig.get_paths()["stdlib"])
print(json.dumps(out))
"""


def package_sizes(engine: Engine, reference: str) -> dict[str, int]:
    out = engine.run(
        "run", "--rm", "--network", "none", "--entrypoint", "python", reference, "-c", SIZES_SCRIPT, capture=True
    )
    return dict(sorted(json.loads(out.stdout).items(), key=lambda item: -item[1]))


def compressed_size(engine: Engine, reference: str) -> int:
    """Bytes of ``save | gzip -6``: about what a registry stores and a node pulls."""
    import gzip

    with tempfile.TemporaryFile() as raw:
        saved = subprocess.Popen(engine.command("save", reference), env=dict(engine.env), stdout=subprocess.PIPE)
        assert saved.stdout is not None
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as zipped:
            while chunk := saved.stdout.read(1 << 20):
                zipped.write(chunk)
        if saved.wait() != 0:
            raise ImageError(f"{engine.kind} save {reference} failed")
        total = raw.tell()
    return total


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framescale.local.images", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="build the images (worker, operator, moto by default)")
    make.add_argument("names", nargs="*", default=list(DEFAULT_IMAGES))
    make.add_argument("--no-install", action="store_true", help="never install an engine with apt")
    sizes = commands.add_parser("sizes", help="per-package sizes inside a built image")
    sizes.add_argument("name", nargs="?", default="worker")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for built in build(args.names, install=not args.no_install):
                print(f"{built.reference}: {built.size_bytes / 1e6:.0f} MB, {built.seconds:.1f}s")
        else:
            engine = find_engine(install=False)
            reference = image_specs()[args.name].reference
            for package, size in package_sizes(engine, reference).items():
                print(f"{size / 1e6:8.1f} MB  {package}")
    except ImageError as error:
        print(f"images: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
