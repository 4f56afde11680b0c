"""The worker process itself: start-up time, memory at idle, and peak memory per video length.

Every measurement starts a fresh ``python -m framescale.worker`` (supervisor + one slot
process), so peak RSS (the kernel's high-water mark, VmHWM) belongs to one job:

- start-up: from launching the worker, with a job already waiting, until the job's message
  is received (in flight on the queue): what a new node's worker costs before useful work;
- peak RSS of the slot process after a short video and after one 10x longer (same content,
  same sampling, every frame by default so even the short one fills every batch and the
  in-flight window); their ratio shows whether memory grows with the video;
- RSS at idle: supervisor + slot, right after the job, waiting for the next message.

Partner in the same run: a process that imports ``tensorflow_serving.apis`` (what a client
built on the official TF Serving API package must load), its start-up time and RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import procfs, stats
from bench.inputs import Video
from bench.stack import BenchStack, send_jobs, summaries, upload, wait_for_jobs
from framescale import aws
from framescale.local.processes import free_port
from framescale.local.stack import provision, queue_depth

POLL_SECONDS = 0.05
START_TIMEOUT = 120.0

_TF_CLIENT_PROBE = """
import json, time
started = time.perf_counter()
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: F401
import cv2, numpy  # noqa: F401
imported = time.perf_counter() - started
status = open("/proc/self/status").read()
field = lambda name: int(status.split(name + ":")[1].split()[0]) / 1024
print(json.dumps({"import_seconds": imported, "rss_mib": field("VmRSS"), "peak_rss_mib": field("VmHWM")}))
"""


def tf_client_probe() -> dict[str, Any]:
    """Start-up (interpreter to imports done) and RSS of a process importing tensorflow_serving.apis."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _TF_CLIENT_PROBE], capture_output=True, text=True, timeout=300, check=False
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"tensorflow_serving probe failed: {result.stderr.strip()[-2000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return {"start_seconds": round(wall, 3), "rss_mib": round(data["rss_mib"], 1)}


def _wait(check: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.perf_counter()
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"timed out waiting for {what}")


def one_job(bench: BenchStack, video: Video, tag: str, sample_fps: float) -> dict[str, Any]:
    """Fresh worker, one job waiting: start-up, peak RSS of the job's slot, RSS at idle after it.

    Each measurement gets its own queue: a stopped worker's long poll lingers in the
    server for up to 20 s and would swallow the next measurement's message.
    """
    sqs = aws.client("sqs")
    stack = provision(f"bench-{tag}")
    job_ids = send_jobs(stack, upload(stack, [video.path]), tag=tag, sample_fps=sample_fps)
    worker = bench.worker(stack, model="null", name=tag, health_port=free_port())
    launched = time.perf_counter()
    worker.start()
    try:
        received = _wait(lambda: queue_depth(sqs, stack.queue_url)[1] >= 1, START_TIMEOUT, "the first receive")
        wait_for_jobs(stack, job_ids, timeout=600)
        slots = worker.slot_pids()
        if len(slots) != 1:
            raise RuntimeError(f"expected one slot process, found {slots}")
        slot = slots[0]
        summary = summaries(stack, job_ids)[0]
        time.sleep(0.5)  # let the slot settle back into its receive call
        supervisor_rss = procfs.rss_mib(worker.pid) or 0.0
        slot_rss = procfs.rss_mib(slot) or 0.0
        return {
            "start_to_first_receive_seconds": round(received - launched, 3),
            "slot_peak_rss_mib": procfs.peak_rss_mib(slot),
            "supervisor_peak_rss_mib": procfs.peak_rss_mib(worker.pid),
            "idle_rss_mib": round(supervisor_rss + slot_rss, 1),
            "idle_rss_by_process_mib": {"supervisor": supervisor_rss, "slot": slot_rss},
            "frames_decoded": summary["frames"]["decoded"],
            "frames_sampled": summary["frames"]["sampled"],
        }
    finally:
        worker.stop(timeout=30)


def run(
    bench: BenchStack, short: Video, long: Video, *, sample_fps: float, rounds: int, log: Any = print
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"short": [], "long": []}
    probes = []
    for number in range(rounds):
        order = [("short", short), ("long", long)]
        if number % 2:
            order.reverse()
        for kind, video in order:
            result = one_job(bench, video, f"mem-{kind}-r{number}", sample_fps)
            runs[kind].append(result)
            log(
                f"  worker {kind} video, round {number + 1}/{rounds}: "
                f"start {result['start_to_first_receive_seconds']} s, "
                f"slot peak {result['slot_peak_rss_mib']} MiB, idle {result['idle_rss_mib']} MiB"
            )
        probes.append(tf_client_probe())
    short_peaks = [r["slot_peak_rss_mib"] for r in runs["short"]]
    long_peaks = [r["slot_peak_rss_mib"] for r in runs["long"]]
    starts = [r["start_to_first_receive_seconds"] for r in runs["short"] + runs["long"]]
    idle = [r["idle_rss_mib"] for r in runs["short"] + runs["long"]]
    probe_start = [p["start_seconds"] for p in probes]
    probe_rss = [p["rss_mib"] for p in probes]
    return {
        "model": "null",
        "sample_fps": sample_fps,
        "videos": {"short": short.describe(), "long": long.describe()},
        "memory": {
            "short_video_peak_rss_mib": stats.spread(short_peaks),
            "long_video_peak_rss_mib": stats.spread(long_peaks),
            "long_over_short_video_length": round(long.frames / short.frames, 2),
            "long_over_short_peak_rss": round(
                stats.median(b / a for a, b in zip(short_peaks, long_peaks, strict=True)), 3
            ),
        },
        "startup": {
            "worker_start_to_first_receive_seconds": stats.spread(starts),
            "worker_idle_rss_mib": stats.spread(idle),
            "tensorflow_serving_api_client_start_seconds": stats.spread(probe_start),
            "tensorflow_serving_api_client_rss_mib": stats.spread(probe_rss),
            "worker_over_tf_client_idle_rss": round(stats.median(idle) / stats.median(probe_rss), 3),
            "model_server_start_seconds": bench.model_server_start_seconds,
        },
        "runs": runs,
    }
