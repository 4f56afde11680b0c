"""The worker's client for TF Serving: discover the signature, send batches, read detections.

Requests carry frames as raw uint8 ``tensor_content``; several requests are in flight at
once (gRPC futures) so decoding the next batch overlaps with inference on the last.
``ModelClient`` is the gRPC adapter behind ``ports.ModelServer``: RPC failures come out of
it as ServiceError types, like every other adapter's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np

from framescale.results import Detection
from framescale.tfserving import (
    SIGNATURE_DEF_MAP_TYPE_URL,
    ModelServiceStub,
    PredictionServiceStub,
    TensorCodecError,
    channel_options,
    from_tensor_proto,
    pb,
    to_tensor_proto,
)
from framescale.worker.errors import PermanentJobError, ServiceError, Unavailable
from framescale.worker.geometry import Fit
from framescale.worker.ports import ModelSignature, PredictCall

BOXES, SCORES, CLASSES, NUM = "detection_boxes", "detection_scores", "detection_classes", "num_detections"
REQUIRED_OUTPUTS = (BOXES, SCORES, CLASSES)

# Codes where waiting and trying again can succeed: the server is starting, overloaded,
# restarting, or the model is not loaded yet (TF Serving answers NOT_FOUND while loading).
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.NOT_FOUND,
    }
)


def rpc_error(error: grpc.RpcError, *, what: str) -> ServiceError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    detail = f"failed: {code.name if code else 'UNKNOWN'}: {details}"
    kind = Unavailable if code in TRANSIENT_CODES else ServiceError
    return kind(what, detail)


class _GrpcCall:
    """``ports.PredictCall`` over a gRPC future."""

    def __init__(self, future: grpc.Future, what: str) -> None:
        self.future = future
        self.what = what

    def result(self, timeout: float) -> Any:
        try:
            return self.future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TimeoutError(self.what) from None
        except grpc.RpcError as error:
            raise rpc_error(error, what=self.what) from None

    def cancel(self) -> bool:
        return bool(self.future.cancel())


class FailedCall:
    """A Predict that failed before it started (the channel was already broken)."""

    def __init__(self, error: ServiceError) -> None:
        self.error = error

    def result(self, timeout: float) -> Any:
        raise self.error

    def cancel(self) -> bool:
        return False


class ModelClient:
    """``ports.ModelServer`` over TF Serving's gRPC API."""

    def __init__(
        self,
        target: str,
        model_name: str,
        *,
        signature_name: str = "serving_default",
        version: int | None = None,
        timeout: float = 60.0,
        max_message_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.target = target
        self.model_name = model_name
        self.signature_name = signature_name
        self.version = version
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=channel_options(max_message_bytes))
        self._predict = PredictionServiceStub(self._channel)
        self._status = ModelServiceStub(self._channel)
        self._signature: ModelSignature | None = None

    def close(self) -> None:
        self._channel.close()

    def _spec(self, spec: pb.ModelSpec) -> None:
        spec.name = self.model_name
        spec.signature_name = self.signature_name
        if self.version is not None:
            spec.version.value = self.version

    # ------------------------------------------------------------------ status

    def ready(self, timeout: float = 2.0) -> bool:
        """True when the model server answers and a version of the model is AVAILABLE."""
        request = pb.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        try:
            response = self._status.GetModelStatus(request, timeout=timeout)
        except grpc.RpcError:
            return False
        return any(s.state == pb.ModelVersionStatus.AVAILABLE for s in response.model_version_status)

    def signature(self) -> ModelSignature:
        """The model's input (name, fixed size if any), from GetModelMetadata; cached."""
        if self._signature is not None:
            return self._signature
        request = pb.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        request.model_spec.ClearField("signature_name")
        try:
            response = self._predict.GetModelMetadata(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise rpc_error(error, what=f"GetModelMetadata({self.model_name})") from None
        packed = response.metadata.get("signature_def")
        if packed is None or packed.type_url != SIGNATURE_DEF_MAP_TYPE_URL:
            raise PermanentJobError(f"model {self.model_name} returned no signature_def metadata", stage="model")
        signatures = pb.SignatureDefMap.FromString(packed.value)
        if self.signature_name not in signatures.signature_def:
            names = ", ".join(sorted(signatures.signature_def)) or "none"
            raise PermanentJobError(
                f"model {self.model_name} has no signature {self.signature_name!r} (has: {names})", stage="model"
            )
        signature = signatures.signature_def[self.signature_name]
        missing = [name for name in REQUIRED_OUTPUTS if name not in signature.outputs]
        if missing or len(signature.inputs) != 1:
            raise PermanentJobError(
                f"model {self.model_name} does not have the Object Detection API signature "
                f"(one image input; outputs {', '.join(REQUIRED_OUTPUTS)}); missing {missing or 'single input'}",
                stage="model",
            )
        input_name, info = next(iter(signature.inputs.items()))
        if info.dtype not in (pb.DT_UINT8, pb.DT_INVALID):
            raise PermanentJobError(f"model {self.model_name} input {input_name!r} must be uint8 images", stage="model")
        dims = [int(d.size) for d in info.tensor_shape.dim]
        height = dims[1] if len(dims) == 4 and dims[1] > 0 else None
        width = dims[2] if len(dims) == 4 and dims[2] > 0 else None
        version = int(response.model_spec.version.value) if response.model_spec.HasField("version") else None
        self._signature = ModelSignature(input_name, height, width, version)
        return self._signature

    # ------------------------------------------------------------------ predict

    def request(self, frames: np.ndarray) -> pb.PredictRequest:
        request = pb.PredictRequest()
        self._spec(request.model_spec)
        to_tensor_proto(frames, out=request.inputs[self.signature().input_name])
        return request

    def submit(self, frames: np.ndarray) -> PredictCall:
        """Start a Predict for a batch ``[N, H, W, 3]`` uint8."""
        what = f"Predict({self.model_name})"
        try:
            return _GrpcCall(self._predict.Predict.future(self.request(frames), timeout=self.timeout), what)
        except grpc.RpcError as error:  # raised at once when the channel is already broken
            return FailedCall(rpc_error(error, what=what))


def answered_version(response: pb.PredictResponse) -> int | None:
    """The model version that answered, as TF Serving names it in the response's model_spec."""
    if response.HasField("model_spec") and response.model_spec.HasField("version"):
        return int(response.model_spec.version.value)
    return None


def read_detections(
    response: pb.PredictResponse,
    fits: list[Fit],
    labels: Mapping[int, str],
    *,
    score_threshold: float,
    max_detections: int,
) -> list[list[Detection]]:
    """Detections per frame (boxes normalized to each original frame), best first."""
    count = len(fits)
    try:
        outputs = {name: from_tensor_proto(tensor) for name, tensor in response.outputs.items()}
    except TensorCodecError as error:
        raise PermanentJobError(f"model returned an unreadable tensor: {error}", stage="inference") from None
    missing = [name for name in REQUIRED_OUTPUTS if name not in outputs]
    if missing:
        raise PermanentJobError(f"model response lacks {', '.join(missing)}", stage="inference")
    boxes = outputs[BOXES].astype(np.float32, copy=False)
    scores = outputs[SCORES].astype(np.float32, copy=False)
    classes = outputs[CLASSES]
    if boxes.shape[:1] != (count,) or scores.shape[:1] != (count,) or boxes.shape[-1:] != (4,):
        raise PermanentJobError(
            f"model returned boxes {list(boxes.shape)} and scores {list(scores.shape)} for {count} frames",
            stage="inference",
        )
    nums = outputs[NUM].reshape(-1).astype(np.int64) if NUM in outputs else None
    per_frame: list[list[Detection]] = []
    for i, fit in enumerate(fits):
        limit = int(nums[i]) if nums is not None else scores.shape[1]
        frame_scores = scores[i, :limit]
        keep = np.flatnonzero(frame_scores >= score_threshold)
        keep = keep[np.argsort(-frame_scores[keep], kind="stable")][:max_detections]
        mapped = fit.to_original(boxes[i, keep]) if keep.size else boxes[i, :0]
        frame: list[Detection] = []
        for row, j in enumerate(keep):
            class_id = round(float(classes[i, j]))
            frame.append(
                Detection(
                    label=labels.get(class_id, f"class_{class_id}"),
                    class_id=class_id,
                    score=float(frame_scores[j]),
                    box=(float(mapped[row, 0]), float(mapped[row, 1]), float(mapped[row, 2]), float(mapped[row, 3])),
                )
            )
        per_frame.append(frame)
    return per_frame
