"""Fitting frames to the model input, and mapping boxes back to the original frame.

Boxes leave the model normalized to its input; results promise boxes normalized to the
original frame. With ``stretch`` the two coincide; with ``letterbox`` the padding and the
uniform scale are undone.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

# swscale's area averaging, as the decoder's own resize uses (cv2.INTER_AREA's counterpart).
_INTERPOLATION = "AREA"


@dataclass(frozen=True)
class Fit:
    """How one frame was placed in the model input (all sizes in pixels)."""

    input_height: int
    input_width: int
    content_top: int = 0
    content_left: int = 0
    content_height: int = 0
    content_width: int = 0

    def to_original(self, box: np.ndarray) -> np.ndarray:
        """``[..., 4]`` (ymin, xmin, ymax, xmax) normalized to the input → normalized to the original."""
        if self.content_height == 0:  # stretch: same normalized coordinates
            return np.clip(box, 0.0, 1.0)
        ys = (box[..., [0, 2]] * self.input_height - self.content_top) / self.content_height
        xs = (box[..., [1, 3]] * self.input_width - self.content_left) / self.content_width
        out = np.stack([ys[..., 0], xs[..., 0], ys[..., 1], xs[..., 1]], axis=-1)
        return np.clip(out, 0.0, 1.0)


def plan_fit(frame_height: int, frame_width: int, input_height: int, input_width: int, mode: str) -> Fit:
    if mode == "stretch":
        return Fit(input_height, input_width)
    if mode != "letterbox":
        raise ValueError(f"unknown resize mode {mode!r}")
    scale = min(input_height / frame_height, input_width / frame_width)
    height = max(1, round(frame_height * scale))
    width = max(1, round(frame_width * scale))
    return Fit(
        input_height,
        input_width,
        content_top=(input_height - height) // 2,
        content_left=(input_width - width) // 2,
        content_height=height,
        content_width=width,
    )


def _resized_rgb(frame_bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """``frame_bgr`` scaled to ``width`` x ``height`` and converted to RGB in one swscale pass.

    PyAV rather than OpenCV: the worker decodes with PyAV already, and OpenCV would add ~150 MB
    to the worker image for this one resize.
    """
    picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_bgr), format="bgr24")
    return picture.reformat(width, height, "rgb24", interpolation=_INTERPOLATION).to_ndarray()


def fit_frame(frame_bgr: np.ndarray, fit: Fit, out: np.ndarray) -> None:
    """Write ``frame_bgr`` resized (and converted to RGB) into ``out`` (input_h, input_w, 3) uint8."""
    if fit.content_height == 0:
        out[...] = _resized_rgb(frame_bgr, fit.input_width, fit.input_height)
        return
    out[...] = 0
    out[
        fit.content_top : fit.content_top + fit.content_height,
        fit.content_left : fit.content_left + fit.content_width,
    ] = _resized_rgb(frame_bgr, fit.content_width, fit.content_height)
