"""Fitting frames to the model input and mapping boxes back."""

from __future__ import annotations

import numpy as np
import pytest

from framescale.worker.geometry import fit_frame, plan_fit


def test_stretch_keeps_normalized_boxes() -> None:
    fit = plan_fit(480, 640, 300, 300, "stretch")
    box = np.array([[0.1, 0.2, 0.5, 0.9]])
    assert np.allclose(fit.to_original(box), box)


def test_letterbox_maps_boxes_back_to_the_original_frame() -> None:
    # 200x400 (h x w) into 300x300: scale 0.75, content 150x300, 75 px bars top and bottom.
    fit = plan_fit(200, 400, 300, 300, "letterbox")
    assert (fit.content_top, fit.content_left, fit.content_height, fit.content_width) == (75, 0, 150, 300)
    # The whole content area in input coordinates is the whole original frame.
    whole = np.array([[75 / 300, 0.0, 225 / 300, 1.0]])
    assert np.allclose(fit.to_original(whole), [[0, 0, 1, 1]])
    # A box over the original's middle quarter.
    original = np.array([0.25, 0.25, 0.75, 0.75])
    in_input = np.array([[(75 + 0.25 * 150) / 300, 0.25, (75 + 0.75 * 150) / 300, 0.75]])
    assert np.allclose(fit.to_original(in_input), [original])


def test_boxes_in_the_bars_are_clipped_into_the_frame() -> None:
    fit = plan_fit(200, 400, 300, 300, "letterbox")
    assert np.all(fit.to_original(np.array([[0.0, 0.0, 0.1, 0.1]])) >= 0)


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_fit_frame_converts_to_rgb_and_fills_the_input(mode: str) -> None:
    frame = np.zeros((100, 200, 3), dtype=np.uint8)
    frame[...] = (255, 0, 0)  # pure blue in BGR
    fit = plan_fit(100, 200, 64, 64, mode)
    out = np.full((64, 64, 3), 7, dtype=np.uint8)
    fit_frame(frame, fit, out)
    if mode == "stretch":
        assert np.all(out[..., 2] == 255) and np.all(out[..., 0] == 0)
    else:
        middle = out[32, 32]
        assert tuple(middle) == (0, 0, 255)
        assert tuple(out[0, 0]) == (0, 0, 0)  # padding, not left-over data


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="resize mode"):
        plan_fit(10, 10, 10, 10, "crop")
