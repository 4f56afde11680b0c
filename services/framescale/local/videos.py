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


@dataclass(frozen=True)
class Photograph:
    name: str
    image: np.ndarray  # BGR
    # (top, left, bottom, right) in pixels, exclusive ends: drawn by hand around each person,
    # whole figure as far as it shows (held objects, like the astronaut's helmet, left out).
    people: tuple[tuple[int, int, int, int], ...]


def real_photographs() -> list[Photograph]:
    """Photographs of people that ship inside PyPI wheels: nothing is downloaded."""
    import matplotlib.cbook
    from skimage import data

    sample = Path(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    grace_hopper = cv2.imdecode(np.frombuffer(sample.read_bytes(), dtype=np.uint8), cv2.IMREAD_COLOR)
    if grace_hopper is None:
        raise RuntimeError(f"OpenCV cannot decode {sample}")
    return [
        Photograph("astronaut", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), ((15, 22, 512, 365),)),
        Photograph("grace_hopper", grace_hopper, ((22, 12, 600, 512),)),
        Photograph("cameraman", cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR), ((65, 0, 512, 330),)),
    ]


def photograph_without_people() -> Photograph:
    """A cup of coffee on a table: a real photograph in which a person detector must find no one."""
    from skimage import data

    return Photograph("coffee", cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), ())


@dataclass(frozen=True)
class PhotoVideo:
    path: Path
    width: int
    height: int
    fps: float
    frames_per_photo: int
    photos: list[str]  # in the order shown, each for frames_per_photo frames
    truth: list[list[TruthBox]]  # per frame: where the people are

    def photo_at(self, frame: int) -> str:
        return self.photos[frame // self.frames_per_photo]


def make_photo_video(
    path: Path,
    *,
    width: int = 640,
    height: int = 480,
    fps: float = 10.0,
    seconds_per_photo: float = 2.0,
    with_empty_scene: bool = False,
) -> PhotoVideo:
    """A short video that slowly zooms over each photograph in turn, with the people's boxes per frame.

    ``with_empty_scene`` appends a photograph without people, where no detection is right.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    photographs = real_photographs() + ([photograph_without_people()] if with_empty_scene else [])
    writer = _writer(path, fps, width, height, None)
    frames_each = max(1, round(fps * seconds_per_photo))
    truth: list[list[TruthBox]] = []
    try:
        for photograph in photographs:
            for frame in range(frames_each):
                zoom = 1.0 + 0.12 * frame / frames_each  # a gentle push-in so frames differ
                placement = _Placement.of(photograph.image, width, height, zoom)
                writer.write(placement.render(photograph.image))
                truth.append([TruthBox(1, "person", placement.box(person)) for person in photograph.people])
    finally:
        writer.release()
    return PhotoVideo(path, width, height, fps, frames_each, [photo.name for photo in photographs], truth)


def write_photo_video(
    path: Path, *, width: int = 640, height: int = 480, fps: float = 10.0, seconds_per_photo: float = 2.0
) -> list[str]:
    """``make_photo_video`` for callers that need only the photo names, in order."""
    return make_photo_video(path, width=width, height=height, fps=fps, seconds_per_photo=seconds_per_photo).photos


@dataclass(frozen=True)
class _Placement:
    """A centred crop of ``1/zoom`` of the photograph, scaled to fit the frame, centred on black."""

    width: int
    height: int
    crop_top: int
    crop_left: int
    crop_height: int
    crop_width: int
    top: int  # of the scaled crop in the frame
    left: int
    scaled_height: int
    scaled_width: int

    @classmethod
    def of(cls, photo: np.ndarray, width: int, height: int, zoom: float) -> _Placement:
        h, w = photo.shape[:2]
        crop_h, crop_w = int(h / zoom), int(w / zoom)
        scale = min(width / crop_w, height / crop_h)
        scaled_h, scaled_w = int(crop_h * scale), int(crop_w * scale)
        return cls(
            width,
            height,
            (h - crop_h) // 2,
            (w - crop_w) // 2,
            crop_h,
            crop_w,
            (height - scaled_h) // 2,
            (width - scaled_w) // 2,
            scaled_h,
            scaled_w,
        )

    def render(self, photo: np.ndarray) -> np.ndarray:
        cropped = photo[
            self.crop_top : self.crop_top + self.crop_height, self.crop_left : self.crop_left + self.crop_width
        ]
        resized = cv2.resize(cropped, (self.scaled_width, self.scaled_height), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        canvas[self.top : self.top + self.scaled_height, self.left : self.left + self.scaled_width] = resized
        return canvas

    def box(self, pixels: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        """A box in the photograph's pixels → normalized to the frame (clipped to what the crop shows)."""
        top, left, bottom, right = pixels

        def frame_y(y: int) -> float:
            inside = min(max(y - self.crop_top, 0), self.crop_height)
            return (self.top + inside * self.scaled_height / self.crop_height) / self.height

        def frame_x(x: int) -> float:
            inside = min(max(x - self.crop_left, 0), self.crop_width)
            return (self.left + inside * self.scaled_width / self.crop_width) / self.width

        return (frame_y(top), frame_x(left), frame_y(bottom), frame_x(right))
