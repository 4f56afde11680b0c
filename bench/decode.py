"""Decode speed: sampled frames per second through the worker's own decode path.

For each input (mp4v and H.264) and each sampling (1 fps, every frame), the worker's path
(``framescale.worker.video``: ``grab()`` every frame, ``retrieve()`` only the kept ones)
is timed beside the reference design's way (``read()`` every frame, keep the sampled ones)
on the same file in the same round. Rounds repeat with the order rotated; medians are
reported with the per-round ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2

from bench import stats
from bench.inputs import Video
from framescale.worker.sampling import FrameSampler
from framescale.worker.video import DecodeStats, open_video, sampled_frames

EVERY_FRAME = 0.0  # a sample rate of "every frame" (the sampler keeps all frames at or above the source rate)


def worker_decode(video: Video, sample_fps: float) -> tuple[int, int, float]:
    """(frames decoded, frames sampled, seconds) through the worker's decode functions."""
    started = time.perf_counter()
    capture, info = open_video(video.path)
    try:
        sampler = FrameSampler(info.fps, sample_fps or info.fps)
        counts = DecodeStats()
        for _ in sampled_frames(capture, info, sampler, counts, max_bad_ratio=0.1):
            pass
    finally:
        capture.release()
    return counts.decoded, counts.sampled, time.perf_counter() - started


def read_every_frame(video: Video, sample_fps: float) -> tuple[int, int, float]:
    """(frames decoded, frames sampled, seconds) the reference design's way: ``read()`` each frame."""
    started = time.perf_counter()
    capture = cv2.VideoCapture(str(video.path), cv2.CAP_FFMPEG)
    fps = capture.get(cv2.CAP_PROP_FPS)
    step = max(1, round(fps / sample_fps)) if sample_fps else 1
    decoded = sampled = 0
    try:
        while True:
            ok, _frame = capture.read()
            if not ok:
                break
            if decoded % step == 0:
                sampled += 1
            decoded += 1
    finally:
        capture.release()
    return decoded, sampled, time.perf_counter() - started


METHODS: dict[str, Callable[[Video, float], tuple[int, int, float]]] = {
    "framescale": worker_decode,
    "read_every_frame": read_every_frame,
}
SAMPLINGS = {"1fps": 1.0, "every_frame": EVERY_FRAME}


def run(videos: Sequence[Video], rounds: int) -> dict[str, Any]:
    samples: dict[tuple[str, str, str], list[tuple[int, int, float]]] = {}
    cases = [(video, sampling, method) for video in videos for sampling in SAMPLINGS for method in METHODS]
    for round_number in range(rounds):
        # Rotate the order each round so no case always runs first (or after the same neighbour).
        shift = round_number % len(cases)
        for video, sampling, method in cases[shift:] + cases[:shift]:
            result = METHODS[method](video, SAMPLINGS[sampling])
            samples.setdefault((video.codec, sampling, method), []).append(result)
    out: dict[str, Any] = {"rounds": rounds, "inputs": [video.describe() for video in videos], "cases": []}
    for video in videos:
        for sampling in SAMPLINGS:
            ours = samples[(video.codec, sampling, "framescale")]
            theirs = samples[(video.codec, sampling, "read_every_frame")]
            case: dict[str, Any] = {
                "codec": video.codec,
                "sampling": sampling,
                "resolution": f"{video.width}x{video.height}",
            }
            for name, runs in (("framescale", ours), ("read_every_frame", theirs)):
                case[name] = {
                    "sampled_fps": stats.spread([s / t for _, s, t in runs]),
                    "decoded_fps": round(stats.median(d / t for d, _, t in runs), 1),
                    "frames_sampled": runs[0][1],
                    "frames_decoded": runs[0][0],
                }
            case["speedup_vs_read_every_frame"] = round(
                stats.median((o[1] / o[2]) / (t[1] / t[2]) for o, t in zip(ours, theirs, strict=True)), 3
            )
            out["cases"].append(case)
    return out
