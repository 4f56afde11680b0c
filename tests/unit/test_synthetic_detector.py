"""The synthetic detector's exact answers on frames drawn with numpy, and the null detector.

Expected boxes come from the rectangles drawn, never from the detector's own arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from framescale.modelserver.detectors import (
    INPUT_NAME,
    LINE_MIN_PIXELS,
    SIGNATURE_KEY,
    Detector,
    null_detect,
    synthetic_detect,
)
from framescale.synthetic import BACKGROUND_RGB, CLASSES, COLOR_TOLERANCE, MIN_PIXELS

RED, GREEN, BLUE = (item.class_id for item in CLASSES)
COLOUR = {item.class_id: item.rgb for item in CLASSES}

# Rectangles as (row0, col0, row1, col1), end-exclusive, in pixels.
Rect = tuple[int, int, int, int]

# The serving function as exported (a tf.function over the signature), built once.
DETECTOR = Detector(synthetic_detect, name="synthetic")


def draw(height: int, width: int, objects: dict[int, Rect]) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = BACKGROUND_RGB
    for class_id, (row0, col0, row1, col1) in objects.items():
        frame[row0:row1, col0:col1] = COLOUR[class_id]
    return frame


def detect(frames: np.ndarray) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in DETECTOR.serve(tf.constant(frames)).items()}


def found(result: dict[str, np.ndarray], index: int = 0) -> dict[int, np.ndarray]:
    """Class id -> box for the counted detections of one frame."""
    count = int(result["num_detections"][index])
    return {int(result["detection_classes"][index, k]): result["detection_boxes"][index, k] for k in range(count)}


def normalized(rect: Rect, height: int, width: int) -> np.ndarray:
    row0, col0, row1, col1 = rect
    return np.array([row0 / height, col0 / width, row1 / height, col1 / width], dtype=np.float32)


def assert_box(box: np.ndarray, rect: Rect, height: int, width: int) -> None:
    np.testing.assert_allclose(box, normalized(rect, height, width), rtol=0, atol=1e-6)
    # ...and back in pixels, exactly the rectangle drawn.
    pixels = np.rint(box * np.array([height, width, height, width])).astype(int)
    assert tuple(pixels) == rect


def test_exact_boxes_for_every_class() -> None:
    objects = {RED: (10, 20, 40, 70), GREEN: (50, 5, 90, 25), BLUE: (3, 150, 117, 199)}
    result = detect(draw(120, 200, objects)[None])

    assert result["detection_boxes"].shape == (1, len(CLASSES), 4)
    assert result["detection_boxes"].dtype == np.float32
    assert result["detection_classes"].dtype == np.float32
    assert result["num_detections"].tolist() == [3.0]
    assert result["detection_scores"].tolist() == [[1.0, 1.0, 1.0]]
    boxes = found(result)
    assert sorted(boxes) == [RED, GREEN, BLUE]
    for class_id, rect in objects.items():
        assert_box(boxes[class_id], rect, 120, 200)


def test_absent_classes_are_scored_zero_and_sorted_last() -> None:
    result = detect(draw(64, 64, {BLUE: (0, 0, 8, 8)})[None])

    assert result["num_detections"].tolist() == [1.0]
    assert result["detection_classes"][0].tolist() == [BLUE, RED, GREEN]
    assert result["detection_scores"][0].tolist() == [1.0, 0.0, 0.0]
    assert_box(result["detection_boxes"][0, 0], (0, 0, 8, 8), 64, 64)
    assert not result["detection_boxes"][0, 1:].any()


def test_empty_frame_has_no_detections() -> None:
    result = detect(draw(30, 40, {})[None])
    assert result["num_detections"].tolist() == [0.0]
    assert not result["detection_scores"].any()


def test_batches_answer_each_frame_separately() -> None:
    height, width = 48, 96
    layouts: list[dict[int, Rect]] = [
        {RED: (0, 0, 10, 10)},
        {},
        {GREEN: (20, 30, 48, 96), RED: (1, 50, 5, 60)},
        {BLUE: (10, 10, 30, 12)},
    ]
    result = detect(np.stack([draw(height, width, objects) for objects in layouts]))

    assert result["detection_boxes"].shape == (4, len(CLASSES), 4)
    assert result["num_detections"].tolist() == [float(len(objects)) for objects in layouts]
    for index, objects in enumerate(layouts):
        boxes = found(result, index)
        assert sorted(boxes) == sorted(objects)
        for class_id, rect in objects.items():
            assert_box(boxes[class_id], rect, height, width)


@pytest.mark.parametrize(("height", "width"), [(7, 301), (257, 3), (1080, 1920)])
def test_any_frame_size(height: int, width: int) -> None:
    rect = (height // 4, width // 4, height // 4 + max(height // 2, 3), width // 4 + max(width // 2, 3))
    rect = (rect[0], rect[1], min(rect[2], height), min(rect[3], width))
    result = detect(draw(height, width, {GREEN: rect})[None])
    assert_box(found(result)[GREEN], rect, height, width)


def test_object_filling_the_frame() -> None:
    result = detect(draw(5, 9, {RED: (0, 0, 5, 9)})[None])
    np.testing.assert_array_equal(found(result)[RED], [0.0, 0.0, 1.0, 1.0])


def test_empty_batch() -> None:
    result = detect(np.zeros((0, 16, 16, 3), np.uint8))
    assert result["detection_boxes"].shape == (0, len(CLASSES), 4)
    assert result["num_detections"].shape == (0,)


def test_colour_tolerance_is_per_channel_and_inclusive() -> None:
    red = np.array(COLOUR[RED])
    inside = draw(20, 20, {})
    inside[2:8, 2:8] = np.clip(red + np.array([COLOR_TOLERANCE, -COLOR_TOLERANCE, COLOR_TOLERANCE]), 0, 255)
    outside = draw(20, 20, {})
    outside[2:8, 2:8] = np.clip(red + np.array([0, COLOR_TOLERANCE + 1, 0]), 0, 255)

    result = detect(np.stack([inside, outside]))
    assert_box(found(result, 0)[RED], (2, 2, 8, 8), 20, 20)
    assert RED not in found(result, 1)


def test_min_pixels_decides_presence() -> None:
    assert MIN_PIXELS == 12, "the shapes below are chosen around 12 pixels"
    just_enough = draw(30, 30, {BLUE: (5, 5, 8, 9)})  # 3 x 4 = 12 pixels
    too_few = draw(30, 30, {BLUE: (5, 5, 7, 10)})  # 2 x 5 = 10 pixels
    result = detect(np.stack([just_enough, too_few]))
    assert_box(found(result, 0)[BLUE], (5, 5, 8, 9), 30, 30)
    assert found(result, 1) == {}


def test_stray_pixels_do_not_stretch_the_box() -> None:
    # Codec ringing: isolated pixels of the object's colour near and far from it.
    frame = draw(100, 100, {RED: (40, 40, 60, 70)})
    for row, col in [(39, 50), (60, 45), (50, 39), (45, 70), (2, 3), (97, 95), (10, 80)]:
        frame[row, col] = COLOUR[RED]
    result = detect(frame[None])
    assert_box(found(result)[RED], (40, 40, 60, 70), 100, 100)


def test_lines_thinner_than_the_line_rule_are_ignored() -> None:
    assert LINE_MIN_PIXELS == 2
    one_pixel_wide = draw(50, 50, {GREEN: (5, 10, 45, 11)})  # 40 pixels, but every row holds one
    two_pixels_wide = draw(50, 50, {GREEN: (5, 10, 45, 12)})
    result = detect(np.stack([one_pixel_wide, two_pixels_wide]))
    assert found(result, 0) == {}
    assert_box(found(result, 1)[GREEN], (5, 10, 45, 12), 50, 50)


def test_exported_model_gives_the_same_answers(models_dir: Path) -> None:
    loaded = tf.saved_model.load(str(models_dir / "synthetic" / "1"))
    serve = loaded.signatures[SIGNATURE_KEY]
    frames = np.stack(
        [draw(72, 128, {RED: (1, 2, 30, 40), BLUE: (40, 60, 70, 127)}), draw(72, 128, {GREEN: (0, 0, 72, 5)})]
    )
    exported = {name: value.numpy() for name, value in serve(**{INPUT_NAME: tf.constant(frames)}).items()}
    direct = detect(frames)
    assert sorted(exported) == sorted(direct)
    for name in direct:
        np.testing.assert_array_equal(exported[name], direct[name], err_msg=name)


def test_null_detector_answers_zero_detections_from_the_shape_alone() -> None:
    null = Detector(null_detect, name="null")
    result = {name: value.numpy() for name, value in null.serve(tf.zeros([3, 17, 5, 3], tf.uint8)).items()}
    assert result["detection_boxes"].shape == (3, 1, 4)
    assert result["detection_scores"].shape == (3, 1)
    assert result["detection_classes"].shape == (3, 1)
    assert result["num_detections"].tolist() == [0.0, 0.0, 0.0]
    assert all(value.dtype == np.float32 and not value.any() for value in result.values())
    # The graph reads only the input's shape, never its values.
    graph = null.serve.get_concrete_function().graph
    consumers = {op.type for op in graph.get_operations() for tensor in op.inputs if tensor.name.startswith(INPUT_NAME)}
    assert consumers == {"Shape"}
