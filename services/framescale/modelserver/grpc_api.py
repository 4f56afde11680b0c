"""TF Serving's gRPC API over a model repository.

``tensorflow.serving.PredictionService/Predict`` and ``/GetModelMetadata`` and
``tensorflow.serving.ModelService/GetModelStatus``, registered under TF Serving's service
names with framescale's wire-compatible messages, so TF Serving's own client stubs and
framescale's are both served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from framescale.modelserver.errors import ServingError, invalid_argument
from framescale.modelserver.repository import ModelRepository
from framescale.tfserving import tfserving_pb2 as pb
from framescale.tfserving.codec import VALUE_FIELDS, TensorCodecError, from_tensor_proto, to_tensor_proto
from framescale.tfserving.stubs import MODEL_SERVICE, PREDICTION_SERVICE, SIGNATURE_DEF_MAP_TYPE_URL, channel_options

log = logging.getLogger("framescale.modelserver")

SIGNATURE_DEF_FIELD = "signature_def"


def encode_as_fields(array: np.ndarray, out: pb.TensorProto) -> None:
    """Encode ``array`` into ``out`` the way TF Serving answers Predict by default.

    TF Serving fills the typed value fields (``float_val``...; Tensor::AsProtoField), not
    ``tensor_content``, and clients that read ``outputs[k].float_val`` directly rely on it.
    """
    to_tensor_proto(array, out)
    if out.dtype == pb.DT_STRING:
        return
    out.tensor_content = b""
    values = np.ascontiguousarray(array).reshape(-1)
    if out.dtype == pb.DT_HALF:  # half_val carries the IEEE bits
        values = values.view(np.uint16)
    getattr(out, VALUE_FIELDS[out.dtype]).extend(values.tolist())


def requested_version(spec: pb.ModelSpec) -> tuple[int | None, str | None]:
    """The (version, label) a ModelSpec pins; (None, None) means the latest."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return int(spec.version.value), None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


class TFServingServicer:
    """The three RPCs as plain methods: request in, response out, ServingError on failure."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def predict(self, request: pb.PredictRequest) -> pb.PredictResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        servable = self.repository.lookup(spec.name, *requested_version(spec))
        inputs = {}
        for alias, tensor in request.inputs.items():
            try:
                inputs[alias] = from_tensor_proto(tensor)
            except TensorCodecError as error:
                raise invalid_argument(f"tensor parsing error: {alias}: {error}") from None
        signature_key, outputs = servable.predict(spec.signature_name, inputs, list(request.output_filter))
        response = pb.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_key
        for alias, array in outputs.items():
            encode_as_fields(array, response.outputs[alias])
        return response

    def get_model_metadata(self, request: pb.GetModelMetadataRequest) -> pb.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        spec = request.model_spec
        servable = self.repository.lookup(spec.name, *requested_version(spec))
        response = pb.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        packed = response.metadata[SIGNATURE_DEF_FIELD]
        packed.type_url = SIGNATURE_DEF_MAP_TYPE_URL
        packed.value = servable.signature_defs.SerializeToString(deterministic=True)
        return response

    def get_model_status(self, request: pb.GetModelStatusRequest) -> pb.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        version, label = requested_version(request.model_spec)
        if label:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        response = pb.GetModelStatusResponse()
        for state in self.repository.status(request.model_spec.name, version):
            response.model_version_status.add(
                version=state.version,
                state=state.state,  # type: ignore[arg-type]
                status=pb.StatusProto(error_code=state.error_code.value[0], error_message=state.error_message),
            )
        return response


def _handler(method: Callable[[Any], Any], request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(request)
        except ServingError as error:
            log.debug("request failed", extra={"code": error.code.name, "error": error.message})
            context.abort(error.code, error.message)
        except Exception as error:
            log.exception("request failed unexpectedly")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
    )


def generic_handlers(servicer: TFServingServicer) -> tuple[grpc.GenericRpcHandler, ...]:
    prediction = grpc.method_handlers_generic_handler(
        PREDICTION_SERVICE,
        {
            "Predict": _handler(servicer.predict, pb.PredictRequest, pb.PredictResponse),
            "GetModelMetadata": _handler(
                servicer.get_model_metadata, pb.GetModelMetadataRequest, pb.GetModelMetadataResponse
            ),
        },
    )
    model = grpc.method_handlers_generic_handler(
        MODEL_SERVICE,
        {"GetModelStatus": _handler(servicer.get_model_status, pb.GetModelStatusRequest, pb.GetModelStatusResponse)},
    )
    return prediction, model


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def create_grpc_server(
    repository: ModelRepository, host: str, port: int, *, threads: int, max_message_bytes: int
) -> grpc.Server:
    """A bound, not yet started gRPC server; raises OSError when the port cannot be bound."""
    options = [
        *channel_options(max_message_bytes),
        # gRPC sets SO_REUSEPORT by default, which lets a second server on the same port
        # silently take half the traffic; a clash must be an error instead.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"), options=options)
    server.add_generic_rpc_handlers(generic_handlers(TFServingServicer(repository)))
    target = address(host, port)
    try:
        bound = server.add_insecure_port(target)
    except RuntimeError as error:  # recent grpcio raises instead of returning 0
        raise OSError(f"cannot listen for gRPC on {target}: {error}") from None
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {target}")
    return server
