"""gRPC stubs for TF Serving's PredictionService and ModelService, on our own messages.

The method paths are TF Serving's; the messages are framescale.tfserving's, whose bytes
match tensorflow_serving.apis'.
"""

from __future__ import annotations

from typing import Any

import grpc

from framescale.tfserving import tfserving_pb2 as pb

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
PREDICT = f"/{PREDICTION_SERVICE}/Predict"
GET_MODEL_METADATA = f"/{PREDICTION_SERVICE}/GetModelMetadata"
GET_MODEL_STATUS = f"/{MODEL_SERVICE}/GetModelStatus"
# GetModelMetadata packs the signatures in an Any named with TF Serving's type name.
SIGNATURE_DEF_MAP_TYPE_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Options for both ends: gRPC's 4 MB default is below one batch of 8 frames at 640x640."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class PredictionServiceStub:
    def __init__(self, channel: grpc.Channel) -> None:
        self.Predict = channel.unary_unary(
            PREDICT,
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictResponse.FromString,
        )
        self.GetModelMetadata = channel.unary_unary(
            GET_MODEL_METADATA,
            request_serializer=pb.GetModelMetadataRequest.SerializeToString,
            response_deserializer=pb.GetModelMetadataResponse.FromString,
        )


class ModelServiceStub:
    def __init__(self, channel: grpc.Channel) -> None:
        self.GetModelStatus = channel.unary_unary(
            GET_MODEL_STATUS,
            request_serializer=pb.GetModelStatusRequest.SerializeToString,
            response_deserializer=pb.GetModelStatusResponse.FromString,
        )
