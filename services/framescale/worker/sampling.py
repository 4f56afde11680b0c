"""Which frames to keep for a requested sample rate.

Sample k is due at time k / sample_fps; the kept frame is the first frame at or after
that time, i.e. index ceil(k * source_fps / sample_fps). Every frame is kept when the
requested rate is at least the source rate.
"""

from __future__ import annotations

import math

# Absorbs float error in k * period (e.g. 29.97 fps) so a frame exactly on time is kept.
_EPSILON = 1e-6


class FrameSampler:
    def __init__(self, source_fps: float, sample_fps: float) -> None:
        if not source_fps > 0 or not math.isfinite(source_fps):
            raise ValueError(f"source frame rate must be positive, got {source_fps}")
        if not sample_fps > 0:
            raise ValueError(f"sample rate must be positive, got {sample_fps}")
        self.every_frame = sample_fps >= source_fps
        self.period = source_fps / sample_fps
        self._next_sample = 0
        self._next_index = 0

    def keep(self, index: int) -> bool:
        """True when frame ``index`` is a sample; frames must be offered in increasing order."""
        if self.every_frame:
            return True
        if index < self._next_index:
            return False
        # Advance past every sample time this frame covers (one frame may satisfy several
        # samples when frames were dropped; it is still kept once).
        while self._due_index(self._next_sample) <= index:
            self._next_sample += 1
        self._next_index = self._due_index(self._next_sample)
        return True

    def _due_index(self, sample: int) -> int:
        return math.ceil(sample * self.period - _EPSILON)


def expected_sample_count(frame_count: int, source_fps: float, sample_fps: float) -> int:
    """How many frames FrameSampler keeps from ``frame_count`` consecutive frames."""
    if frame_count <= 0:
        return 0
    if sample_fps >= source_fps:
        return frame_count
    period = source_fps / sample_fps
    # Samples k = 0.. whose due index is < frame_count.
    return math.floor((frame_count - 1 + _EPSILON) / period) + 1
