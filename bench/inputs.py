"""Input videos for the benchmarks, built once and cached under bench/inputs/ (gitignored).

Content matters to a codec: flat synthetic frames compress to almost nothing and decode
several times faster than camera footage. So the throughput and decode videos are the
slow push-in over real photographs (``write_photo_video``: people in them, for the person
detector), plus one synthetic video for variety. H.264 copies are transcoded from the
mp4v files with the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships (libx264);
OpenCV can read H.264 but not write it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2

from framescale.local.videos import write_photo_video, write_synthetic_video

INPUTS_DIR = Path(__file__).resolve().parent / "inputs"
# write_photo_video shows three photographs in turn.
PHOTOS = 3


@dataclass(frozen=True)
class Video:
    path: Path
    width: int
    height: int
    fps: float
    frames: int
    codec: str

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    def describe(self) -> dict[str, object]:
        return {
            "file": self.path.name,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "frames": self.frames,
            "seconds": round(self.seconds, 2),
            "bytes": self.path.stat().st_size,
        }


def probe(path: Path, codec: str) -> Video:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise RuntimeError(f"OpenCV cannot open {path}")
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        frames = 0
        while capture.grab():  # count by decoding: container frame counts can be estimates
            frames += 1
    finally:
        capture.release()
    return Video(path, width, height, fps, frames, codec)


def _cached(path: Path, build: Callable[[Path], object]) -> Path:
    """Build ``path`` unless it exists; build into a temporary name so an interrupted run leaves no half file."""
    if path.exists() and path.stat().st_size > 0:
        return path
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    partial.unlink(missing_ok=True)
    build(partial)
    partial.replace(path)
    return path


def photo_video(width: int, height: int, fps: float, seconds: float, directory: Path = INPUTS_DIR) -> Video:
    """Real photographs with people, slowly zoomed: camera-like content for the codec."""
    name = f"photos-{width}x{height}-{fps:g}fps-{seconds:g}s-mp4v.mp4"
    path = _cached(
        directory / name,
        lambda out: write_photo_video(out, width=width, height=height, fps=fps, seconds_per_photo=seconds / PHOTOS),
    )
    return probe(path, "mp4v")


def synthetic_video(width: int, height: int, fps: float, seconds: float, directory: Path = INPUTS_DIR) -> Video:
    name = f"synthetic-{width}x{height}-{fps:g}fps-{seconds:g}s-mp4v.mp4"
    frames = round(fps * seconds)
    path = _cached(
        directory / name,
        lambda out: write_synthetic_video(out, width=width, height=height, fps=fps, frame_count=frames, seed=3),
    )
    return probe(path, "mp4v")


def ffmpeg_executable() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def h264_copy(source: Video, directory: Path = INPUTS_DIR, *, x264_defaults: bool = False) -> Video:
    """``source`` transcoded to H.264 (libx264, yuv420p).

    By default with ``-preset veryfast -crf 23`` (quick to make); with ``x264_defaults`` with
    x264's own defaults (preset medium: keyframes up to 250 frames apart, 3 B-frames in a
    pyramid, so about half the frames are non-reference), what most encoders write.
    """
    suffix = "-x264.mp4" if x264_defaults else "-h264.mp4"
    name = source.path.name.replace("-mp4v.mp4", suffix)
    speed = [] if x264_defaults else ["-preset", "veryfast", "-crf", "23"]

    def build(out: Path) -> None:
        command = [
            ffmpeg_executable(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(source.path),
            "-c:v",
            "libx264",
            *speed,
            "-pix_fmt",
            "yuv420p",
            "-an",
            str(out),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg could not make {out.name}: {result.stderr.strip()[-2000:]}")

    path = _cached(directory / name, build)
    return probe(path, "h264")


def clear(directory: Path = INPUTS_DIR) -> None:
    shutil.rmtree(directory, ignore_errors=True)
