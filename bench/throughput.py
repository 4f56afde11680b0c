"""Throughput of the data path: framescale's worker against two partners and the true ceiling.

All run against the same model server process, on the same videos, in the same round;
rounds repeat with the order rotated, and each round's ratios are taken before the medians,
so a noisy neighbour slows a round's partners alike.

(a) the real worker process (``python -m framescale.worker``, one slot) against moto: the
    clock runs from sending the job messages to the last success notification, so it
    includes SQS, the S3 download and upload and the result files;
(b) ``bench.reference_client``: an idealised client in the old design's style, better than
    the original: ``read()`` every frame, the sampled frames resized to the same 320 px
    input, ``.tolist()`` into JSON, REST ``:predict`` in batches of 8, one at a time, from
    local files;
(b') ``bench.original_client``: the original client logic of the system this replaces: the
    first 20 frames of a video only, full size, BGR, ``.tolist()`` JSON in batches of 5 to
    REST, one request at a time (it does not depend on the sample rate: it runs once per
    round, at the first rate, on the first video, and its figure is reused at the others);
(c) the ceiling: min(``bench.loadgen``, the model server fed ready-made tensors over gRPC
    with a few requests in flight; the worker's own decoder decoding the same frames of the
    same videos with no model at all), since the worker can outrun neither.

(a), (b) and (c) use the same batch size and model input size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import decode, stats
from bench.inputs import Video
from bench.stack import BATCH_SIZE, INPUT_SIZE, MAX_IN_FLIGHT, BenchStack, send_jobs, summaries, upload, wait_for_jobs
from framescale.local.stack import LocalStack, provision

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT = 900.0
CEILING_MIN_SECONDS = 3.0


def _python_module(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module args`` and return the JSON object it prints."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed ({result.returncode}): {result.stderr.strip()[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def reference(bench: BenchStack, videos: Sequence[Video], model: str, sample_fps: float) -> dict[str, Any]:
    return _python_module(
        "bench.reference_client",
        "--url",
        bench.model_server.rest_url,
        "--model",
        model,
        "--batch-size",
        str(BATCH_SIZE),
        "--input-size",
        str(INPUT_SIZE),
        "--sample-fps",
        str(sample_fps),
        *[str(video.path) for video in videos],
    )


def original(bench: BenchStack, videos: Sequence[Video], model: str) -> dict[str, Any]:
    return _python_module(
        "bench.original_client", "--url", bench.model_server.rest_url, "--model", model, *[str(v.path) for v in videos]
    )


def ceiling(bench: BenchStack, video: Video, model: str, frames: int, min_seconds: float) -> dict[str, Any]:
    return _python_module(
        "bench.loadgen",
        str(video.path),
        "--target",
        bench.model_server.grpc_target,
        "--model",
        model,
        "--batch-size",
        str(BATCH_SIZE),
        "--input-size",
        str(INPUT_SIZE),
        "--in-flight",
        str(MAX_IN_FLIGHT),
        "--frames",
        str(frames),
        "--min-seconds",
        str(min_seconds),
    )


def worker_round(stack: LocalStack, urls: list[str], tag: str, sample_fps: float, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    job_ids = send_jobs(stack, urls, tag=tag, sample_fps=sample_fps)
    finished = wait_for_jobs(stack, job_ids, timeout)
    wall = finished - started
    done = summaries(stack, job_ids)
    stages: dict[str, float] = {}
    for summary in done:
        for stage, seconds in summary["timings_seconds"].items():
            stages[stage] = stages.get(stage, 0.0) + float(seconds)
    return {
        "frames_sampled": sum(int(s["frames"]["sampled"]) for s in done),
        "frames_decoded": sum(int(s["frames"]["decoded"]) for s in done),
        "seconds": round(wall, 4),
        "job_seconds": round(stages.get("total", wall), 4),
        "stages_seconds": {stage: round(value, 4) for stage, value in stages.items()},
    }


@dataclass(frozen=True)
class _ModelRun:
    """One model's side-by-side runs: its worker's stack, the uploaded videos, the local copies."""

    bench: BenchStack
    stack: LocalStack
    urls: list[str]
    videos: Sequence[Video]
    model: str
    timeout: float

    def one_round(self, sample_fps: float, tag: str, order: list[str]) -> dict[str, Any]:
        results: dict[str, dict[str, Any]] = {}
        for part in order:
            if part == "worker":
                results[part] = worker_round(self.stack, self.urls, tag, sample_fps, self.timeout)
            elif part == "reference":
                results[part] = reference(self.bench, self.videos, self.model, sample_fps)
            elif part == "original":
                results[part] = original(self.bench, self.videos[:1], self.model)
            elif part == "decode_only":
                results[part] = decode.decode_only_sampled_fps(self.videos, sample_fps)
            else:
                # As many frames as the round's videos yield; the ceiling runs at least a few seconds.
                frames = sum(max(1, round(video.seconds * sample_fps)) for video in self.videos)
                results[part] = ceiling(self.bench, self.videos[0], self.model, frames, CEILING_MIN_SECONDS)
        return results


def _figures(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians of each side, and medians of the per-round ratios."""
    a = [r["worker"]["frames_sampled"] / r["worker"]["seconds"] for r in rounds]
    a_job = [r["worker"]["frames_sampled"] / r["worker"]["job_seconds"] for r in rounds]
    b = [r["reference"]["frames_sampled"] / r["reference"]["seconds"] for r in rounds]
    b_original = [r["original"]["frames_sampled"] / r["original"]["seconds"] for r in rounds]
    model_alone = [r["ceiling"]["frames"] / r["ceiling"]["seconds"] for r in rounds]
    decoder_alone = [r["decode_only"]["frames"] / r["decode_only"]["seconds"] for r in rounds]
    c = [min(m, d) for m, d in zip(model_alone, decoder_alone, strict=True)]
    # The reference's own work (decode, JSON out, JSON in) plus the model's time at the ceiling:
    # what it would reach if the server parsed JSON for free. Our REST server parses JSON in
    # Python, slower than TF Serving's C++, so this bound keeps the comparison honest.
    bound = [
        r["reference"]["frames_sampled"] / (r["reference"]["client_seconds"] + r["reference"]["frames_sampled"] / cc)
        for r, cc in zip(rounds, model_alone, strict=True)
    ]
    phases: dict[str, list[float]] = {}
    for r in rounds:
        frames = r["reference"]["frames_sampled"]
        for phase, seconds in r["reference"]["phases_seconds"].items():
            phases.setdefault(phase, []).append(1000.0 * seconds / frames)
    return {
        "frames_sampled_per_round": rounds[0]["worker"]["frames_sampled"],
        "frames_decoded_per_round": rounds[0]["worker"]["frames_decoded"],
        "framescale_worker": {
            "sampled_fps": stats.spread(a),
            "sampled_fps_inside_jobs": stats.spread(a_job),
            "stages_seconds": rounds[0]["worker"]["stages_seconds"],
        },
        "reference_client": {
            "sampled_fps": stats.spread(b),
            "ms_per_frame_by_phase": {phase: round(stats.median(values), 2) for phase, values in phases.items()},
            "sampled_fps_if_server_json_were_free": stats.spread(bound),
        },
        "original_client": {
            "sampled_fps": stats.spread(b_original),
            "frames_per_video": rounds[0]["original"]["frames_sampled"],
            "request_megabytes": rounds[0]["original"]["request_megabytes"],
            "ms_per_frame_by_phase": {
                phase: round(
                    stats.median(
                        1000.0 * r["original"]["phases_seconds"][phase] / r["original"]["frames_sampled"]
                        for r in rounds
                    ),
                    1,
                )
                for phase in rounds[0]["original"]["phases_seconds"]
            },
        },
        "ceiling": {
            "sampled_fps": stats.spread(c),
            "model_alone_sampled_fps": stats.spread(model_alone),
            "decoder_alone_sampled_fps": stats.spread(decoder_alone),
            "bound_by": "decoder" if stats.median(decoder_alone) < stats.median(model_alone) else "model",
        },
        "ratio_vs_reference": round(stats.median(x / y for x, y in zip(a, b, strict=True)), 3),
        "ratio_vs_original_client": round(stats.median(x / y for x, y in zip(a, b_original, strict=True)), 3),
        "ratio_vs_reference_if_server_json_were_free": round(
            stats.median(x / y for x, y in zip(a, bound, strict=True)), 3
        ),
        # Against the true ceiling: min(decoder alone, model alone).
        "efficiency": round(stats.median(x / y for x, y in zip(a, c, strict=True)), 3),
        "efficiency_vs_model_alone": round(stats.median(x / y for x, y in zip(a, model_alone, strict=True)), 3),
        "worker_ms_per_sampled_frame_above_ceiling": round(
            stats.median(1000.0 * (1 / x - 1 / y) for x, y in zip(a, c, strict=True)), 2
        ),
    }


def run(
    bench: BenchStack,
    videos: Sequence[Video],
    *,
    models: Sequence[str],
    sample_rates: Sequence[float],
    rounds: int,
    log: Any = print,
    timeout: float = 600.0,
) -> dict[str, Any]:
    cases = []
    for model in models:
        stack = provision(f"bench-tp-{model}")
        urls = upload(stack, [video.path for video in videos])
        worker = bench.worker(stack, model=model, name=f"throughput-{model}").start()
        try:
            # Warm-up, not measured: the worker's first job loads its modules and connections,
            # and the model server traces the model for this batch shape on its first call.
            rate = sample_rates[0]
            worker_round(stack, urls[-1:], f"warm-{model}", rate, timeout)
            reference(bench, videos[-1:], model, rate)
            ceiling(bench, videos[0], model, BATCH_SIZE * MAX_IN_FLIGHT, 0.0)
            runner = _ModelRun(bench, stack, urls, videos, model, timeout)
            originals: list[dict[str, Any]] = []
            for sample_fps in sample_rates:
                measured = []
                for number in range(rounds):
                    parts = ["worker", "reference", "ceiling", "decode_only"]
                    if sample_fps == sample_rates[0]:
                        parts.append("original")
                    order = parts[number % len(parts) :] + parts[: number % len(parts)]
                    tag = f"{model}-{sample_fps:g}fps-r{number}"
                    measured.append(runner.one_round(sample_fps, tag, order))
                    if "original" in measured[-1]:
                        originals.append(measured[-1]["original"])
                    else:  # the original client ignores the sample rate: its run at the first rate stands
                        measured[-1]["original"] = originals[number]
                    w, r, c, o = (measured[-1][k] for k in ("worker", "reference", "ceiling", "original"))
                    log(
                        f"  throughput {model} @ {sample_fps:g} fps, round {number + 1}/{rounds}: "
                        f"worker {w['frames_sampled'] / w['seconds']:.1f}, reference "
                        f"{r['frames_sampled'] / r['seconds']:.1f}, original {o['frames_sampled'] / o['seconds']:.2f}, "
                        f"model alone {c['frames'] / c['seconds']:.1f} frames/s"
                    )
                cases.append({"model": model, "sample_fps": sample_fps, **_figures(measured), "rounds": measured})
        finally:
            worker.stop(timeout=30)
    return {
        "settings": {"batch_size": BATCH_SIZE, "input_size": INPUT_SIZE, "max_in_flight": MAX_IN_FLIGHT, "slots": 1},
        "videos": [video.describe() for video in videos],
        "rounds": rounds,
        "cases": cases,
    }
