"""Exponential backoff, written once: a delay that doubles with each failure, up to a cap."""

from __future__ import annotations

# 2**60 times any base is past every cap; stop there so a huge count cannot overflow a float.
_MAX_DOUBLINGS = 60


def doubled(base: float, doublings: int, cap: float) -> float:
    """``base`` doubled ``doublings`` times (none below zero), never above ``cap``."""
    return min(cap, base * 2 ** min(max(doublings, 0), _MAX_DOUBLINGS))
