"""Percentiles and ratios as the benchmark reports them."""

from __future__ import annotations

import numpy as np
import pytest

from bench import stats


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([10.0, 0.0, 20.0], 90, 18.0),  # unsorted input; rank 1.8 between 10 and 20
    ],
)
def test_percentile_interpolates_between_closest_ranks(values: list[float], q: float, expected: float) -> None:
    assert stats.percentile(values, q) == pytest.approx(expected)


def test_percentile_agrees_with_numpy_default() -> None:
    values = np.random.default_rng(0).lognormal(3.0, 1.0, size=257).tolist()
    for q in (1, 25, 50, 90, 99, 99.9):
        assert stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_empty_input_and_bad_q() -> None:
    with pytest.raises(ValueError, match="no values"):
        stats.percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        stats.percentile([1.0], 101)


def test_percentiles_of_nothing_are_none() -> None:
    assert stats.percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}


def test_ratio_is_none_without_a_denominator() -> None:
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(3.0, 0.0) is None
    assert stats.ratio(None, 2.0) is None


def test_spread_reports_median_and_range() -> None:
    assert stats.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
