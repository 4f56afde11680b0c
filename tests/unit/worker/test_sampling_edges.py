"""The sampler's edges: slow sources, one frame, none, and its refusals (by presentation time)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from framescale.worker.sampling import FrameSampler, exact_rate, expected_sample_count


def kept(frames: int, source: float, sample: float) -> list[int]:
    time_base = 1 / exact_rate(source)  # frame i at tick i
    sampler = FrameSampler(sample, time_base)
    return [i for i in range(frames) if sampler.keep(i)]


def test_a_source_slower_than_one_frame_a_second() -> None:
    assert kept(10, 0.5, 0.1) == [0, 5]  # a frame every 2 s, a sample every 10 s
    assert kept(4, 0.5, 1.0) == [0, 1, 2, 3]


def test_one_frame_and_no_frames() -> None:
    assert expected_sample_count(1, 10, 1) == 1 == len(kept(1, 10, 1))
    assert expected_sample_count(0, 10, 1) == 0
    assert expected_sample_count(-3, 10, 1) == 0


def test_many_samples_in_a_row_stay_on_time() -> None:
    assert kept(1000, 30, 3) == list(range(0, 1000, 10))
    assert len(kept(1000, 30, 3)) == expected_sample_count(1000, 30, 3)


@pytest.mark.parametrize(
    ("sample", "time_base", "says"),
    [
        (0.0, Fraction(1, 30), "sample rate must be a positive number, got 0.0"),
        (float("inf"), Fraction(1, 30), "sample rate must be a positive number, got inf"),
        (1.0, Fraction(0), "time base must be positive, got 0"),
    ],
)
def test_rates_that_cannot_sample_are_refused(sample: float, time_base: Fraction, says: str) -> None:
    with pytest.raises(ValueError, match=f"^{says}$"):
        FrameSampler(sample, time_base)
