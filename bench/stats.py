"""Small statistics used by the benchmarks and the simulator: medians, percentiles, ratios.

The machine is shared and noisy, so every figure is the median of repeated, interleaved
runs, and comparisons are ratios of two figures measured side by side in the same round.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between closest ranks.

    The same definition as numpy's default ("linear"): rank (n - 1) * q / 100 over the
    sorted values. An empty input has no percentile.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    weight = rank - low
    return float(ordered[low] * (1.0 - weight) + ordered[high] * weight)


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float | None]:
    """``{"p50": ..., "p90": ..., "p99": ..., "max": ...}``; all None when there are no values."""
    out: dict[str, float | None] = {}
    for q in qs:
        out[f"p{q:g}"] = round(percentile(values, q), 3) if values else None
    out["max"] = round(float(max(values)), 3) if values else None
    return out


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, digits)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (the run-to-run noise, shown with the median)."""
    return {"median": round(median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}
