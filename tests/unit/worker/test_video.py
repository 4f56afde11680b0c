"""Decoding: kept frames, undecodable frames past the threshold, empty streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from framescale.local.videos import write_synthetic_video
from framescale.worker.errors import PermanentJobError
from framescale.worker.sampling import FrameSampler
from framescale.worker.video import DecodeStats, VideoInfo, open_video, sampled_frames

INFO = VideoInfo(width=8, height=6, fps=10.0, frame_count=0, codec="test")


class FakeCapture:
    """grab() succeeds ``frames`` times; retrieve() fails for the indices in ``broken``."""

    def __init__(self, frames: int, broken: set[int]) -> None:
        self.frames, self.broken, self.index = frames, broken, -1
        self.retrieved: list[int] = []

    def grab(self) -> bool:
        self.index += 1
        return self.index < self.frames

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        self.retrieved.append(self.index)
        if self.index in self.broken:
            return False, None
        return True, np.zeros((6, 8, 3), dtype=np.uint8)


def run(capture: FakeCapture, sample_fps: float, max_bad: float = 0.1) -> tuple[list[int], DecodeStats]:
    stats = DecodeStats()
    frames = sampled_frames(capture, INFO, FrameSampler(10.0, sample_fps), stats, max_bad_ratio=max_bad)  # type: ignore[arg-type]
    return [index for index, _, _ in frames], stats


def test_only_kept_frames_are_retrieved() -> None:
    capture = FakeCapture(30, set())
    kept, stats = run(capture, 1.0)
    assert kept == capture.retrieved == [0, 10, 20]
    assert (stats.decoded, stats.sampled, stats.bad) == (30, 3, 0)


def test_a_few_bad_frames_are_skipped_within_the_threshold() -> None:
    kept, stats = run(FakeCapture(40, {3}), 10.0, max_bad=0.1)
    assert 3 not in kept and len(kept) == 39 and stats.bad == 1


def test_too_many_bad_frames_fail_the_job_permanently() -> None:
    with pytest.raises(PermanentJobError, match="could not be decoded") as error:
        run(FakeCapture(40, set(range(0, 40, 3))), 10.0, max_bad=0.1)
    assert error.value.stage == "decode"


def test_no_frames_at_all_is_permanent() -> None:
    with pytest.raises(PermanentJobError, match="no decodable frames"):
        run(FakeCapture(0, set()), 1.0)


def test_open_video_describes_a_real_file(tmp_path: Path) -> None:
    video = write_synthetic_video(tmp_path / "v.avi", width=64, height=48, fps=12, frame_count=24)
    capture, info = open_video(video.path)
    capture.release()
    assert (info.width, info.height, info.fps, info.frame_count) == (64, 48, 12.0, 24)
    assert info.duration_seconds == pytest.approx(2.0)


def test_open_video_rejects_what_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("not a video")
    with pytest.raises(PermanentJobError, match="not a video"):
        open_video(path)


def test_the_duration_limit_holds_when_the_container_declares_no_length() -> None:
    # frame_count 0: the probe-time duration check sees 0 s, so decoding must stop itself.
    capture = FakeCapture(1000, set())
    stats = DecodeStats()
    frames = sampled_frames(capture, INFO, FrameSampler(10.0, 1.0), stats, max_bad_ratio=0.1, max_seconds=5.0)  # type: ignore[arg-type]
    with pytest.raises(PermanentJobError, match="MAX_DURATION_SECONDS") as error:
        list(frames)
    assert stats.decoded == 50, "decoding went on past 5 s of 10 fps video"
    assert error.value.stage == "decode"


def declared(frame_count: int) -> VideoInfo:
    return VideoInfo(width=8, height=6, fps=10.0, frame_count=frame_count, codec="test")


def test_a_stream_ending_far_short_of_its_declared_length_is_truncated() -> None:
    stats = DecodeStats()
    frames = sampled_frames(FakeCapture(50, set()), declared(100), FrameSampler(10.0, 1.0), stats, max_bad_ratio=0.1)  # type: ignore[arg-type]
    with pytest.raises(PermanentJobError, match="truncated or corrupt: decoding stopped after 50 of the 100"):
        list(frames)


def test_a_stream_a_few_frames_short_of_an_estimated_length_is_fine() -> None:
    # 2 of 6 and 9 of 100 missing: within the slack and the 10 % ratio.
    for decoded, count in ((4, 6), (91, 100)):
        stats = DecodeStats()
        frames = sampled_frames(
            FakeCapture(decoded, set()),  # type: ignore[arg-type]
            declared(count),
            FrameSampler(10.0, 10.0),
            stats,
            max_bad_ratio=0.1,
        )
        assert len(list(frames)) == decoded
