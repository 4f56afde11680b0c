"""One loaded model version: its signatures, and a Predict checked and run on one of them.

A request is checked against the SignatureDef before TensorFlow sees it, so a wrong input
name, dtype or rank is an INVALID_ARGUMENT that names the problem, as TF Serving reports it,
rather than an error from deep inside the graph. Importing this module imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from framescale.modelserver.errors import ServingError, invalid_argument, status_code_from_number
from framescale.tfserving import tfserving_pb2 as pb
from framescale.tfserving.codec import TensorCodecError, dtype_name, numpy_dtype

DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_TEXT_FILE = "saved_model.pbtxt"


@dataclass(frozen=True)
class InputSpec:
    alias: str
    dtype: int  # a pb.DataType value
    shape: tuple[int, ...] | None  # -1 for an unknown size; None for an unknown rank


def _join(names: Sequence[str] | set[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"


def _input_specs(definition: pb.SignatureDef) -> dict[str, InputSpec]:
    specs = {}
    for alias, info in definition.inputs.items():
        shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
        specs[alias] = InputSpec(alias, int(info.dtype), shape)
    return specs


def _numpy_to_dtype() -> dict[np.dtype, int]:
    table = {}
    for value in pb.DataType.values():
        try:
            table[numpy_dtype(value)] = int(value)
        except TensorCodecError:  # DT_INVALID, DT_STRING
            continue
    return table


_DTYPES = _numpy_to_dtype()


def _dtype_of(array: np.ndarray) -> str:
    if array.dtype.kind in ("O", "S", "U"):
        return "DT_STRING"
    return dtype_name(_DTYPES.get(array.dtype, pb.DT_INVALID))


def _check_dtype(key: str, spec: InputSpec, array: np.ndarray) -> None:
    sent = _dtype_of(array)
    if sent != dtype_name(spec.dtype):
        raise invalid_argument(
            f"input '{spec.alias}' has dtype {sent}, but signature '{key}' expects {dtype_name(spec.dtype)}"
        )


def _check_shape(key: str, spec: InputSpec, array: np.ndarray) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise invalid_argument(
            f"input '{spec.alias}' has shape {list(array.shape)} (rank {array.ndim}), but signature "
            f"'{key}' expects rank {len(spec.shape)}: {list(spec.shape)}"
        )
    for axis, (sent, wanted) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if wanted >= 0 and sent != wanted:
            raise invalid_argument(
                f"input '{spec.alias}' has shape {list(array.shape)}, but signature '{key}' expects "
                f"{list(spec.shape)} (dimension {axis} must be {wanted})"
            )


class Signature:
    """A SignatureDef and the function that computes it."""

    def __init__(self, key: str, definition: pb.SignatureDef, function: Any) -> None:
        self.key = key
        self.definition = definition
        self.function = function
        self.inputs = _input_specs(definition)
        self.output_names = tuple(sorted(definition.outputs))

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        sent, wanted = set(inputs), set(self.inputs)
        if sent != wanted:
            raise invalid_argument(
                f"inputs do not match signature '{self.key}': sent {_join(sent)}, expected {_join(wanted)}. "
                f"Sent extra: {_join(sent - wanted)}. Missing but required: {_join(wanted - sent)}."
            )
        for alias, array in inputs.items():
            _check_dtype(self.key, self.inputs[alias], array)
            _check_shape(self.key, self.inputs[alias], array)

    def select_outputs(self, output_filter: Sequence[str]) -> list[str]:
        """The outputs to return: all of them, or the filter's, each once and known."""
        if not output_filter:
            return list(self.output_names)
        chosen: list[str] = []
        for alias in output_filter:
            if alias not in self.definition.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature '{self.key}': {alias}. "
                    f"Outputs expected to be in the set {_join(self.output_names)}."
                )
            if alias in chosen:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            chosen.append(alias)
        return chosen

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        tensors = {alias: tf.convert_to_tensor(array) for alias, array in inputs.items()}
        try:
            result = self.function(**tensors)
        except tf.errors.OpError as error:
            raise ServingError(status_code_from_number(error.error_code), error.message) from None
        except (TypeError, ValueError) as error:
            raise invalid_argument(f"signature '{self.key}' rejected the inputs: {error}") from None
        return {alias: result[alias].numpy() for alias in outputs}


class Servable:
    """One version of one model, loaded and ready."""

    def __init__(self, name: str, version: int, path: Path, signature_defs: pb.SignatureDefMap, loaded: Any) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = signature_defs
        # Keep the loaded object: its functions hold references into it.
        self._loaded = loaded
        self.signatures = {
            key: Signature(key, signature_defs.signature_def[key], function)
            for key, function in loaded.signatures.items()
            if key in signature_defs.signature_def
        }

    def signature(self, key: str) -> Signature:
        key = key or DEFAULT_SIGNATURE
        try:
            return self.signatures[key]
        except KeyError:
            # TF Serving's code and words for a missing signature (predict_util.cc).
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.'
            ) from None

    def predict(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Check and run; returns the signature key used and the chosen outputs."""
        signature = self.signature(signature_name)
        signature.check_inputs(inputs)
        outputs = signature.select_outputs(output_filter)
        return signature.key, signature.run(inputs, outputs)


def read_signature_defs(path: Path) -> pb.SignatureDefMap:
    """The serving MetaGraph's SignatureDefs, as GetModelMetadata returns them.

    TensorFlow's SignatureDef and ours share field numbers, so the bytes carry over; fields
    ours does not declare (sparse encodings, defaults) are dropped.
    """
    saved_model = saved_model_pb2.SavedModel()
    if (path / SAVED_MODEL_FILE).is_file():
        saved_model.ParseFromString((path / SAVED_MODEL_FILE).read_bytes())
    else:  # the text form, which TensorFlow loads too
        text_format.Parse((path / SAVED_MODEL_TEXT_FILE).read_text(), saved_model)
    meta_graphs = [graph for graph in saved_model.meta_graphs if "serve" in graph.meta_info_def.tags]
    if not meta_graphs:
        raise ValueError(f"{path} has no MetaGraph tagged 'serve'")
    signature_defs = pb.SignatureDefMap()
    for key, definition in meta_graphs[0].signature_def.items():
        ours = pb.SignatureDef.FromString(definition.SerializeToString())
        ours.DiscardUnknownFields()
        signature_defs.signature_def[key].CopyFrom(ours)
    return signature_defs


def load_servable(name: str, version: int, path: Path) -> Servable:
    """Load ``path`` (a SavedModel folder) as version ``version`` of model ``name``."""
    signature_defs = read_signature_defs(path)
    loaded = tf.saved_model.load(str(path), tags=["serve"])
    return Servable(name, version, path, signature_defs, loaded)
