"""Pictures of detections: sampled frames with their boxes drawn, as JPEG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

_COLOURS = [(0, 200, 255), (60, 220, 60), (255, 120, 40), (200, 60, 255), (40, 40, 230)]


def read_frame(video: Path, index: int) -> np.ndarray | None:
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    try:
        frame = None
        for _ in range(index + 1):  # decode forward: seeking is not frame-exact for every codec
            ok, frame = capture.read()
            if not ok:
                return None
        return frame
    finally:
        capture.release()


def draw(frame: np.ndarray, detections: list[dict[str, Any]]) -> np.ndarray:
    out = frame.copy()
    height, width = out.shape[:2]
    thickness = max(2, round(min(height, width) / 240))
    for detection in detections:
        ymin, xmin, ymax, xmax = detection["box"]
        colour = _COLOURS[int(detection["class_id"]) % len(_COLOURS)]
        top_left = (round(xmin * width), round(ymin * height))
        bottom_right = (round(xmax * width), round(ymax * height))
        cv2.rectangle(out, top_left, bottom_right, colour, thickness)
        caption = f"{detection['label']} {detection['score']:.2f}"
        (text_w, text_h), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        y = max(text_h + 4, top_left[1])
        cv2.rectangle(out, (top_left[0], y - text_h - 4), (top_left[0] + text_w + 4, y), colour, -1)
        cv2.putText(out, caption, (top_left[0] + 2, y - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def annotate_best_frames(
    video: Path, lines: list[dict[str, Any]], out_dir: Path, stem: str, count: int = 3
) -> list[Path]:
    """Draw the ``count`` sampled frames with the most detections; returns the JPEG paths."""
    ranked = sorted(lines, key=lambda line: (-len(line["detections"]), line["frame"]))[:count]
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for line in sorted(ranked, key=lambda line: line["frame"]):
        frame = read_frame(video, int(line["frame"]))
        if frame is None:
            continue
        path = out_dir / f"{stem}-frame{int(line['frame']):05d}.jpg"
        cv2.imwrite(str(path), draw(frame, line["detections"]), [cv2.IMWRITE_JPEG_QUALITY, 88])
        written.append(path)
    return written
