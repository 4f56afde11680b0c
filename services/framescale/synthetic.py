"""The synthetic world: solid-colour objects whose exact positions are known.

Shared by the synthetic video generator (which draws them and records ground truth) and
the synthetic detector (a SavedModel that finds them by colour), so correctness tests
have exact answers to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticClass:
    class_id: int
    label: str
    rgb: tuple[int, int, int]


# Saturated primaries stay recognisable through lossy codecs (mp4v, MJPG, XVID).
CLASSES: tuple[SyntheticClass, ...] = (
    SyntheticClass(1, "red_box", (230, 20, 20)),
    SyntheticClass(2, "green_box", (20, 220, 20)),
    SyntheticClass(3, "blue_box", (20, 20, 230)),
)
LABELS: dict[int, str] = {item.class_id: item.label for item in CLASSES}

# A pixel belongs to a class when every channel is within this distance of its colour.
COLOR_TOLERANCE = 70
# A class is detected when at least this many pixels match (in the model's input frame).
MIN_PIXELS = 12
# Background: mid grey, far from every class colour in at least one channel.
BACKGROUND_RGB = (110, 110, 110)
