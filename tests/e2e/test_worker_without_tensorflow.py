"""The worker never loads TensorFlow: not when imported, not while it runs a job.

TensorFlow costs 4-27 s of start-up and about 560 MB per process, and would make the
worker image 2 GB (DESIGN.md). ``make lint``'s import contract allows indirect imports;
these tests look at what a real interpreter actually loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from framescale.local import stack as local_stack
from framescale.local.videos import write_synthetic_video
from tests.support import enqueue, read_summary, unique, upload, wait_for

FORBIDDEN = ("tensorflow", "tensorflow_serving", "framescale.modelserver")

# Every module of the worker and its wire protocol, and the CLI's entry point, in a fresh
# interpreter; prints the forbidden modules that came along.
IMPORT_EVERYTHING = f"""
import importlib, json, pkgutil, sys
import framescale.worker, framescale.tfserving, framescale.cli
for package in (framescale.worker, framescale.tfserving):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
forbidden = {FORBIDDEN!r}
print(json.dumps(sorted(m for m in sys.modules if m in forbidden or m.startswith(tuple(f + "." for f in forbidden)))))
"""


def test_importing_the_worker_and_the_cli_loads_no_tensorflow() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout)
    assert loaded == [], f"the worker's imports bring in {loaded[:10]}"


def mapped_files(pid: int) -> set[str]:
    """Files mapped into a process: every shared library it loaded, Python extensions included."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


@pytest.mark.e2e
@pytest.mark.slow
def test_a_running_worker_has_no_tensorflow_loaded(aws_env, tmp_path: Path, start_worker, model_server) -> None:
    stack = local_stack.provision(unique("no-tf"))
    video = write_synthetic_video(tmp_path / "v.mp4", frame_count=10)
    enqueue(stack, {"video": upload(stack, video.path), "job_id": "no-tf"})
    worker = start_worker(stack, model="synthetic")
    # After a whole job, every lazy import of decoding, inference and upload has happened.
    assert wait_for(lambda: read_summary(stack, "no-tf"), what="the job's summary")["status"] == "succeeded"
    slots = worker.slot_pids()
    assert slots, "no slot process found"
    # The check itself sees TensorFlow where it is: in the model server.
    assert any("tensorflow" in path for path in mapped_files(model_server.pid))
    for pid in slots:
        # The slots are where videos are decoded (PyAV's FFmpeg) ...
        assert any("libavcodec" in path for path in mapped_files(pid)), pid
        # ... and OpenCV is no longer the worker's: only the local harness and the demo use it.
        assert not [path for path in mapped_files(pid) if "cv2" in path], pid
    for pid in [worker.pid, *slots]:
        assert not [path for path in mapped_files(pid) if "tensorflow" in path], pid
