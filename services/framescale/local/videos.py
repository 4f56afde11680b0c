"""Sample videos: synthetic ones with exact ground truth, and one made from real photographs.

Synthetic videos draw one solid-colour box per class (framescale.synthetic) moving
across its own horizontal band, so boxes never overlap and the synthetic detector's exact
answer is known for every frame.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from framescale import synthetic

FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


@dataclass(frozen=True)
class TruthBox:
    class_id: int
    label: str
    box: tuple[float, float, float, float]  # ymin, xmin, ymax, xmax, normalized


@dataclass(frozen=True)
class SyntheticVideo:
    path: Path
    width: int
    height: int
    fps: float
    frame_count: int
    truth: list[list[TruthBox]]  # per frame

    def save_truth(self, path: Path) -> None:
        frames = [[asdict(box) for box in frame] for frame in self.truth]
        path.write_text(json.dumps({"fps": self.fps, "frames": frames}))


def _writer(path: Path, fps: float, width: int, height: int, codec: str | None) -> cv2.VideoWriter:
    fourcc = codec or FOURCC.get(path.suffix.lower())
    if fourcc is None:
        raise ValueError(f"no codec known for {path.suffix}; pass codec= (mp4v, MJPG, XVID)")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} into {path}")
    return writer


def synthetic_box_positions(
    frame: int, frame_count: int, width: int, height: int, seed: int
) -> list[tuple[synthetic.SyntheticClass, int, int, int, int]]:
    """Pixel boxes (class, top, left, bottom, right; exclusive ends) of every object in ``frame``."""
    rng = np.random.default_rng(seed)
    classes = synthetic.CLASSES
    band = height // len(classes)
    boxes = []
    for number, item in enumerate(classes):
        box_h = int(band * rng.uniform(0.45, 0.7))
        box_w = int(width * rng.uniform(0.12, 0.22))
        top = number * band + int(rng.uniform(0.1, 0.9) * (band - box_h))
        travel = width - box_w
        start = rng.uniform(0, 1)
        speed = rng.uniform(0.3, 1.2) * (1 if rng.uniform() > 0.5 else -1)
        # Position bounces between the frame's edges (a triangle wave over time).
        phase = (start + speed * frame / max(1, frame_count)) % 2.0
        position = phase if phase <= 1.0 else 2.0 - phase
        left = round(position * travel)
        boxes.append((item, top, left, top + box_h, left + box_w))
    return boxes


def write_synthetic_video(
    path: Path,
    *,
    width: int = 320,
    height: int = 240,
    fps: float = 10.0,
    frame_count: int = 50,
    seed: int = 0,
    codec: str | None = None,
) -> SyntheticVideo:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = _writer(path, fps, width, height, codec)
    noise = np.random.default_rng(seed + 1)
    background = np.empty((height, width, 3), dtype=np.uint8)
    background[...] = synthetic.BACKGROUND_RGB[::-1]  # BGR
    truth: list[list[TruthBox]] = []
    try:
        for frame in range(frame_count):
            # A little noise keeps the codec honest without reaching any class colour.
            image = background.copy()
            image += noise.integers(0, 12, size=image.shape, dtype=np.uint8)
            boxes = []
            for item, top, left, bottom, right in synthetic_box_positions(frame, frame_count, width, height, seed):
                image[top:bottom, left:right] = item.rgb[::-1]
                boxes.append(
                    TruthBox(item.class_id, item.label, (top / height, left / width, bottom / height, right / width))
                )
            writer.write(image)
            truth.append(boxes)
    finally:
        writer.release()
    return SyntheticVideo(path, width, height, fps, frame_count, truth)


def real_photographs() -> list[tuple[str, np.ndarray]]:
    """Photographs of people that ship inside PyPI wheels (BGR): nothing is downloaded."""
    import matplotlib.cbook
    from skimage import data

    photos = [("astronaut", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))]
    sample = Path(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    buffer = np.frombuffer(sample.read_bytes(), dtype=np.uint8)
    photos.append(("grace_hopper", cv2.imdecode(buffer, cv2.IMREAD_COLOR)))
    photos.append(("cameraman", cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)))
    return photos


def write_photo_video(
    path: Path, *, width: int = 640, height: int = 480, fps: float = 10.0, seconds_per_photo: float = 2.0
) -> list[str]:
    """A short video that slowly zooms over each photograph in turn; returns the photo names in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = _writer(path, fps, width, height, None)
    names = []
    frames_each = max(1, round(fps * seconds_per_photo))
    try:
        for name, photo in real_photographs():
            names.append(name)
            for frame in range(frames_each):
                zoom = 1.0 + 0.12 * frame / frames_each  # a gentle push-in so frames differ
                writer.write(_letterbox(photo, width, height, zoom))
    finally:
        writer.release()
    return names


def _letterbox(photo: np.ndarray, width: int, height: int, zoom: float) -> np.ndarray:
    h, w = photo.shape[:2]
    crop_h, crop_w = int(h / zoom), int(w / zoom)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    cropped = photo[top : top + crop_h, left : left + crop_w]
    scale = min(width / crop_w, height / crop_h)
    resized = cv2.resize(cropped, (int(crop_w * scale), int(crop_h * scale)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    y, x = (height - resized.shape[0]) // 2, (width - resized.shape[1]) // 2
    canvas[y : y + resized.shape[0], x : x + resized.shape[1]] = resized
    return canvas
