"""Frame sampling: which frames are kept for a requested rate."""

from __future__ import annotations

import math

import pytest

from framescale.worker.sampling import FrameSampler, expected_sample_count


def kept(frames: int, source: float, sample: float) -> list[int]:
    sampler = FrameSampler(source, sample)
    return [i for i in range(frames) if sampler.keep(i)]


@pytest.mark.parametrize(
    ("frames", "source", "sample", "expected"),
    [
        (30, 10, 1, [0, 10, 20]),
        (31, 10, 1, [0, 10, 20, 30]),
        (10, 10, 2, [0, 5]),
        (10, 10, 3, [0, 4, 7]),  # due at 0, 3.33, 6.67 → first frame at or after
        (5, 10, 10, [0, 1, 2, 3, 4]),
        (5, 10, 50, [0, 1, 2, 3, 4]),  # faster than the source: every frame once
        (90, 29.97, 1, [0, 30, 60]),
        (100, 25, 0.1, [0]),
    ],
)
def test_kept_frames(frames: int, source: float, sample: float, expected: list[int]) -> None:
    assert kept(frames, source, sample) == expected
    assert expected_sample_count(frames, source, sample) == len(expected)


@pytest.mark.parametrize("source", [10.0, 23.976, 25.0, 29.97, 30.0, 60.0])
@pytest.mark.parametrize("sample", [0.5, 1.0, 2.0, 7.0])
def test_count_matches_duration(source: float, sample: float) -> None:
    frames = 600
    count = len(kept(frames, source, sample))
    assert count == expected_sample_count(frames, source, sample)
    assert abs(count - math.ceil(frames / source * sample)) <= 1


def test_dropped_frames_keep_the_next_one_once() -> None:
    sampler = FrameSampler(10, 1)
    offered = [0, 1, 25, 26, 31]
    assert [i for i in offered if sampler.keep(i)] == [0, 25, 31]


@pytest.mark.parametrize(("source", "sample"), [(0, 1), (-5, 1), (float("nan"), 1), (10, 0)])
def test_invalid_rates_are_rejected(source: float, sample: float) -> None:
    with pytest.raises(ValueError):
        FrameSampler(source, sample)
