"""Reading videos with OpenCV: probe, then decode only the frames that are kept.

``grab()`` advances the demuxer and decoder for every frame; ``retrieve()`` converts a
frame to BGR pixels only when it is kept, so sparse sampling skips most of the colour
conversion work (the dominant per-frame cost after decoding itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from framescale.worker.errors import PermanentJobError
from framescale.worker.sampling import FrameSampler

# Frame rates outside this range are container garbage, not real videos.
_MIN_FPS, _MAX_FPS = 0.1, 1000.0
# Containers often estimate their frame count (from duration x fps): a stream that ends a
# couple of frames early is normal, not damage.
_FRAME_COUNT_SLACK = 2


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frame_count: int  # as the container reports it; decoding may find a different number
    codec: str

    @property
    def duration_seconds(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0

    def as_json(self) -> dict[str, object]:
        return {
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 4),
            "frame_count": self.frame_count,
            "duration_seconds": round(self.duration_seconds, 3),
            "codec": self.codec,
        }


def _fourcc(value: float) -> str:
    code = int(value)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else ""


def open_video(path: Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    """Open with FFmpeg (never the image-sequence backend) and describe the stream."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise PermanentJobError("not a video OpenCV can open (unknown container or codec)", stage="probe")
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    frames = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    frame_count = int(frames) if math.isfinite(frames) and frames > 0 else 0
    info = VideoInfo(width, height, fps, frame_count, _fourcc(capture.get(cv2.CAP_PROP_FOURCC)))
    if width <= 0 or height <= 0:
        capture.release()
        raise PermanentJobError("video has no picture (width or height is zero)", stage="probe")
    if not (_MIN_FPS <= fps <= _MAX_FPS):
        capture.release()
        raise PermanentJobError(f"video reports an unusable frame rate ({fps})", stage="probe")
    return capture, info


@dataclass
class DecodeStats:
    decoded: int = 0  # frames grabbed (demuxed and decoded)
    sampled: int = 0  # frames kept and converted
    bad: int = 0  # kept frames that failed to convert


def sampled_frames(
    capture: cv2.VideoCapture,
    info: VideoInfo,
    sampler: FrameSampler,
    stats: DecodeStats,
    *,
    max_bad_ratio: float,
    should_stop: Callable[[], bool] = lambda: False,
    max_seconds: float | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(frame_index, pts_ms, bgr_frame)`` for every kept frame, in order.

    ``max_seconds`` bounds the decode even when the container did not declare its length
    (its frame count is 0): decoding stops with a PermanentJobError past that many seconds.
    """
    max_frames = math.ceil(max_seconds * info.fps) if max_seconds is not None else None
    index = -1
    while not should_stop():
        if not capture.grab():
            break
        index += 1
        if max_frames is not None and index >= max_frames:
            raise PermanentJobError(
                f"video lasts longer than {max_seconds:.0f} s: decoding stopped after {max_frames} frames at "
                f"{info.fps:g} fps (FRAMESCALE_WORKER_MAX_DURATION_SECONDS)",
                stage="decode",
            )
        stats.decoded += 1
        if not sampler.keep(index):
            continue
        ok, frame = capture.retrieve()
        if not ok or frame is None:
            stats.bad += 1
            _check_bad(stats, max_bad_ratio)
            continue
        stats.sampled += 1
        yield index, round(index * 1000.0 / info.fps), frame
    if stats.decoded == 0 and not should_stop():
        raise PermanentJobError("video has no decodable frames", stage="decode")
    if stats.sampled == 0 and stats.bad > 0:
        raise PermanentJobError(f"none of the {stats.bad} sampled frames could be decoded", stage="decode")
    if not should_stop():
        _check_complete(info, stats, max_bad_ratio)


def _check_complete(info: VideoInfo, stats: DecodeStats, max_bad_ratio: float) -> None:
    """A stream that ends far short of the frames its container declares is truncated or corrupt."""
    missing = info.frame_count - stats.decoded
    if info.frame_count and missing > max(_FRAME_COUNT_SLACK, max_bad_ratio * info.frame_count):
        raise PermanentJobError(
            f"video is truncated or corrupt: decoding stopped after {stats.decoded} of the {info.frame_count} "
            f"frames its container declares (more than the {max_bad_ratio:.0%} allowed to be missing, "
            "FRAMESCALE_WORKER_MAX_BAD_FRAME_RATIO)",
            stage="decode",
        )


def _check_bad(stats: DecodeStats, max_bad_ratio: float) -> None:
    attempted = stats.sampled + stats.bad
    # Judge only once a few frames were tried, so one bad first frame does not fail a job.
    if attempted >= 10 and stats.bad / attempted > max_bad_ratio:
        raise PermanentJobError(
            f"{stats.bad} of {attempted} sampled frames could not be decoded "
            f"(more than the {max_bad_ratio:.0%} allowed)",
            stage="decode",
        )
