"""What the benchmarks ran on: cores, memory, CPU model, Python and package versions, load."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench import procfs

PACKAGES = (
    "framescale",
    "numpy",
    "av",
    "opencv-python-headless",
    "grpcio",
    "protobuf",
    "tensorflow",
    "boto3",
    "moto",
    "kopf",
    "imageio-ffmpeg",
    "matplotlib",
)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return platform.processor() or None


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 quota (cpu.max), when one is set."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return round(int(quota) / int(period), 2)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def ffmpeg_version(executable: str) -> str | None:
    try:
        output = subprocess.run([executable, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    first = output.stdout.splitlines()[:1]
    return first[0] if first else None


def pyav_ffmpeg_version() -> str | None:
    """The FFmpeg libraries bundled in PyAV's wheel (what the worker decodes with)."""
    try:
        import av
    except ImportError:
        return None
    version = getattr(av, "ffmpeg_version_info", None)
    return str(version) if version else None


def describe() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cgroup_cpu_limit": _cgroup_cpu_limit(),
        "memory_mib": procfs.memory_total_mib(),
        "gpu": None,  # the benchmarks run the model on CPU; TensorFlow sees no GPU here
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "pyav_ffmpeg": pyav_ffmpeg_version(),
        "load_average_at_start": procfs.load_average(),
    }
