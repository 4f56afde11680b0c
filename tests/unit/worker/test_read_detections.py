"""Turning a PredictResponse into per-frame detections."""

from __future__ import annotations

import numpy as np
import pytest

from framescale.tfserving import pb, to_tensor_proto
from framescale.worker.errors import PermanentJobError
from framescale.worker.geometry import plan_fit
from framescale.worker.inference import answered_version, read_detections


def response(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, num: np.ndarray | None) -> pb.PredictResponse:
    out = pb.PredictResponse()
    to_tensor_proto(boxes.astype(np.float32), out=out.outputs["detection_boxes"])
    to_tensor_proto(scores.astype(np.float32), out=out.outputs["detection_scores"])
    to_tensor_proto(classes.astype(np.float32), out=out.outputs["detection_classes"])
    if num is not None:
        to_tensor_proto(num.astype(np.float32), out=out.outputs["num_detections"])
    return out


def test_threshold_order_labels_and_num_detections() -> None:
    boxes = np.array(
        [
            [[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.6, 0.6], [0.0, 0.0, 1.0, 1.0]],
            [[0.5, 0.5, 0.9, 0.9], [0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3]],
        ]
    )
    scores = np.array([[0.4, 0.9, 0.95], [0.8, 0.1, 0.99]])
    classes = np.array([[1, 1, 2], [3, 1, 1]])
    num = np.array([2, 3])  # frame 0: the third slot is padding and must be ignored
    fit = plan_fit(10, 10, 10, 10, "stretch")
    frames = read_detections(
        response(boxes, scores, classes, num), [fit, fit], {1: "person"}, score_threshold=0.3, max_detections=10
    )
    assert [(d.label, round(d.score, 2)) for d in frames[0]] == [("person", 0.9), ("person", 0.4)]
    assert [(d.label, d.class_id) for d in frames[1]] == [("person", 1), ("class_3", 3)]
    assert frames[0][0].box == pytest.approx((0.3, 0.3, 0.6, 0.6))


def test_max_detections_keeps_the_best() -> None:
    boxes = np.zeros((1, 4, 4))
    scores = np.array([[0.5, 0.9, 0.7, 0.6]])
    fit = plan_fit(10, 10, 10, 10, "stretch")
    (frame,) = read_detections(
        response(boxes, scores, np.ones((1, 4)), None), [fit], {}, score_threshold=0.0, max_detections=2
    )
    assert [round(d.score, 1) for d in frame] == [0.9, 0.7]


def test_missing_outputs_or_wrong_batch_are_permanent_errors() -> None:
    fit = plan_fit(10, 10, 10, 10, "stretch")
    bare = pb.PredictResponse()
    with pytest.raises(PermanentJobError, match="lacks"):
        read_detections(bare, [fit], {}, score_threshold=0.5, max_detections=1)
    one = response(np.zeros((1, 2, 4)), np.zeros((1, 2)), np.zeros((1, 2)), None)
    with pytest.raises(PermanentJobError, match="for 2 frames"):
        read_detections(one, [fit, fit], {}, score_threshold=0.5, max_detections=1)


def test_the_answering_model_version_is_read_from_the_response() -> None:
    # The summary names the version that served the job, not the one metadata named earlier.
    answered = pb.PredictResponse()
    answered.model_spec.name = "detector"
    answered.model_spec.version.value = 7
    assert answered_version(answered) == 7
    assert answered_version(pb.PredictResponse()) is None
