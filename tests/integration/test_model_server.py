"""The local model server as a real process, spoken to by TF Serving's own clients and ours.

One server per module (TensorFlow loads once) over the exported models, plus a copy of the
null model that the polling test gives a second version. The restart test runs last.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from skimage import data as skimage_data
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from framescale.local.model_server import ModelServerProcess
from framescale.local.processes import wait_until
from framescale.synthetic import BACKGROUND_RGB, CLASSES
from framescale.tfserving import (
    ModelServiceStub,
    PredictionServiceStub,
    channel_options,
    from_tensor_proto,
    pb,
    to_tensor_proto,
)

pytestmark = pytest.mark.integration

OUTPUTS = ["detection_boxes", "detection_classes", "detection_scores", "num_detections"]
COLOUR = {item.class_id: item.rgb for item in CLASSES}
RED, GREEN, BLUE = (item.class_id for item in CLASSES)
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.Value("AVAILABLE")


def draw(height: int, width: int, objects: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = BACKGROUND_RGB
    for class_id, (row0, col0, row1, col1) in objects.items():
        frame[row0:row1, col0:col1] = COLOUR[class_id]
    return frame


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def served_dir(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    for name in ("person", "synthetic", "null"):
        (root / name).symlink_to((models_dir / name).resolve(), target_is_directory=True)
    shutil.copytree(models_dir / "null", root / "polled")
    return root


@pytest.fixture(scope="module")
def server(served_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServerProcess]:
    log_path = tmp_path_factory.mktemp("model-server") / "model-server.log"
    process = ModelServerProcess(
        served_dir, log_path=log_path, extra_args=["--file_system_poll_wait_seconds", "0.5"]
    ).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def channel(server: ModelServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target, options=channel_options()) as opened:
        yield opened


@pytest.fixture(scope="module")
def official(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def ours(channel: grpc.Channel) -> PredictionServiceStub:
    return PredictionServiceStub(channel)


def official_request(model: str, images: np.ndarray, **spec: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(images))
    return request


def our_request(model: str, images: np.ndarray) -> pb.PredictRequest:
    request = pb.PredictRequest(model_spec=pb.ModelSpec(name=model))
    to_tensor_proto(images, request.inputs["inputs"])
    return request


def official_outputs(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


def our_outputs(response: pb.PredictResponse) -> dict[str, np.ndarray]:
    return {name: from_tensor_proto(tensor) for name, tensor in response.outputs.items()}


def rest(server: ModelServerProcess, path: str, body: Any = None) -> tuple[int, Any]:
    payload = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.rest_url + path, data=payload, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # 512 x 512 RGB photograph of a person


# ---------------------------------------------------------------- Predict


def test_synthetic_model_over_both_clients(official: Any, ours: PredictionServiceStub) -> None:
    frame = draw(60, 80, {RED: (6, 8, 30, 40), BLUE: (40, 50, 60, 80)})
    images = frame[None]

    theirs = official.Predict(official_request("synthetic", images), timeout=60)
    mine = ours.Predict(our_request("synthetic", images), timeout=60)

    assert theirs.model_spec.name == "synthetic"
    assert theirs.model_spec.version.value == 1
    assert theirs.model_spec.signature_name == "serving_default"
    outputs = official_outputs(theirs)
    assert sorted(outputs) == OUTPUTS
    assert outputs["num_detections"].tolist() == [2.0]
    assert outputs["detection_classes"][0, :2].tolist() == [RED, BLUE]
    np.testing.assert_allclose(outputs["detection_boxes"][0, 0], [6 / 60, 8 / 80, 30 / 60, 40 / 80], atol=1e-6)
    np.testing.assert_allclose(outputs["detection_boxes"][0, 1], [40 / 60, 50 / 80, 1.0, 1.0], atol=1e-6)
    # As TF Serving answers by default: typed value fields, not tensor_content.
    assert theirs.outputs["detection_scores"].float_val
    assert not theirs.outputs["detection_scores"].tensor_content

    for name, value in our_outputs(mine).items():
        np.testing.assert_array_equal(value, outputs[name], err_msg=name)


def test_person_model_over_both_clients(official: Any, ours: PredictionServiceStub) -> None:
    images = astronaut()[None]
    theirs = official_outputs(official.Predict(official_request("person", images), timeout=60))
    mine = our_outputs(ours.Predict(our_request("person", images), timeout=60))
    assert sorted(mine) == sorted(theirs) == OUTPUTS
    for name in OUTPUTS:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_person_model_finds_the_astronaut(official: Any) -> None:
    grey = np.full((1, 512, 512, 3), 110, np.uint8)
    outputs = official_outputs(
        official.Predict(official_request("person", np.concatenate([astronaut()[None], grey])), timeout=60)
    )

    best = int(np.argmax(outputs["detection_scores"][0]))
    assert outputs["detection_scores"][0, best] > 0.5
    assert outputs["detection_classes"][0, best] == 1.0  # person
    ymin, xmin, ymax, xmax = outputs["detection_boxes"][0, best]
    # She fills the left three quarters of the photograph from her head down to the bottom
    # edge; the box must cover her face and body but not the whole frame.
    assert ymin <= 0.2 and xmin <= 0.15 and ymax >= 0.9 and xmax >= 0.6
    assert xmax <= 0.85
    # And nobody in a plain grey frame.
    assert outputs["detection_scores"][1].max() < 0.5


def test_batch_of_eight_640px_frames_is_served(ours: PredictionServiceStub) -> None:
    rects = [(10 * i, 20 * i, 10 * i + 100, 20 * i + 300) for i in range(8)]
    images = np.stack([draw(640, 640, {GREEN: rect}) for rect in rects])
    request = our_request("synthetic", images)
    assert request.ByteSize() > 4 * 1024 * 1024  # above gRPC's default limit

    outputs = our_outputs(ours.Predict(request, timeout=120))

    assert outputs["num_detections"].tolist() == [1.0] * 8
    for index, (row0, col0, row1, col1) in enumerate(rects):
        np.testing.assert_allclose(
            outputs["detection_boxes"][index, 0], np.array([row0, col0, row1, col1]) / 640, atol=1e-6
        )


def test_concurrent_requests_are_all_answered(ours: PredictionServiceStub) -> None:
    images = np.zeros((2, 64, 64, 3), np.uint8)
    answers: list[float] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            for _ in range(5):
                outputs = our_outputs(ours.Predict(our_request("null", images), timeout=60))
                answers.append(float(outputs["num_detections"].sum()))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert answers == [0.0] * 30


def test_output_filter_and_pinned_version(official: Any) -> None:
    request = official_request("synthetic", draw(20, 20, {})[None], version=1, signature_name="serving_default")
    request.output_filter.append("num_detections")
    response = official.Predict(request, timeout=60)
    assert list(response.outputs) == ["num_detections"]
    assert response.model_spec.version.value == 1


# ---------------------------------------------------------------- metadata and status


@pytest.mark.parametrize(("model", "detections"), [("person", -1), ("synthetic", len(CLASSES)), ("null", 1)])
def test_metadata_shows_the_detection_signature(official: Any, model: str, detections: int) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    response = official.GetModelMetadata(request, timeout=30)

    assert response.model_spec.name == model
    assert response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    serving = signatures.signature_def["serving_default"]
    assert serving.method_name == "tensorflow/serving/predict"
    assert list(serving.inputs) == ["inputs"]
    assert serving.inputs["inputs"].dtype == tf.uint8.as_datatype_enum
    assert [dim.size for dim in serving.inputs["inputs"].tensor_shape.dim] == [-1, -1, -1, 3]
    assert sorted(serving.outputs) == OUTPUTS
    assert all(output.dtype == tf.float32.as_datatype_enum for output in serving.outputs.values())
    # K, the detections per frame: fixed by the graph for the synthetic and null models.
    assert [dim.size for dim in serving.outputs["detection_boxes"].tensor_shape.dim] == [-1, detections, 4]


def test_status_is_available(channel: grpc.Channel) -> None:
    official_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "person"
    response = official_stub.GetModelStatus(request, timeout=30)
    assert [(status.version, status.state) for status in response.model_version_status] == [(1, AVAILABLE)]
    assert response.model_version_status[0].status.error_code == 0
    assert response.model_version_status[0].status.error_message == ""

    pinned = ModelServiceStub(channel).GetModelStatus(
        pb.GetModelStatusRequest(model_spec=pb.ModelSpec(name="synthetic", version={"value": 1})), timeout=30
    )
    assert [(status.version, status.state) for status in pinned.model_version_status] == [
        (1, pb.ModelVersionStatus.AVAILABLE)
    ]


# ---------------------------------------------------------------- REST


def test_rest_predict_row_and_columnar_forms(server: ModelServerProcess, ours: PredictionServiceStub) -> None:
    frames = np.stack([draw(12, 16, {RED: (0, 0, 6, 8)}), draw(12, 16, {GREEN: (2, 2, 12, 16)})])
    expected = our_outputs(ours.Predict(our_request("synthetic", frames), timeout=60))

    status, row = rest(server, "/v1/models/synthetic:predict", {"instances": frames.tolist()})
    assert status == 200
    assert len(row["predictions"]) == 2
    for index, prediction in enumerate(row["predictions"]):
        assert sorted(prediction) == OUTPUTS
        for name in OUTPUTS:
            np.testing.assert_array_equal(np.float32(prediction[name]), expected[name][index], err_msg=name)

    status, columnar = rest(
        server,
        "/v1/models/synthetic/versions/1:predict",
        {"signature_name": "serving_default", "inputs": {"inputs": frames.tolist()}},
    )
    assert status == 200
    for name in OUTPUTS:
        np.testing.assert_array_equal(np.float32(columnar["outputs"][name]), expected[name], err_msg=name)


def test_rest_status_and_metadata(server: ModelServerProcess) -> None:
    assert rest(server, "/v1/models/person") == (
        200,
        {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        },
    )
    assert rest(server, "/v1/models/person/versions/1")[0] == 200
    status, metadata = rest(server, "/v1/models/synthetic/metadata")
    assert status == 200
    assert metadata["model_spec"] == {"name": "synthetic", "signature_name": "", "version": "1"}
    serving = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert serving["inputs"]["inputs"]["dtype"] == "DT_UINT8"
    assert sorted(serving["outputs"]) == OUTPUTS


@pytest.mark.parametrize(
    ("method_path", "body", "status", "fragment"),
    [
        ("/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        (
            "/v1/models/nope:predict",
            {"instances": [[[[0, 0, 0]]]]},
            404,
            "Servable not found for request: Latest(nope)",
        ),
        ("/v1/models/null/versions/9:predict", {"instances": [[[[0, 0, 0]]]]}, 404, "Specific(null, 9)"),
        ("/v1/models/null:predict", {"inputs": {"images": [[[[0, 0, 0]]]]}}, 400, "images"),
        ("/v1/models/null:predict", {"instances": [[[0, 0, 0]]]}, 400, "rank"),
        ("/v1/models/null:predict", {"instances": [[[[0.5, 0, 0]]]]}, 400, "integers"),
        ("/v1/models/null:predict", {"instances": [[[[300, 0, 0]]]]}, 400, "range"),
        ("/v1/models/null:predict", {"instances": [[[[0, 0]]]]}, 400, "dimension 3 must be 3"),
        ("/v1/models/null:predict", {"signature_name": "nope", "instances": [[[[0, 0, 0]]]]}, 400, '"nope" not found'),
        ("/v1/models/null:predict", {"nothing": 1}, 400, "instances"),
    ],
)
def test_rest_errors(server: ModelServerProcess, method_path: str, body: Any, status: int, fragment: str) -> None:
    got_status, payload = rest(server, method_path, body)
    assert got_status == status
    assert list(payload) == ["error"]
    assert fragment in payload["error"]


# ---------------------------------------------------------------- gRPC errors


def _rename_input(request: predict_pb2.PredictRequest) -> None:
    request.inputs["images"].CopyFrom(request.inputs["inputs"])
    del request.inputs["inputs"]


def _float_input(request: predict_pb2.PredictRequest) -> None:
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4, 4, 3), np.float32)))


def _rank_three(request: predict_pb2.PredictRequest) -> None:
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.zeros((4, 4, 3), np.uint8)))


def _four_channels(request: predict_pb2.PredictRequest) -> None:
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4, 4, 4), np.uint8)))


def _truncated(request: predict_pb2.PredictRequest) -> None:
    request.inputs["inputs"].tensor_content = request.inputs["inputs"].tensor_content[:-1]


def _extra_input(request: predict_pb2.PredictRequest) -> None:
    request.inputs["extra"].CopyFrom(tf.make_tensor_proto(np.zeros(1, np.float32)))


def _unknown_model(request: predict_pb2.PredictRequest) -> None:
    request.model_spec.name = "nope"


def _unknown_version(request: predict_pb2.PredictRequest) -> None:
    request.model_spec.version.value = 7


def _version_label(request: predict_pb2.PredictRequest) -> None:
    request.model_spec.version_label = "stable"


def _unknown_signature(request: predict_pb2.PredictRequest) -> None:
    request.model_spec.signature_name = "nope"


def _unknown_output(request: predict_pb2.PredictRequest) -> None:
    request.output_filter.append("masks")


@pytest.mark.parametrize(
    ("mutate", "code", "fragment"),
    [
        (_unknown_model, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        (_unknown_version, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(synthetic, 7)"),
        (_version_label, grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: stable"),
        (_unknown_signature, grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
        (_rename_input, grpc.StatusCode.INVALID_ARGUMENT, "Sent extra: {images}. Missing but required: {inputs}."),
        (_extra_input, grpc.StatusCode.INVALID_ARGUMENT, "Sent extra: {extra}."),
        (
            _float_input,
            grpc.StatusCode.INVALID_ARGUMENT,
            "has dtype DT_FLOAT, but signature 'serving_default' expects DT_UINT8",
        ),
        (_rank_three, grpc.StatusCode.INVALID_ARGUMENT, "expects rank 4"),
        (_four_channels, grpc.StatusCode.INVALID_ARGUMENT, "dimension 3 must be 3"),
        (_truncated, grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: inputs"),
        (_unknown_output, grpc.StatusCode.INVALID_ARGUMENT, "output tensor alias not found in signature"),
    ],
    ids=lambda value: getattr(value, "__name__", None) or str(value),
)
def test_grpc_errors(
    official: Any, mutate: Callable[[predict_pb2.PredictRequest], None], code: grpc.StatusCode, fragment: str
) -> None:
    request = official_request("synthetic", np.zeros((1, 4, 4, 3), np.uint8))
    mutate(request)
    with pytest.raises(grpc.RpcError) as caught:
        official.Predict(request, timeout=30)
    assert caught.value.code() == code
    assert fragment in caught.value.details()


def test_status_and_metadata_errors(channel: grpc.Channel, ours: PredictionServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        ModelServiceStub(channel).GetModelStatus(
            pb.GetModelStatusRequest(model_spec=pb.ModelSpec(name="nope")), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "Could not find any versions of model nope"

    with pytest.raises(grpc.RpcError) as caught:
        ours.GetModelMetadata(pb.GetModelMetadataRequest(model_spec=pb.ModelSpec(name="person")), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata_field" in caught.value.details()


# ---------------------------------------------------------------- versions and restarts


def test_new_version_is_picked_up_and_replaces_the_old(
    served_dir: Path, channel: grpc.Channel, ours: PredictionServiceStub
) -> None:
    # Written aside and renamed, as an exporter should, so the poller never sees half of it.
    staged = served_dir / "polled" / ".incoming"
    shutil.copytree(served_dir / "polled" / "1", staged)
    staged.rename(served_dir / "polled" / "2")
    status_stub = ModelServiceStub(channel)

    def states() -> list[tuple[int, int]]:
        response = status_stub.GetModelStatus(
            pb.GetModelStatusRequest(model_spec=pb.ModelSpec(name="polled")), timeout=30
        )
        return [(status.version, status.state) for status in response.model_version_status]

    wait_until(lambda: (2, pb.ModelVersionStatus.AVAILABLE) in states(), 60, "version 2 of 'polled'")
    assert states() == [(2, pb.ModelVersionStatus.AVAILABLE), (1, pb.ModelVersionStatus.END)]

    response = ours.Predict(our_request("polled", np.zeros((1, 8, 8, 3), np.uint8)), timeout=60)
    assert response.model_spec.version.value == 2
    old = our_request("polled", np.zeros((1, 8, 8, 3), np.uint8))
    old.model_spec.version.value = 1
    with pytest.raises(grpc.RpcError) as caught:
        ours.Predict(old, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_stop_and_start_again_on_the_same_ports(server: ModelServerProcess) -> None:
    target = server.grpc_target
    assert server.stop() == 0  # SIGTERM is a clean exit
    with grpc.insecure_channel(target) as closed, pytest.raises(grpc.RpcError) as caught:
        PredictionServiceStub(closed).Predict(our_request("null", np.zeros((1, 4, 4, 3), np.uint8)), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    server.start()
    assert server.grpc_target == target
    with grpc.insecure_channel(target, options=channel_options()) as reopened:
        response = PredictionServiceStub(reopened).Predict(
            our_request("null", np.zeros((1, 4, 4, 3), np.uint8)), timeout=60
        )
    assert response.model_spec.name == "null"
