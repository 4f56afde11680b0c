"""Which frames to keep for a requested sample rate, by the frames' own presentation times.

Sample k at rate r is due at k / r seconds after the first video frame; the kept frame is
the first frame whose time is at or after that. Put another way, a frame is kept when some
k / r lies in (previous frame's time, this frame's time]: the integer slot floor(t * r)
moved forward since the frame before it. The same rule serves constant and variable frame
rates alike, and a frame that covers several due times (a gap, a time-lapse) is kept once.

Times are exact: integer ticks of the stream's time base times a rational rate, so 29.97 fps
(1001/30000 s per frame) never misses a frame that is exactly on time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

# A requested rate becomes a fraction with a bounded denominator: 0.2 stays 1/5 instead of the
# binary fraction nearest to 0.2, and a third of a frame per second (from JSON 0.3333333333)
# becomes 1/3.
_RATE_DENOMINATOR = 1_000_000


def exact_rate(sample_fps: float) -> Fraction:
    if not sample_fps > 0 or not math.isfinite(sample_fps):
        raise ValueError(f"sample rate must be a positive number, got {sample_fps}")
    return Fraction(sample_fps).limit_denominator(_RATE_DENOMINATOR)


class SampleClock:
    """The slot of a time: ``floor(ticks * time_base * rate)``, in integer arithmetic."""

    def __init__(self, sample_fps: float, time_base: Fraction) -> None:
        if time_base <= 0:
            raise ValueError(f"time base must be positive, got {time_base}")
        rate = exact_rate(sample_fps)
        scale = time_base * rate
        self._numerator, self._denominator = scale.numerator, scale.denominator

    def slot(self, ticks: int) -> int:
        """Ticks since the first frame → the number of the last sample due at or before then."""
        return (ticks * self._numerator) // self._denominator


class FrameSampler:
    """Decides, for frames offered in presentation order, which ones are samples."""

    def __init__(self, sample_fps: float, time_base: Fraction) -> None:
        self.clock = SampleClock(sample_fps, time_base)
        self._last_slot: int | None = None

    def keep(self, ticks: int) -> bool:
        """True when the frame ``ticks`` after the first one is a sample (frames in increasing time)."""
        slot = self.clock.slot(ticks)
        if ticks < 0 or (self._last_slot is not None and slot <= self._last_slot):
            return False
        self._last_slot = slot
        return True


def expected_sample_count(frame_count: int, source_fps: float, sample_fps: float) -> int:
    """How many frames the rule keeps from ``frame_count`` frames at a constant ``source_fps``.

    Frame i is at i / source_fps; the kept frames are those whose slot floor(i * r / fps)
    differs from the previous frame's: every frame when r >= fps, else one per slot.
    """
    if frame_count <= 0:
        return 0
    step = exact_rate(sample_fps) / exact_rate(source_fps)  # slots per frame
    if step >= 1:
        return frame_count
    return math.floor((frame_count - 1) * step) + 1


SAMPLE_MODES = ("fps", "keyframes")


@dataclass(frozen=True)
class Sampling:
    """What a job samples: ``fps`` (``sample_fps`` frames a second, by the rule above) or ``keyframes``.

    ``keyframes`` keeps one frame per keyframe, the cheapest scan of a long archive: only
    keyframes are decoded, and each decodes on its own.
    """

    mode: str = "fps"
    sample_fps: float | None = 1.0

    def __post_init__(self) -> None:
        if self.mode not in SAMPLE_MODES:
            raise ValueError(f"unknown sample mode {self.mode!r}; one of {', '.join(SAMPLE_MODES)}")
        if self.mode == "fps":
            exact_rate(self.sample_fps or 0.0)

    @property
    def keyframes(self) -> bool:
        return self.mode == "keyframes"

    def as_json(self) -> dict[str, object]:
        return {"sample_mode": self.mode, "sample_fps": self.sample_fps if self.mode == "fps" else None}
