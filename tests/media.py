"""Test videos made with FFmpeg (the binary in the ``imageio-ffmpeg`` wheel), cached, and the
decoder's own account of their frames, read independently of the worker's code.

Each recipe is an ffmpeg command line; its output is cached under ``tests/.media/`` by a hash
of the command, so the first run makes them (a few seconds) and later runs reuse them.

``frame_times`` asks the same ffmpeg binary (not PyAV, not the worker) for the presentation
time of every decoded frame, through its ``showinfo`` filter: the reference the tests compare
the worker's frame numbers and ``pts_ms`` with.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".media"
TIMEOUT = 300


def ffmpeg() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ffmpeg(), "-hide_banner", "-nostdin", *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def make(name: str, args: list[str]) -> Path:
    """``ffmpeg args... <out>``, cached by the command; the output file is named ``name``."""
    digest = hashlib.sha256("\0".join(args).encode()).hexdigest()[:12]
    out = CACHE / f"{Path(name).stem}-{digest}{Path(name).suffix}"
    if out.exists() and out.stat().st_size > 0:
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.stem + ".partial" + out.suffix)
    result = _run(["-loglevel", "error", "-y", *args, str(partial)])
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not make {name}: {result.stderr.strip()[-2000:]}")
    partial.replace(out)
    return out


def can_encode(encoder: str) -> bool:
    result = _run(["-encoders"])
    return re.search(rf"^\s*V\S*\s+{re.escape(encoder)}\s", result.stdout, re.MULTILINE) is not None


# ---------------------------------------------------------------- recipes

_SMALL = "size=160x120"


def vfr_mp4() -> Path:
    """2 s at 30 fps, then 4 s at 10 fps, in one H.264 stream (what phones and screen recorders write)."""
    graph = f"testsrc={_SMALL}:rate=30:duration=2[a];testsrc={_SMALL}:rate=10:duration=4[b];[a][b]concat=n=2:v=1:a=0"
    return make("vfr.mp4", ["-filter_complex", graph, "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p"])


def long_gop_h264(seconds: int = 6) -> Path:
    """x264 defaults (B-frames, B-pyramid, non-reference frames), keyframes every 2 s."""
    return make(
        "gop.mp4",
        [
            "-f", "lavfi", "-i", f"testsrc2={_SMALL}:rate=30:duration={seconds}",
            "-c:v", "libx264", "-g", "60", "-keyint_min", "60", "-pix_fmt", "yuv420p",
        ],
    )  # fmt: skip


def webm_audio_longer() -> Path:
    """5 s of VP9 video and 8 s of Opus audio: the container lasts 8 s, the video 5."""
    return make(
        "long-audio.webm",
        [
            "-f", "lavfi", "-i", f"testsrc={_SMALL}:rate=10:duration=5",
            "-f", "lavfi", "-i", "sine=frequency=440:duration=8",
            "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus",
        ],
    )  # fmt: skip


def mkv_audio_shorter() -> Path:
    """5 s of H.264 video and 2 s of audio in Matroska."""
    return make(
        "short-audio.mkv",
        [
            "-f", "lavfi", "-i", f"testsrc={_SMALL}:rate=10:duration=5",
            "-f", "lavfi", "-i", "sine=frequency=440:duration=2",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
        ],
    )  # fmt: skip


def timelapse(frame_rate: str, frames: int, name: str) -> Path:
    """``frames`` frames at ``frame_rate`` (a fraction: 1/20 is one frame every 20 s)."""
    return make(
        name,
        [
            "-f", "lavfi", "-i", f"testsrc={_SMALL}:rate={frame_rate}",
            "-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p",
        ],
    )  # fmt: skip


def audio_only() -> Path:
    return make("audio.m4a", ["-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac"])


def av1() -> Path:
    return make(
        "av1.mp4",
        [
            "-f", "lavfi", "-i", f"testsrc={_SMALL}:rate=10:duration=2",
            "-c:v", "libaom-av1", "-cpu-used", "8", "-crf", "40", "-pix_fmt", "yuv420p",
        ],
    )  # fmt: skip


def mpegts_late_start() -> Path:
    """A transport-stream capture whose clock reads 11.4 s at its first frame."""
    return make(
        "late.ts",
        [
            "-f", "lavfi", "-i", f"testsrc={_SMALL}:rate=10:duration=3",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-output_ts_offset", "11.4", "-muxdelay", "0", "-muxpreload", "0",
        ],
    )  # fmt: skip


def rotated() -> Path:
    """64x48 H.264 whose display matrix turns it 90 degrees (how a phone held upright records)."""
    source = make(
        "upright-source.mp4",
        ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1", "-c:v", "libx264", "-pix_fmt", "yuv420p"],
    )
    return make("rotated.mp4", ["-display_rotation", "90", "-i", str(source), "-c", "copy"])


def unknown_codec_avi() -> Path:
    """An MJPEG AVI whose FourCC is changed to one no FFmpeg decoder knows (QQQQ)."""
    source = make("mjpeg.avi", ["-f", "lavfi", "-i", f"testsrc={_SMALL}:rate=10:duration=1", "-c:v", "mjpeg"])
    out = source.with_name(source.stem + "-qqqq.avi")
    if not out.exists():
        out.write_bytes(source.read_bytes().replace(b"MJPG", b"QQQQ"))
    return out


# ---------------------------------------------------------------- the decoder's own account


@dataclass(frozen=True)
class ReferenceFrame:
    seconds: Fraction  # presentation time on the container's clock
    keyframe: bool
    checksum: str  # showinfo's Adler-32 of the decoded picture


def frame_times(path: Path) -> list[ReferenceFrame]:
    """Every frame of the first video stream as ffmpeg decodes it, in presentation order."""
    result = _run(["-copyts", "-i", str(path), "-map", "0:v:0", "-vf", "showinfo", "-fps_mode", "passthrough",
                   "-f", "null", "-"])  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg could not decode {path.name}: {result.stderr.strip()[-2000:]}")
    time_base = _stream_time_base(result.stderr)
    frames = []
    for match in re.finditer(
        r"n:\s*\d+\s+pts:\s*(-?\d+)\s+pts_time:\S+.*?iskey:(\d).*?checksum:([0-9A-F]+)", result.stderr
    ):
        pts, key, checksum = match.groups()
        frames.append(ReferenceFrame(int(pts) * time_base, key == "1", checksum))
    if not frames:
        raise RuntimeError(f"showinfo reported no frames for {path.name}")
    return frames


def _stream_time_base(log: str) -> Fraction:
    # showinfo prints its input's time base in its config line: "config in time_base: 1/90000".
    match = re.search(r"config in time_base: (\d+)/(\d+)", log)
    if not match:
        raise RuntimeError("showinfo printed no time base")
    return Fraction(int(match.group(1)), int(match.group(2)))


def expected_samples(times: list[Fraction], sample_fps: Fraction) -> list[int]:
    """Frame numbers of the samples: for k = 0, 1, ..., the first frame whose time is >= k / r.

    Written from the rule's words (a search per k), not from the worker's slot arithmetic.
    """
    if not times:
        return []
    start = times[0]
    relative = [t - start for t in times]
    out: list[int] = []
    k = 0
    while True:
        due = k / sample_fps
        index = next((i for i, t in enumerate(relative) if t >= due), None)
        if index is None:
            return out
        if not out or index != out[-1]:
            out.append(index)
        k += 1
