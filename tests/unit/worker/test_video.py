"""Decoding real files: true times, the exact samples, any container, precise reasons.

The inputs are made by ffmpeg at set-up (``tests/media.py``, cached); the expected frames and
times come from that ffmpeg's own ``showinfo`` account of each file, and the expected pixels
from a plain full decode with PyAV (every frame, nothing skipped), never from the code under
test.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from framescale.local.videos import write_synthetic_video
from framescale.worker.errors import PermanentJobError
from framescale.worker.geometry import plan_fit
from framescale.worker.sampling import Sampling
from framescale.worker.video import DecodeStats, VideoInfo, open_video, sampled_frames
from tests import media


def decode(
    path: Path, sampling: Sampling, *, max_seconds: float | None = None, fit: bool = False
) -> tuple[list[tuple[int, int, np.ndarray]], VideoInfo, DecodeStats]:
    source, info = open_video(path)
    stats = DecodeStats()
    try:
        fitted = plan_fit(info.height, info.width, 96, 96, "letterbox") if fit else None
        frames = list(
            sampled_frames(source, info, sampling, stats, max_bad_ratio=0.1, max_seconds=max_seconds, fit=fitted)
        )
    finally:
        source.release()
    return frames, info.measured(stats), stats


def reference(path: Path, sample_fps: float) -> tuple[list[int], list[int]]:
    """(frame numbers, pts_ms) of the samples, from ffmpeg's own frame times."""
    frames = media.frame_times(path)
    times = [frame.seconds for frame in frames]
    numbers = media.expected_samples(times, Fraction(sample_fps).limit_denominator(1_000_000))
    return numbers, [round((times[n] - times[0]) * 1000) for n in numbers]


@pytest.mark.parametrize("sample_fps", [1.0, 2.5, 10.0])
def test_variable_frame_rate_gets_true_times_and_the_samples_due(sample_fps: float) -> None:
    path = media.vfr_mp4()
    frames, info, _ = decode(path, Sampling("fps", sample_fps))
    numbers, times = reference(path, sample_fps)
    assert [index for index, _, _ in frames] == numbers
    assert [pts for _, pts, _ in frames] == times
    assert info.vfr is True and info.frame_count == 100
    assert info.duration_seconds == pytest.approx(6.0, abs=0.001)
    if sample_fps == 1.0:  # the issue's own example: 0, 1, 2 s in the 30 fps part, then one a second
        assert times == [0, 1000, 2000, 3000, 4000, 5000]


def test_constant_frame_rate_is_not_called_variable() -> None:
    _, info, _ = decode(media.long_gop_h264(), Sampling("fps", 1.0))
    assert info.vfr is False and info.fps == pytest.approx(30.0)


def bgr_md5_at(path: Path) -> dict[int, str]:
    """md5 of every frame's BGR pixels, from a plain PyAV decode of the whole file, by pts."""
    with av.open(str(path)) as container:
        return {
            frame.pts: hashlib.md5(frame.to_ndarray(format="bgr24").tobytes()).hexdigest()
            for frame in container.decode(video=0)
        }


@pytest.mark.parametrize("sample_fps", [0.2, 1.0, 4.0])
def test_skipping_frames_changes_no_kept_pixel(sample_fps: float) -> None:
    """Non-reference frames skipped and GOP tails dropped, yet every kept frame is bit-identical."""
    path = media.long_gop_h264()
    frames, info, stats = decode(path, Sampling("fps", sample_fps))
    full = bgr_md5_at(path)
    ordered = sorted(full)
    kept = {ordered[index]: hashlib.md5(picture.tobytes()).hexdigest() for index, _, picture in frames}
    assert kept == {pts: full[pts] for pts in kept}
    numbers, _ = reference(path, sample_fps)
    assert [index for index, _, _ in frames] == numbers
    # The work was really skipped: fewer frames decoded than the stream holds.
    assert stats.decoded < stats.frames == info.frame_count == 180
    assert stats.packets["decode-if-reference"] > 0
    if sample_fps < 1:
        assert stats.packets["drop"] > 0


def test_keyframes_mode_keeps_exactly_the_keyframes() -> None:
    path = media.long_gop_h264()
    frames, _, stats = decode(path, Sampling("keyframes", None))
    reference_frames = media.frame_times(path)
    keyframes = [n for n, frame in enumerate(reference_frames) if frame.keyframe]
    assert [index for index, _, _ in frames] == keyframes == [0, 60, 120]
    start = reference_frames[0].seconds
    assert [pts for _, pts, _ in frames] == [round((reference_frames[n].seconds - start) * 1000) for n in keyframes]
    assert stats.decoded == len(keyframes)


def test_audio_longer_than_the_video_is_normal() -> None:
    # The container lasts 8 s (its audio); the video stream 5 s. Judged by the video, it is whole.
    path = media.webm_audio_longer()
    with av.open(str(path)) as container:
        assert container.duration / av.time_base == pytest.approx(8.0, abs=0.1)
    frames, info, _ = decode(path, Sampling("fps", 1.0))
    assert [pts for _, pts, _ in frames] == [0, 1000, 2000, 3000, 4000]
    assert info.frame_count == 50 and info.duration_seconds == pytest.approx(5.0, abs=0.01)
    assert info.codec == "vp9"


def test_audio_shorter_than_the_video_is_normal() -> None:
    frames, info, _ = decode(media.mkv_audio_shorter(), Sampling("fps", 2.0))
    assert len(frames) == 10 and info.frame_count == 50


@pytest.mark.parametrize(("rate", "frames", "step_ms"), [("1/20", 5, 20_000), ("1/600", 3, 600_000)])
def test_time_lapse_down_to_one_frame_per_ten_minutes(rate: str, frames: int, step_ms: int) -> None:
    path = media.timelapse(rate, frames, f"lapse-{rate.replace('/', '-')}.mp4")
    kept, info, _ = decode(path, Sampling("fps", 1.0))
    assert [pts for _, pts, _ in kept] == [step_ms * n for n in range(frames)]
    assert [index for index, _, _ in kept] == list(range(frames))
    assert info.duration_seconds == pytest.approx(frames * step_ms / 1000)


def test_a_transport_stream_starting_late_counts_from_its_first_frame() -> None:
    path = media.mpegts_late_start()
    frames, info, _ = decode(path, Sampling("fps", 1.0))
    assert [pts for _, pts, _ in frames] == [0, 1000, 2000]
    assert info.start_seconds == pytest.approx(float(media.frame_times(path)[0].seconds)) == pytest.approx(11.4)


def test_av1_is_decoded_by_this_build() -> None:
    if not media.can_encode("libaom-av1"):
        pytest.skip("this ffmpeg cannot write AV1, so no AV1 input could be made")
    path = media.av1()
    frames, info, _ = decode(path, Sampling("fps", 5.0))
    numbers, times = reference(path, 5.0)
    assert info.codec == "av1"
    assert [index for index, _, _ in frames] == numbers and [pts for _, pts, _ in frames] == times


def test_an_undecodable_codec_is_named() -> None:
    with pytest.raises(PermanentJobError, match="codec QQQQ is not supported by this build") as error:
        open_video(media.unknown_codec_avi())
    assert error.value.stage == "probe"


def test_audio_only_has_no_video_stream() -> None:
    with pytest.raises(PermanentJobError, match=r"no video stream \(it holds only audio\)"):
        open_video(media.audio_only())


def test_what_is_not_a_video_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("not a video")
    with pytest.raises(PermanentJobError, match="not a video FFmpeg can read"):
        open_video(path)


def test_a_rotated_video_is_shown_upright_as_opencv_shows_it() -> None:
    rotated = media.rotated()
    frames, info, _ = decode(rotated, Sampling("fps", 10.0))
    assert (info.width, info.height, info.rotation) == (48, 64, 90)
    capture = cv2.VideoCapture(str(rotated), cv2.CAP_FFMPEG)
    ok, upright = capture.read()
    capture.release()
    assert ok and np.array_equal(frames[0][2], upright)


def test_fitted_frames_are_letterboxed_rgb(tmp_path: Path) -> None:
    video = write_synthetic_video(tmp_path / "v.avi", width=128, height=64, fps=10, frame_count=5)
    whole, _, _ = decode(video.path, Sampling("fps", 10.0))
    fitted, _, _ = decode(video.path, Sampling("fps", 10.0), fit=True)
    picture = fitted[0][2]
    assert picture.shape == (96, 96, 3)
    assert not picture[:24].any() and not picture[72:].any(), "padding above and below stays black"
    expected = cv2.cvtColor(cv2.resize(whole[0][2], (96, 48), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    assert np.abs(picture[24:72].astype(int) - expected).mean() < 3  # same picture, RGB, within rounding


def test_open_video_describes_a_real_file(tmp_path: Path) -> None:
    video = write_synthetic_video(tmp_path / "v.avi", width=64, height=48, fps=12, frame_count=24)
    source, info = open_video(video.path)
    source.release()
    assert (info.width, info.height, info.fps, info.frame_count) == (64, 48, 12.0, 24)
    assert info.duration_seconds == pytest.approx(2.0)


def raw_mjpeg(path: Path, frames: int) -> Path:
    """Concatenated JPEGs: FFmpeg reads them at 25 fps, and the stream declares no length."""
    with path.open("wb") as out:
        for number in range(frames):
            out.write(cv2.imencode(".jpg", np.full((48, 64, 3), number % 250, np.uint8))[1].tobytes())
    return path


def test_the_duration_limit_holds_when_the_container_declares_no_length(tmp_path: Path) -> None:
    path = raw_mjpeg(tmp_path / "long.mjpeg", 200)  # 8 s at 25 fps
    source, info = open_video(path)
    assert info.duration_seconds == 0.0  # nothing declared: the probe-time check cannot see it
    stats = DecodeStats()
    frames = sampled_frames(source, info, Sampling("fps", 1.0), stats, max_bad_ratio=0.1, max_seconds=5.0)
    with pytest.raises(PermanentJobError, match="MAX_DURATION_SECONDS") as error:
        list(frames)
    source.release()
    assert 120 <= stats.frames <= 130, "decoding went on past 5 s of 25 fps video"
    assert error.value.stage == "decode"


def test_a_stream_ending_far_short_of_its_declared_length_is_truncated(tmp_path: Path) -> None:
    whole = write_synthetic_video(tmp_path / "whole.avi", width=160, height=120, fps=30, frame_count=60).path
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(PermanentJobError, match=r"truncated or corrupt: decoding stopped after \d+ of the 60 frames"):
        decode(cut, Sampling("fps", 1.0))


def test_a_video_without_frames_has_no_decodable_frames(tmp_path: Path) -> None:
    path = tmp_path / "zero.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    writer.release()
    with pytest.raises(PermanentJobError, match="no decodable frames"):
        decode(path, Sampling("fps", 1.0))
