"""TF Serving's wire protocol without TensorFlow: messages, tensor codec and gRPC stubs.

The worker imports this, never TensorFlow (whose import costs seconds and ~560 MB).
"""

from framescale.tfserving import tfserving_pb2 as pb
from framescale.tfserving.codec import TensorCodecError, from_tensor_proto, to_tensor_proto
from framescale.tfserving.stubs import (
    GET_MODEL_METADATA,
    GET_MODEL_STATUS,
    PREDICT,
    SIGNATURE_DEF_MAP_TYPE_URL,
    ModelServiceStub,
    PredictionServiceStub,
    channel_options,
)

__all__ = [
    "GET_MODEL_METADATA",
    "GET_MODEL_STATUS",
    "PREDICT",
    "SIGNATURE_DEF_MAP_TYPE_URL",
    "ModelServiceStub",
    "PredictionServiceStub",
    "TensorCodecError",
    "channel_options",
    "from_tensor_proto",
    "pb",
    "to_tensor_proto",
]
