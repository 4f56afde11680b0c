"""Reading videos with PyAV (FFmpeg's libraries): probe, then decode only what the samples need.

Every packet of the video stream is demuxed, so frame numbers, true presentation times and
the stream's own length are facts, not estimates; ``framescale.worker.packets`` decides from
them which packets reach the decoder (non-reference frames that are no sample are skipped by
the decoder, GOP tails and GOPs without a sample never reach it). Kept frames are scaled
once, in YUV, straight to the model's input size and converted to RGB there (swscale), which
costs less than converting the full frame and resizing it afterwards (``bench/decode.py``
measures both).

Times: ``pts_ms`` counts from the first video frame (``start_seconds`` in the summary is that
frame's time on the container's clock: an MPEG-TS capture may start at 11.4 s).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import av.logging
import numpy as np

from framescale.worker.errors import PermanentJobError
from framescale.worker.geometry import Fit
from framescale.worker.packets import Action, PacketFacts, PacketPlanner, Planned
from framescale.worker.sampling import FrameSampler, Sampling

log = logging.getLogger(__name__)

# Average frame rates outside this range are container garbage, not real videos; time-lapse
# and surveillance footage go down to one frame every 10 minutes.
MIN_FPS, MAX_FPS = 1 / 600, 1000.0
# Containers often round their declared frame count or duration: a stream that ends a couple
# of frames early is normal, not damage.
_FRAME_COUNT_SLACK = 2
# Two frame intervals differing by more than this (and by more than a tick of the time base)
# make a stream variable-frame-rate.
_VFR_TOLERANCE = 0.01
# The interpolation used for every resize (swscale's area averaging, like cv2.INTER_AREA).
_INTERPOLATION = "AREA"


@dataclass(frozen=True)
class VideoInfo:
    """The video stream as probed; after decoding, ``measured()`` adds what decoding found."""

    width: int  # as displayed (a rotation of 90 or 270 degrees swaps the coded sides)
    height: int
    fps: float  # average frame rate (frames / duration once measured); 0 when not stated
    frame_count: int  # declared by the container for this stream (0: not declared); found once measured
    codec: str
    container: str = ""
    time_base: Fraction = Fraction(1, 1000)
    declared_seconds: float | None = None  # the video stream's own duration, when the container states it
    rotation: int = 0  # degrees, counter-clockwise, from the stream's display matrix
    # Found by decoding (measured()):
    start_seconds: float | None = None
    measured_seconds: float | None = None
    vfr: bool | None = None
    keyframes: int | None = None
    timestamps: str = "container"  # or "frame rate" when the container has none

    @property
    def duration_seconds(self) -> float:
        """The video stream's duration: measured, else declared, else 0 (unknown before decoding)."""
        if self.measured_seconds is not None:
            return self.measured_seconds
        if self.declared_seconds is not None:
            return self.declared_seconds
        return self.frame_count / self.fps if self.fps > 0 else 0.0

    def measured(self, stats: DecodeStats) -> VideoInfo:
        """This stream as decoding found it (frame count, duration and times from the stream itself)."""
        seconds = stats.duration_seconds
        fps = stats.frames / seconds if seconds and stats.frames > 1 else self.fps
        return replace(
            self,
            fps=fps,
            frame_count=stats.frames,
            start_seconds=stats.start_seconds,
            measured_seconds=seconds,
            vfr=stats.vfr,
            keyframes=stats.keyframes,
            timestamps="frame rate" if stats.untimed else "container",
        )

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 4),
            "frame_count": self.frame_count,
            "duration_seconds": round(self.duration_seconds, 3),
            "codec": self.codec,
            "container": self.container,
        }
        if self.measured_seconds is not None:
            out.update(
                start_seconds=round(self.start_seconds, 6) if self.start_seconds is not None else None,
                vfr=self.vfr,
                keyframes=self.keyframes,
                timestamps=self.timestamps,
            )
        if self.rotation:
            out["rotation"] = self.rotation
        return out


class VideoSource:
    """An open video file: the container and its video stream (``release()`` closes it)."""

    def __init__(self, container: Any, stream: Any) -> None:
        self.container = container
        self.stream = stream

    def release(self) -> None:
        self.container.close()


def _declared_seconds(stream: Any, container: Any) -> float | None:
    """The video stream's own duration: its header's, or Matroska's per-track DURATION tag."""
    if stream.duration is not None and stream.duration > 0 and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        match = re.fullmatch(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", tag.strip())
        if match:
            hours, minutes, seconds = match.groups()
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return None


def open_video(path: Path) -> tuple[VideoSource, VideoInfo]:
    """Open the file and describe its video stream, or say precisely why it cannot be read."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise PermanentJobError(
            f"not a video FFmpeg can read (unknown container or damaged file: {_ffmpeg_reason(error)})",
            stage="probe",
        ) from None
    try:
        stream, info = _describe(path, container)
    except BaseException:
        container.close()
        raise
    return VideoSource(container, stream), info


def _describe(path: Path, container: Any) -> tuple[Any, VideoInfo]:
    videos = [s for s in container.streams.video if not _is_cover_art(s)]
    if not videos:
        kinds = sorted({s.type for s in container.streams})
        has = f"it holds only {', '.join(kinds)}" if kinds else "it holds no streams"
        raise PermanentJobError(f"no video stream ({has})", stage="probe")
    stream = videos[0]
    codec = stream.codec_context
    if codec is None:  # PyAV found no decoder for the stream's codec
        raise PermanentJobError(
            f"codec {_codec_of_undecodable(path)} is not supported by this build (FFmpeg has no decoder for it)",
            stage="probe",
        )
    width, height = int(codec.width), int(codec.height)
    if width <= 0 or height <= 0:
        raise PermanentJobError("video has no picture (width or height is zero)", stage="probe")
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    if fps and not (MIN_FPS * (1 - 1e-6) <= fps <= MAX_FPS):
        raise PermanentJobError(
            f"video reports an unusable frame rate ({fps:g} fps; from one frame every 10 minutes to {MAX_FPS:g} fps "
            "can be read)",
            stage="probe",
        )
    rotation = _rotation(path, list(container.streams.video).index(stream))
    if rotation in (90, 270):
        width, height = height, width
    info = VideoInfo(
        width=width,
        height=height,
        fps=fps,
        frame_count=int(stream.frames or 0),
        # The format's name (av1), not the decoder's (libdav1d).
        codec=str(getattr(codec.codec, "canonical_name", None) or codec.name),
        container=str(container.format.name),
        time_base=Fraction(stream.time_base) if stream.time_base else Fraction(1, 1000),
        declared_seconds=_declared_seconds(stream, container),
        rotation=rotation,
    )
    return stream, info


def _is_cover_art(stream: Any) -> bool:
    # An attached picture (album art in an audio file) is a "video" stream of one image.
    disposition = getattr(stream, "disposition", None)
    return bool(disposition is not None and "attached_pic" in str(disposition).lower())


def _rotation(path: Path, index: int) -> int:
    """Counter-clockwise degrees the picture turns to be shown upright (the stream's display matrix).

    PyAV exposes the matrix on decoded frames only, so the first frame is decoded from a
    second, short-lived opening of the file (a few milliseconds); a file whose first frame
    does not decode is shown as coded, and decoding proper says what is wrong with it.
    """
    try:
        with av.open(str(path), metadata_errors="ignore") as peek:
            stream = peek.streams.video[index]
            for packet in peek.demux(stream):
                for frame in stream.codec_context.decode(packet):
                    return round(frame.rotation) % 360 // 90 * 90
                if packet.size == 0:
                    break
    except (av.error.FFmpegError, ValueError):
        pass
    return 0


def _codec_of_undecodable(path: Path) -> str:
    """The codec's name (or its FourCC) as FFmpeg describes a stream it has no decoder for.

    PyAV gives no name for such a stream; FFmpeg's own log line does ("Video: none (QQQQ / 0x...)").
    """
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture(True) as lines, av.open(str(path), metadata_errors="ignore"):
            pass
    except av.error.FFmpegError:
        lines = []
    finally:
        av.logging.set_level(None)
    for _level, _name, text in lines:
        match = re.search(r"Video: (\S+?),? (?:\((\S+) / 0x[0-9a-fA-F]+\))?", text)
        if match:
            name, tag = match.groups()
            return (name if name != "none" else tag or name).upper() if (name != "none" or tag) else "unknown"
    return "of this file"


def _ffmpeg_reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return str(text).split(":")[0].strip() or type(error).__name__


@dataclass
class DecodeStats:
    frames: int = 0  # frames in the video stream (demuxed packets that are frames)
    decoded: int = 0  # frames the decoder produced
    sampled: int = 0  # frames kept and converted
    bad: int = 0  # packets the decoder could not decode
    keyframes: int = 0
    packets: dict[str, int] = field(default_factory=dict)  # planner actions, by name
    start_seconds: float | None = None
    duration_seconds: float | None = None
    vfr: bool | None = None
    untimed: bool = False


@dataclass
class _Decoder:
    """The codec context with the state the plan switches: skip mode, draining."""

    context: Any
    skip: str = "DEFAULT"

    def set_skip(self, mode: str) -> None:
        if mode != self.skip:
            self.context.skip_frame = mode
            self.skip = mode


def sampled_frames(
    source: VideoSource,
    info: VideoInfo,
    sampling: Sampling,
    stats: DecodeStats,
    *,
    max_bad_ratio: float,
    should_stop: Callable[[], bool] = lambda: False,
    max_seconds: float | None = None,
    fit: Fit | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(frame_index, pts_ms, frame)`` for every kept frame, in presentation order.

    ``frame`` is the picture fitted to the model input (RGB, ``fit``'s size) when ``fit`` is
    given, else the whole picture as BGR. ``max_seconds`` bounds the decode by the frames' own
    times even when the container declares no length.
    """
    stream = source.stream
    time_base = info.time_base
    decoder = _Decoder(stream.codec_context)
    decoder.context.thread_type = "AUTO"
    keyframes_only = sampling.keyframes
    if keyframes_only:
        decoder.set_skip("NONKEY")
    sampler = FrameSampler(sampling.sample_fps or 1.0, time_base) if not keyframes_only else None
    planner: PacketPlanner[Any] = PacketPlanner(
        sampler.clock.slot if sampler else None,
        keyframes_only=keyframes_only,
        intra_only=_intra_only(decoder.context),
    )
    limit_ticks = int(max_seconds / time_base) if max_seconds is not None else None
    untimed_index = 0
    last_frame: tuple[int, int] | None = None  # (pts, duration) of the latest frame in the stream

    def frames_out(frames: list[Any]) -> Iterator[tuple[int, int, np.ndarray]]:
        nonlocal untimed_index, last_frame
        for frame in frames:
            stats.decoded += 1
            if planner.untimed or frame.pts is None:
                # No timestamps in the container: times follow from the frame rate.
                index = untimed_index
                untimed_index += 1
                ticks = round(index / (info.fps or 25.0) / time_base)
            else:
                origin = planner.timeline.origin or 0
                index = planner.timeline.index_of(frame.pts)
                ticks = frame.pts - origin
            # Keyframes mode: only keyframes reach the decoder, and every one of them is kept.
            keep = keyframes_only or (sampler is not None and sampler.keep(ticks))
            if not keep:
                continue
            stats.sampled += 1
            yield index, round(float(ticks * time_base) * 1000.0), _picture(frame, fit, info.rotation)

    def decode(plans: list[Planned[Any]]) -> Iterator[tuple[int, int, np.ndarray]]:
        for plan in plans:
            if plan.action is Action.DROP:
                continue
            if plan.restart and not keyframes_only:
                yield from frames_out(_drain(decoder, stats, max_bad_ratio))
            if not keyframes_only:
                decoder.set_skip("DEFAULT" if plan.action is Action.DECODE else "NONREF")
            try:
                frames = decoder.context.decode(plan.packet)
            except av.error.FFmpegError as error:
                stats.bad += 1
                log.debug("packet could not be decoded", extra={"reason": str(error), "stage": "decode"})
                _check_bad(stats, max_bad_ratio)
                continue
            yield from frames_out(frames)

    first_pts: int | None = None
    packets = source.container.demux(stream)
    while not should_stop():
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as error:
            # Damage past this point: what was read is judged below against what the stream declares.
            log.warning("demuxing stopped early", extra={"reason": str(error), "stage": "decode"})
            break
        if packet.size == 0:
            continue
        facts = PacketFacts(packet.pts, bool(packet.is_keyframe), int(packet.size), bool(packet.is_discard))
        if not facts.discard:
            stats.frames += 1
            stats.keyframes += facts.keyframe
            if facts.pts is not None:
                first_pts = facts.pts if first_pts is None else min(first_pts, facts.pts)
                if last_frame is None or facts.pts >= last_frame[0]:
                    last_frame = (facts.pts, int(packet.duration or 0))
            _check_length(
                facts, first_pts=first_pts, stats=stats, info=info, limit_ticks=limit_ticks, max_seconds=max_seconds
            )
        yield from decode(planner.push(packet, facts))
    if should_stop():
        return
    yield from decode(planner.finish())
    yield from frames_out(_drain(decoder, stats, max_bad_ratio))
    stats.packets = {action.value: count for action, count in planner.counts.items()}
    stats.untimed = planner.untimed
    _describe_timeline(stats, planner, info, last_frame)
    if stats.decoded == 0:
        raise PermanentJobError("video has no decodable frames", stage="decode")
    if stats.sampled == 0 and stats.bad > 0:
        raise PermanentJobError(f"none of the {stats.bad} sampled frames could be decoded", stage="decode")
    _check_complete(info, stats, max_bad_ratio)


def _intra_only(context: Any) -> bool:
    codec = getattr(context, "codec", None)
    return bool(getattr(codec, "intra_only", False)) if codec is not None else False


def _drain(decoder: _Decoder, stats: DecodeStats, max_bad_ratio: float) -> list[Any]:
    """Everything still inside the decoder, then a clean state for the next keyframe."""
    try:
        frames = list(decoder.context.decode(None))
    except av.error.FFmpegError:
        stats.bad += 1
        _check_bad(stats, max_bad_ratio)
        frames = []
    decoder.context.flush_buffers()
    return frames


def _picture(frame: Any, fit: Fit | None, rotation: int) -> np.ndarray:
    """The kept frame as pixels: fitted to the model input (RGB) or whole (BGR)."""
    if fit is None:
        picture = frame.to_ndarray(format="bgr24")
        return np.ascontiguousarray(np.rot90(picture, rotation // 90)) if rotation else picture
    turned = rotation in (90, 270)
    out = np.zeros((fit.input_height, fit.input_width, 3), dtype=np.uint8)
    if fit.content_height == 0:  # stretch
        height, width, top, left = fit.input_height, fit.input_width, 0, 0
    else:
        height, width, top, left = fit.content_height, fit.content_width, fit.content_top, fit.content_left
    coded_w, coded_h = (height, width) if turned else (width, height)
    scaled = frame.reformat(coded_w, coded_h, "rgb24", interpolation=_INTERPOLATION).to_ndarray()
    if rotation:
        scaled = np.rot90(scaled, rotation // 90)
    out[top : top + height, left : left + width] = scaled
    return out


def _check_length(
    facts: PacketFacts,
    *,
    first_pts: int | None,
    stats: DecodeStats,
    info: VideoInfo,
    limit_ticks: int | None,
    max_seconds: float | None,
) -> None:
    """Stop as soon as the frames' own times pass the duration limit (declared length or not)."""
    if limit_ticks is None or max_seconds is None:
        return
    if facts.pts is not None and first_pts is not None:
        over = facts.pts - first_pts > limit_ticks
        at = float((facts.pts - first_pts) * info.time_base)
    else:
        at = stats.frames / (info.fps or 25.0)
        over = at > max_seconds
    if over:
        raise PermanentJobError(
            f"video lasts longer than {max_seconds:.0f} s: decoding stopped at {at:.1f} s, frame {stats.frames} "
            "(FRAMESCALE_WORKER_MAX_DURATION_SECONDS)",
            stage="decode",
        )


def _describe_timeline(
    stats: DecodeStats, planner: PacketPlanner[Any], info: VideoInfo, last_frame: tuple[int, int] | None
) -> None:
    """Start, duration and frame-rate regularity from the stream's own frame times."""
    ticks = np.frombuffer(planner.timeline.ticks(), dtype=np.int64) if len(planner.timeline) else None
    if ticks is None or planner.untimed:
        stats.start_seconds = 0.0
        stats.duration_seconds = stats.frames / info.fps if info.fps else 0.0
        stats.vfr = None
        return
    time_base = info.time_base
    stats.start_seconds = float(ticks[0] * time_base)
    intervals = np.diff(ticks)
    if len(intervals):
        typical = float(np.median(intervals))
        spread = float(intervals.max() - intervals.min())
        # A tick of rounding (33/34 ms at a 1 ms time base) is no variation.
        stats.vfr = bool(spread > max(2.0, _VFR_TOLERANCE * typical))
    else:
        typical = 0.0
        stats.vfr = False
    # The last frame lasts its own duration when the container says so, else a typical interval.
    last_duration = last_frame[1] if last_frame is not None and last_frame[1] > 0 else typical
    if not last_duration and info.fps:
        last_duration = float(1 / info.fps / time_base)
    stats.duration_seconds = float((int(ticks[-1]) - int(ticks[0]) + last_duration) * time_base)


def _check_complete(info: VideoInfo, stats: DecodeStats, max_bad_ratio: float) -> None:
    """A stream that ends far short of what the container declares for it is truncated or corrupt.

    Judged from the video stream alone (its declared frame count, else its declared duration),
    never from the container's overall duration: audio longer than the video is normal.
    """
    declared = info.frame_count
    if declared:
        missing = declared - stats.frames
        if missing > max(_FRAME_COUNT_SLACK, max_bad_ratio * declared):
            raise PermanentJobError(
                f"video is truncated or corrupt: decoding stopped after {stats.frames} of the {declared} "
                f"frames its video stream declares (more than the {max_bad_ratio:.0%} allowed to be missing, "
                "FRAMESCALE_WORKER_MAX_BAD_FRAME_RATIO)",
                stage="decode",
            )
        return
    if info.declared_seconds and stats.duration_seconds is not None and stats.frames > 1:
        interval = stats.duration_seconds / stats.frames
        missing_seconds = info.declared_seconds - stats.duration_seconds
        if missing_seconds > max(_FRAME_COUNT_SLACK * interval, max_bad_ratio * info.declared_seconds):
            raise PermanentJobError(
                f"video is truncated or corrupt: decoding stopped at {stats.duration_seconds:.2f} s of the "
                f"{info.declared_seconds:.2f} s its video stream declares (more than the {max_bad_ratio:.0%} "
                "allowed to be missing, FRAMESCALE_WORKER_MAX_BAD_FRAME_RATIO)",
                stage="decode",
            )


def _check_bad(stats: DecodeStats, max_bad_ratio: float) -> None:
    attempted = stats.decoded + stats.bad
    # Judge only once a few frames were tried, so one bad first frame does not fail a job.
    if attempted >= 10 and stats.bad / attempted > max_bad_ratio:
        raise PermanentJobError(
            f"{stats.bad} of {attempted} frames could not be decoded (more than the {max_bad_ratio:.0%} allowed)",
            stage="decode",
        )
