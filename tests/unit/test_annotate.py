"""Pictures of detections: boxes where the detections are, captions readable and inside the frame."""

from __future__ import annotations

import numpy as np

from framescale.local.annotate import draw

PERSON = {"label": "person", "class_id": 1, "score": 0.97}


def test_the_box_is_drawn_where_the_detection_is() -> None:
    frame = np.zeros((240, 320, 3), dtype=np.uint8)
    out = draw(frame, [{**PERSON, "box": [0.5, 0.25, 0.75, 0.5]}])
    assert out[150, 80].any(), "left edge of the box (x = 0.25 * 320)"
    assert not out[150, 120].any(), "inside the box stays untouched"
    assert not frame.any(), "the input frame is not changed"


def test_a_caption_at_the_right_edge_stays_inside_the_frame() -> None:
    frame = np.zeros((240, 320, 3), dtype=np.uint8)
    out = draw(frame, [{**PERSON, "box": [0.4, 0.9, 0.6, 1.0]}])  # the box starts at x = 288
    caption_row = out[int(0.4 * 240) - 4]
    filled = np.flatnonzero(caption_row.any(axis=1))
    assert filled.min() < 288, "the caption was moved left to fit"
    assert filled.max() <= 319


def test_captions_grow_with_the_frame() -> None:
    def caption_height(width: int) -> int:
        frame = np.zeros((width * 3 // 4, width, 3), dtype=np.uint8)
        out = draw(frame, [{**PERSON, "box": [0.5, 0.1, 0.9, 0.5]}])
        column = out[:, int(0.1 * width) + 6]  # through the caption, clear of the box's side
        rows = np.flatnonzero(column[: int(0.5 * width * 3 / 4)].any(axis=1))
        return int(rows.max() - rows.min())

    small, large = caption_height(320), caption_height(1280)
    assert large > 2.5 * small, "a 720p frame's caption would be unreadable once scaled down"
