"""Frame sampling by presentation time: sample k at rate r is the first frame at or after k / r."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from framescale.worker.sampling import FrameSampler, SampleClock, Sampling, exact_rate, expected_sample_count


def kept_cfr(frames: int, source: float, sample: float) -> list[int]:
    """Frames at i / source seconds, in a time base of 1/(source's exact rate)."""
    rate = exact_rate(source)
    time_base = 1 / rate
    sampler = FrameSampler(sample, time_base)
    return [i for i in range(frames) if sampler.keep(i)]


def kept_at(times: list[Fraction], sample: float, time_base: Fraction) -> list[int]:
    sampler = FrameSampler(sample, time_base)
    return [i for i, t in enumerate(times) if sampler.keep(int(t / time_base))]


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
def test_kept_frames_at_a_constant_rate(frames: int, source: float, sample: float, expected: list[int]) -> None:
    assert kept_cfr(frames, source, sample) == expected
    assert expected_sample_count(frames, source, sample) == len(expected)


@pytest.mark.parametrize("source", [10.0, 23.976, 25.0, 29.97, 30.0, 60.0])
@pytest.mark.parametrize("sample", [0.5, 1.0, 2.0, 7.0])
def test_count_matches_duration(source: float, sample: float) -> None:
    frames = 600
    count = len(kept_cfr(frames, source, sample))
    assert count == expected_sample_count(frames, source, sample)
    assert abs(count - math.ceil(frames / source * sample)) <= 1


def test_variable_frame_rate_is_sampled_by_time_not_by_index() -> None:
    # 2 s at 30 fps, then 10 fps: an index rule (every 30th frame) would take frames 0, 30, 60, 90
    # (0, 1, 2 and 5 s); by time they are 0, 30, 60 and 70 (0, 1, 2, 3 s).
    times = [Fraction(i, 30) for i in range(60)] + [2 + Fraction(i, 10) for i in range(40)]
    assert kept_at(times, 1.0, Fraction(1, 90000)) == [0, 30, 60, 70, 80, 90]


def test_a_time_lapse_keeps_every_frame_once() -> None:
    # One frame every 20 s sampled at 1 fps: each frame covers twenty due times and is kept once.
    times = [Fraction(20 * i) for i in range(5)]
    assert kept_at(times, 1.0, Fraction(1, 1000)) == [0, 1, 2, 3, 4]
    assert kept_at(times, 1 / 50, Fraction(1, 1000)) == [0, 3]  # due at 0 and 50 s (100 s is past the end)


def test_a_frame_exactly_on_time_is_kept_whatever_the_time_base() -> None:
    # 29.97 fps in its own time base: frame 1001 * k ticks is at exactly k * 1.001 s.
    clock = SampleClock(1 / 1.001, Fraction(1, 30000))
    assert [clock.slot(1001 * 30 * k) for k in range(4)] == [0, 1, 2, 3]
    assert clock.slot(1001 * 30 - 1) == 0


def test_frames_before_the_first_are_never_samples() -> None:
    sampler = FrameSampler(1.0, Fraction(1, 1000))
    assert [sampler.keep(t) for t in (-40, 0, 500, 1000)] == [False, True, False, True]


def test_rates_are_exact_fractions() -> None:
    assert exact_rate(0.2) == Fraction(1, 5)
    assert exact_rate(1 / 3) == Fraction(1, 3)
    assert exact_rate(29.97) == Fraction(2997, 100)


@pytest.mark.parametrize("sample", [0, -1, float("nan"), float("inf")])
def test_invalid_rates_are_rejected(sample: float) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        FrameSampler(sample, Fraction(1, 1000))


def test_sampling_modes() -> None:
    assert Sampling("fps", 2.0).as_json() == {"sample_mode": "fps", "sample_fps": 2.0}
    assert Sampling("keyframes", None).as_json() == {"sample_mode": "keyframes", "sample_fps": None}
    assert Sampling("keyframes", None).keyframes and not Sampling().keyframes
    with pytest.raises(ValueError, match="unknown sample mode"):
        Sampling("every-other")
