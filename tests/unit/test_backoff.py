"""The one doubling backoff (worker retries, the worker's retry delay, the operator's temporary errors)."""

from __future__ import annotations

import pytest

from framescale.backoff import doubled


@pytest.mark.parametrize(
    ("base", "doublings", "cap", "expected"),
    [(1.0, 0, 10.0, 1.0), (1.0, 1, 10.0, 2.0), (1.0, 3, 10.0, 8.0), (1.0, 4, 10.0, 10.0), (0.5, -3, 10.0, 0.5),
     (30, 10_000, 3600, 3600), (2.0, 2, 5.0, 5.0)],
)  # fmt: skip
def test_doubles_from_the_base_up_to_the_cap(base: float, doublings: int, cap: float, expected: float) -> None:
    assert doubled(base, doublings, cap) == expected
