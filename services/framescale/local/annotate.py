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
    # Lines and captions grow with the frame, so that every frame looks alike once the contact
    # sheet scales them all to one width (a fixed size is unreadable on a 720p frame there).
    thickness = max(2, round(width / 200))
    font_scale = max(0.4, width / 800)
    font_thickness = max(1, round(width / 640))
    for detection in detections:
        ymin, xmin, ymax, xmax = detection["box"]
        colour = _COLOURS[int(detection["class_id"]) % len(_COLOURS)]
        top_left = (round(xmin * width), round(ymin * height))
        bottom_right = (round(xmax * width), round(ymax * height))
        cv2.rectangle(out, top_left, bottom_right, colour, thickness)
        caption = f"{detection['label']} {detection['score']:.2f}"
        (text_w, text_h), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thickness)
        pad = max(2, text_h // 4)
        # Above the box, kept inside the frame.
        x = max(0, min(top_left[0], width - text_w - 2 * pad))
        y = max(text_h + 2 * pad, top_left[1])
        cv2.rectangle(out, (x, y - text_h - 2 * pad), (x + text_w + 2 * pad, y), colour, -1)
        cv2.putText(
            out,
            caption,
            (x + pad, y - pad),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            font_thickness,
            cv2.LINE_AA,
        )
    return out


def annotate_best_frames(
    video: Path, lines: list[dict[str, Any]], out_dir: Path, stem: str, count: int = 3
) -> list[Path]:
    """Draw ``count`` frames spread over the video, among those with detections; returns the JPEG paths."""
    with_detections = [line for line in lines if line["detections"]] or lines
    if len(with_detections) <= count:
        chosen = with_detections
    else:  # first, last and evenly between: the whole video, not its first seconds
        step = (len(with_detections) - 1) / (count - 1) if count > 1 else 0
        chosen = [with_detections[round(i * step)] for i in range(count)]
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for line in chosen:
        frame = read_frame(video, int(line["frame"]))
        if frame is None:
            continue
        path = out_dir / f"{stem}-frame{int(line['frame']):05d}.jpg"
        cv2.imwrite(str(path), draw(frame, line["detections"]), [cv2.IMWRITE_JPEG_QUALITY, 88])
        written.append(path)
    return written


def contact_sheet(paths: list[Path], out: Path, *, columns: int = 3, cell_width: int = 400) -> Path | None:
    """One JPEG with every annotated frame in a grid, so a glance shows what the run found."""
    images = [image for image in (cv2.imread(str(path)) for path in paths) if image is not None]
    if not images:
        return None
    cell_height = round(cell_width * 3 / 4)
    cells = []
    for image in images:
        scale = min(cell_width / image.shape[1], cell_height / image.shape[0])
        resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
        cell = np.zeros((cell_height, cell_width, 3), dtype=np.uint8)
        y, x = (cell_height - resized.shape[0]) // 2, (cell_width - resized.shape[1]) // 2
        cell[y : y + resized.shape[0], x : x + resized.shape[1]] = resized
        cells.append(cell)
    while len(cells) % columns:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.hstack(cells[i : i + columns]) for i in range(0, len(cells), columns)]
    cv2.imwrite(str(out), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return out
