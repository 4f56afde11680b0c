"""framescale's TF Serving messages against tensorflow-serving-api's own, both ways.

Bytes written by one side are parsed by the other and compared field by field, and tensors
are decoded by TensorFlow itself (``tf.make_ndarray``/``tf.make_tensor_proto``). The official
modules import all of TensorFlow (seconds), so they are imported once, here.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

from framescale.modelserver.grpc_api import encode_as_fields
from framescale.tfserving import SIGNATURE_DEF_MAP_TYPE_URL, from_tensor_proto, pb, to_tensor_proto

OFFICIAL_TENSOR = (
    predict_pb2.PredictRequest.DESCRIPTOR.fields_by_name["inputs"].message_type.fields_by_name["value"].message_type
)
OFFICIAL_DATA_TYPE = OFFICIAL_TENSOR.fields_by_name["dtype"].enum_type


def image_batch() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)


def test_every_dtype_we_name_has_tensorflows_number() -> None:
    for value in pb.DataType.DESCRIPTOR.values:
        assert OFFICIAL_DATA_TYPE.values_by_name[value.name].number == value.number, value.name


def test_model_version_states_have_tf_servings_numbers() -> None:
    official = get_model_status_pb2.ModelVersionStatus.State
    for value in pb.ModelVersionStatus.State.DESCRIPTOR.values:
        assert official.Value(value.name) == value.number, value.name


def test_our_predict_request_parses_as_theirs() -> None:
    images = image_batch()
    ours = pb.PredictRequest(output_filter=["detection_boxes", "num_detections"])
    ours.model_spec.name = "person"
    ours.model_spec.version.value = 3
    ours.model_spec.signature_name = "serving_default"
    to_tensor_proto(images, ours.inputs["inputs"])
    ours.inputs["threshold"].CopyFrom(to_tensor_proto(np.array(0.25, np.float32)))
    ours.inputs["names"].CopyFrom(to_tensor_proto(np.array([b"a", b"\xff\x00"], dtype=object)))

    theirs = predict_pb2.PredictRequest.FromString(ours.SerializeToString())

    assert theirs.model_spec.name == "person"
    assert theirs.model_spec.WhichOneof("version_choice") == "version"
    assert theirs.model_spec.version.value == 3
    assert theirs.model_spec.signature_name == "serving_default"
    assert list(theirs.output_filter) == ["detection_boxes", "num_detections"]
    image = theirs.inputs["inputs"]
    assert OFFICIAL_DATA_TYPE.values_by_number[image.dtype].name == "DT_UINT8"
    assert [dim.size for dim in image.tensor_shape.dim] == [2, 5, 7, 3]
    assert image.tensor_content == images.tobytes()
    decoded = tf.make_ndarray(image)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, images)
    assert tf.make_ndarray(theirs.inputs["threshold"]) == np.float32(0.25)
    assert tf.make_ndarray(theirs.inputs["names"]).tolist() == [b"a", b"\xff\x00"]


def test_version_label_travels() -> None:
    ours = pb.PredictRequest(model_spec=pb.ModelSpec(name="person", version_label="stable"))
    theirs = predict_pb2.PredictRequest.FromString(ours.SerializeToString())
    assert theirs.model_spec.WhichOneof("version_choice") == "version_label"
    assert theirs.model_spec.version_label == "stable"

    back = pb.PredictRequest.FromString(theirs.SerializeToString())
    assert back.model_spec.WhichOneof("version_choice") == "version_label"
    assert back.model_spec.version_label == "stable"


def test_their_predict_request_parses_as_ours() -> None:
    images = image_batch()
    theirs = predict_pb2.PredictRequest()
    theirs.model_spec.name = "synthetic"
    theirs.model_spec.version.value = 12
    theirs.model_spec.signature_name = "detect"
    theirs.inputs["inputs"].CopyFrom(tf.make_tensor_proto(images))  # tensor_content
    theirs.inputs["scale"].CopyFrom(tf.make_tensor_proto(1.5, dtype=tf.float32, shape=[2, 3]))  # float_val shorthand
    theirs.inputs["ids"].CopyFrom(tf.make_tensor_proto(np.array([1, -2, 3], np.int64)))
    theirs.inputs["flags"].CopyFrom(tf.make_tensor_proto(np.array([True, False])))
    theirs.inputs["half"].CopyFrom(tf.make_tensor_proto(np.array([0.5, -1.25], np.float16)))
    theirs.inputs["text"].CopyFrom(tf.make_tensor_proto([b"x", b"yz"]))

    ours = pb.PredictRequest.FromString(theirs.SerializeToString())

    assert ours.model_spec.name == "synthetic"
    assert ours.model_spec.version.value == 12
    assert ours.model_spec.signature_name == "detect"
    decoded = {name: from_tensor_proto(tensor) for name, tensor in ours.inputs.items()}
    assert decoded["inputs"].dtype == np.uint8
    np.testing.assert_array_equal(decoded["inputs"], images)
    np.testing.assert_array_equal(decoded["scale"], np.full((2, 3), 1.5, np.float32))
    assert decoded["scale"].dtype == np.float32
    assert decoded["ids"].tolist() == [1, -2, 3]
    assert decoded["flags"].tolist() == [True, False]
    np.testing.assert_array_equal(decoded["half"], np.array([0.5, -1.25], np.float16))
    assert decoded["text"].tolist() == [b"x", b"yz"]


@pytest.mark.parametrize("encoding", ["tensor_content", "typed fields"])
def test_predict_response_both_ways(encoding: str) -> None:
    boxes = np.random.default_rng(5).random((2, 4, 4), dtype=np.float32)
    scores = np.array([[0.9, 0.5, 0.0, 0.0], [0.7, 0.0, 0.0, 0.0]], np.float32)
    ours = pb.PredictResponse()
    ours.model_spec.name = "person"
    ours.model_spec.version.value = 1
    ours.model_spec.signature_name = "serving_default"
    for name, array in (("detection_boxes", boxes), ("detection_scores", scores)):
        if encoding == "tensor_content":
            to_tensor_proto(array, ours.outputs[name])
        else:
            encode_as_fields(array, ours.outputs[name])

    theirs = predict_pb2.PredictResponse.FromString(ours.SerializeToString())
    assert theirs.model_spec.name == "person"
    assert theirs.model_spec.version.value == 1
    assert theirs.model_spec.signature_name == "serving_default"
    np.testing.assert_array_equal(tf.make_ndarray(theirs.outputs["detection_boxes"]), boxes)
    np.testing.assert_array_equal(tf.make_ndarray(theirs.outputs["detection_scores"]), scores)
    if encoding == "typed fields":
        # What TF Serving's clients read directly.
        assert list(theirs.outputs["detection_scores"].float_val) == scores.reshape(-1).tolist()

    back = pb.PredictResponse.FromString(theirs.SerializeToString())
    np.testing.assert_array_equal(from_tensor_proto(back.outputs["detection_boxes"]), boxes)


def signature_def_map() -> pb.SignatureDefMap:
    signatures = pb.SignatureDefMap()
    serving = signatures.signature_def["serving_default"]
    serving.method_name = "tensorflow/serving/predict"
    image = serving.inputs["inputs"]
    image.name = "serving_default_inputs:0"
    image.dtype = pb.DT_UINT8
    for size in (-1, -1, -1, 3):
        image.tensor_shape.dim.add(size=size)
    scores = serving.outputs["detection_scores"]
    scores.name = "StatefulPartitionedCall:2"
    scores.dtype = pb.DT_FLOAT
    scores.tensor_shape.dim.add(size=-1)
    scores.tensor_shape.dim.add(size=-1)
    return signatures


def test_our_model_metadata_unpacks_with_theirs() -> None:
    ours = pb.GetModelMetadataResponse()
    ours.model_spec.name = "person"
    ours.model_spec.version.value = 1
    packed = ours.metadata["signature_def"]
    packed.type_url = SIGNATURE_DEF_MAP_TYPE_URL
    packed.value = signature_def_map().SerializeToString()

    theirs = get_model_metadata_pb2.GetModelMetadataResponse.FromString(ours.SerializeToString())
    assert theirs.model_spec.name == "person"
    assert theirs.model_spec.version.value == 1
    assert theirs.metadata["signature_def"].Is(get_model_metadata_pb2.SignatureDefMap.DESCRIPTOR)
    unpacked = get_model_metadata_pb2.SignatureDefMap()
    assert theirs.metadata["signature_def"].Unpack(unpacked)
    serving = unpacked.signature_def["serving_default"]
    assert serving.method_name == "tensorflow/serving/predict"
    image = serving.inputs["inputs"]
    assert image.name == "serving_default_inputs:0"
    assert image.dtype == OFFICIAL_DATA_TYPE.values_by_name["DT_UINT8"].number
    assert [dim.size for dim in image.tensor_shape.dim] == [-1, -1, -1, 3]
    assert [dim.size for dim in serving.outputs["detection_scores"].tensor_shape.dim] == [-1, -1]


def test_their_model_metadata_unpacks_with_ours() -> None:
    official_map = get_model_metadata_pb2.SignatureDefMap.FromString(signature_def_map().SerializeToString())
    theirs = get_model_metadata_pb2.GetModelMetadataResponse()
    theirs.model_spec.name = "person"
    theirs.metadata["signature_def"].Pack(official_map)

    ours = pb.GetModelMetadataResponse.FromString(theirs.SerializeToString())
    assert ours.metadata["signature_def"].type_url == SIGNATURE_DEF_MAP_TYPE_URL
    signatures = pb.SignatureDefMap.FromString(ours.metadata["signature_def"].value)
    assert signatures == signature_def_map()


def test_metadata_and_status_requests_both_ways() -> None:
    ours = pb.GetModelMetadataRequest(model_spec=pb.ModelSpec(name="person"), metadata_field=["signature_def"])
    theirs = get_model_metadata_pb2.GetModelMetadataRequest.FromString(ours.SerializeToString())
    assert theirs.model_spec.name == "person"
    assert list(theirs.metadata_field) == ["signature_def"]

    theirs_status = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="null"))
    theirs_status.model_spec.version.value = 4
    ours_status = pb.GetModelStatusRequest.FromString(theirs_status.SerializeToString())
    assert ours_status.model_spec.name == "null"
    assert ours_status.model_spec.version.value == 4


def test_model_status_response_both_ways() -> None:
    ours = pb.GetModelStatusResponse()
    ours.model_version_status.add(
        version=2, state=pb.ModelVersionStatus.AVAILABLE, status=pb.StatusProto(error_code=0, error_message="")
    )
    ours.model_version_status.add(
        version=1, state=pb.ModelVersionStatus.END, status=pb.StatusProto(error_code=5, error_message="gone")
    )

    theirs = get_model_status_pb2.GetModelStatusResponse.FromString(ours.SerializeToString())
    official_state = get_model_status_pb2.ModelVersionStatus.State
    first, second = theirs.model_version_status
    assert (first.version, first.state) == (2, official_state.Value("AVAILABLE"))
    assert first.status.error_code == 0  # tensorflow.error.OK
    assert (second.version, second.state) == (1, official_state.Value("END"))
    assert second.status.error_code == 5  # tensorflow.error.NOT_FOUND
    assert second.status.error_message == "gone"

    assert pb.GetModelStatusResponse.FromString(theirs.SerializeToString()) == ours
