"""Decode cost: CPU milliseconds per kept frame, the worker's PyAV path against the OpenCV one it replaced.

Every method turns the same file into the same kept frames, each fitted to the model input
(320x320 RGB), and is timed by the CPU time of this process (all its threads) divided by the
frames kept, so the figure is what a node pays, whatever the thread count:

- ``opencv_grab_retrieve``: the worker before PyAV: OpenCV ``grab()`` every frame,
  ``retrieve()`` (BGR) the kept ones by frame index, ``cv2.resize`` + ``cvtColor``;
- ``framescale``: the worker's own ``framescale.worker.video.sampled_frames`` (threads AUTO,
  non-reference non-samples skipped by the decoder, GOP tails and sample-less GOPs never
  decoded, kept frames scaled in YUV and converted once by swscale);
- ``framescale_cv2_resize``: the same plan, but each kept frame converted whole to BGR and
  resized with ``cv2.resize`` + ``cvtColor`` (the conversion the worker did not choose);
- ``keyframes``: the worker's ``keyframes`` mode (one frame per keyframe).

Inputs: real photographs slowly zoomed (``bench.inputs.photo_video``), 720p and 1080p,
encoded with x264's defaults (long GOPs, B-frames, B-pyramid, many non-reference frames) by
the ffmpeg binary of the ``imageio-ffmpeg`` wheel. Rounds repeat with the order rotated;
ratios are taken within each round, then their median reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from bench import stats
from bench.inputs import Video
from bench.stack import INPUT_SIZE
from framescale.worker.geometry import Fit, plan_fit
from framescale.worker.sampling import Sampling
from framescale.worker.video import DecodeStats, open_video, sampled_frames

KEYFRAMES = "keyframes"

Result = dict[str, Any]  # frames_kept, frames_decoded, cpu_seconds, wall_seconds, kept (frame numbers)


def opencv_fit(frame_bgr: np.ndarray, fit: Fit, out: np.ndarray) -> None:
    """The OpenCV resize and colour conversion the worker used before it resized in swscale
    (kept here, not in the worker, so the worker image needs no OpenCV)."""
    if fit.content_height == 0:
        resized = cv2.resize(frame_bgr, (fit.input_width, fit.input_height), interpolation=cv2.INTER_AREA)
        cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=out)
        return
    out[...] = 0
    resized = cv2.resize(frame_bgr, (fit.content_width, fit.content_height), interpolation=cv2.INTER_AREA)
    region = out[
        fit.content_top : fit.content_top + fit.content_height,
        fit.content_left : fit.content_left + fit.content_width,
    ]
    region[...] = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def _timed(work: Callable[[], tuple[list[int], int]]) -> Result:
    cpu, wall = time.process_time(), time.perf_counter()
    kept, decoded = work()
    return {
        "frames_kept": len(kept),
        "frames_decoded": decoded,
        "cpu_seconds": time.process_time() - cpu,
        "wall_seconds": time.perf_counter() - wall,
        "kept": kept,
    }


def opencv_grab_retrieve(video: Video, sample_fps: float) -> Result:
    """The OpenCV path the worker used before: index-based samples of a constant-rate video."""

    def work() -> tuple[list[int], int]:
        capture = cv2.VideoCapture(str(video.path), cv2.CAP_FFMPEG)
        fps = capture.get(cv2.CAP_PROP_FPS)
        fit = plan_fit(video.height, video.width, INPUT_SIZE, INPUT_SIZE, "stretch")
        out = np.empty((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        kept: list[int] = []
        index, due = -1, 0
        try:
            while capture.grab():
                index += 1
                if index < due:
                    continue
                ok, frame = capture.retrieve()
                if ok:
                    opencv_fit(frame, fit, out)
                    kept.append(index)
                # Sample k is due at frame ceil(k * fps / rate) (the rule at a constant rate).
                due = int(np.ceil(round(len(kept) * fps / sample_fps, 9)))
        finally:
            capture.release()
        return kept, index + 1

    return _timed(work)


def _worker(video: Video, sampling: Sampling, *, cv2_resize: bool) -> Result:
    def work() -> tuple[list[int], int]:
        source, info = open_video(video.path)
        fit = plan_fit(info.height, info.width, INPUT_SIZE, INPUT_SIZE, "stretch")
        out = np.empty((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        counts = DecodeStats()
        kept: list[int] = []
        try:
            frames = sampled_frames(source, info, sampling, counts, max_bad_ratio=0.1, fit=None if cv2_resize else fit)
            for index, _, picture in frames:
                if cv2_resize:
                    opencv_fit(picture, fit, out)
                else:
                    out[...] = picture
                kept.append(index)
        finally:
            source.release()
        return kept, counts.decoded

    return _timed(work)


def framescale(video: Video, sample_fps: float) -> Result:
    return _worker(video, Sampling("fps", sample_fps), cv2_resize=False)


def framescale_cv2_resize(video: Video, sample_fps: float) -> Result:
    return _worker(video, Sampling("fps", sample_fps), cv2_resize=True)


def keyframes(video: Video, _: float) -> Result:
    return _worker(video, Sampling("keyframes", None), cv2_resize=False)


METHODS: dict[str, Callable[[Video, float], Result]] = {
    "opencv_grab_retrieve": opencv_grab_retrieve,
    "framescale": framescale,
    "framescale_cv2_resize": framescale_cv2_resize,
    KEYFRAMES: keyframes,
}


def _ms_per_kept(result: Result) -> float:
    return 1000.0 * result["cpu_seconds"] / max(1, result["frames_kept"])


def run(videos: Sequence[Video], rounds: int, *, sample_rates: Sequence[float] = (0.2, 1.0, 5.0)) -> dict[str, Any]:
    cases = [
        (video, rate, method) for video in videos for rate in sample_rates for method in METHODS if method != KEYFRAMES
    ]
    cases += [(video, 0.0, KEYFRAMES) for video in videos]
    samples: dict[tuple[str, float, str], list[Result]] = {}
    for round_number in range(rounds):
        # Rotate the order each round so no case always runs first (or after the same neighbour).
        shift = (round_number * 7) % len(cases)
        for video, rate, method in cases[shift:] + cases[:shift]:
            samples.setdefault((video.path.name, rate, method), []).append(METHODS[method](video, rate))
    out: dict[str, Any] = {
        "rounds": rounds,
        "input_size": INPUT_SIZE,
        "inputs": [video.describe() for video in videos],
        "cases": [],
        "keyframes": [],
    }
    for video in videos:
        name = video.path.name
        key_runs = samples[(name, 0.0, KEYFRAMES)]
        for rate in sample_rates:
            today = samples[(name, rate, "opencv_grab_retrieve")]
            ours = samples[(name, rate, "framescale")]
            resized = samples[(name, rate, "framescale_cv2_resize")]
            # The same frames, whichever method: the comparison is only fair if they agree.
            same = today[0]["kept"] == ours[0]["kept"] == resized[0]["kept"]
            case: dict[str, Any] = {
                "video": f"{video.height}p {video.codec}",
                "file": name,
                "sample_fps": rate,
                "frames_kept": ours[0]["frames_kept"],
                "same_frames_kept": same,
            }
            for method, runs in (
                ("opencv_grab_retrieve", today),
                ("framescale", ours),
                ("framescale_cv2_resize", resized),
            ):
                case[method] = {
                    "cpu_ms_per_kept_frame": stats.spread([_ms_per_kept(r) for r in runs]),
                    "wall_ms_per_kept_frame": round(
                        stats.median(1000 * r["wall_seconds"] / max(1, r["frames_kept"]) for r in runs), 2
                    ),
                    "frames_decoded": runs[0]["frames_decoded"],
                }
            case["speedup_cpu_vs_opencv"] = round(
                stats.median(_ms_per_kept(t) / _ms_per_kept(o) for t, o in zip(today, ours, strict=True)), 3
            )
            case["swscale_fit_vs_cv2_resize_cpu"] = round(
                stats.median(_ms_per_kept(r) / _ms_per_kept(o) for r, o in zip(resized, ours, strict=True)), 3
            )
            out["cases"].append(case)
        today_sparse = samples[(name, min(sample_rates), "opencv_grab_retrieve")]
        out["keyframes"].append(
            {
                "video": f"{video.height}p {video.codec}",
                "file": name,
                "frames_kept": key_runs[0]["frames_kept"],
                "cpu_ms_per_kept_frame": stats.spread([_ms_per_kept(r) for r in key_runs]),
                f"opencv_at_{min(sample_rates):g}fps_cpu_ms_per_kept_frame": stats.spread(
                    [_ms_per_kept(r) for r in today_sparse]
                ),
                # Goal: at most 1/15 of what the OpenCV path spends per kept frame at the sparsest rate.
                "cpu_share_of_opencv_sparse": round(
                    stats.median(
                        _ms_per_kept(k) / _ms_per_kept(t) for k, t in zip(key_runs, today_sparse, strict=True)
                    ),
                    4,
                ),
            }
        )
    return out


def decode_only_sampled_fps(videos: Sequence[Video], sample_fps: float) -> dict[str, float]:
    """The worker's decoder alone (no model) over ``videos``: sampled frames per second, wall and CPU.

    One side of the throughput ceiling: a worker can never send frames faster than it decodes them.
    """
    kept = 0
    cpu = wall = 0.0
    for video in videos:
        result = framescale(video, sample_fps)
        kept += result["frames_kept"]
        cpu += result["cpu_seconds"]
        wall += result["wall_seconds"]
    return {"frames": kept, "seconds": round(wall, 4), "cpu_seconds": round(cpu, 4)}
