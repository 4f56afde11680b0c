"""numpy arrays to and from TensorProto, as TF Serving encodes them.

Numeric tensors travel as raw little-endian ``tensor_content`` (one memory copy, no
per-element encoding); decoding also accepts the typed ``*_val`` fields, including TF's
shorthand where a single value stands for a whole tensor of that shape.
"""

from __future__ import annotations

import numpy as np

from framescale.tfserving import tfserving_pb2 as pb


class TensorCodecError(ValueError):
    """A tensor could not be encoded or decoded; the message says which and why."""


_NUMPY_TO_DTYPE: dict[np.dtype, int] = {
    np.dtype(np.float32): pb.DT_FLOAT,
    np.dtype(np.float64): pb.DT_DOUBLE,
    np.dtype(np.int32): pb.DT_INT32,
    np.dtype(np.uint8): pb.DT_UINT8,
    np.dtype(np.int16): pb.DT_INT16,
    np.dtype(np.int8): pb.DT_INT8,
    np.dtype(np.int64): pb.DT_INT64,
    np.dtype(np.bool_): pb.DT_BOOL,
    np.dtype(np.float16): pb.DT_HALF,
    np.dtype(np.uint32): pb.DT_UINT32,
    np.dtype(np.uint64): pb.DT_UINT64,
}
_DTYPE_TO_NUMPY: dict[int, np.dtype] = {value: key for key, value in _NUMPY_TO_DTYPE.items()}

# Which repeated field carries values of each dtype when tensor_content is empty.
VALUE_FIELDS: dict[int, str] = {
    pb.DT_FLOAT: "float_val",
    pb.DT_DOUBLE: "double_val",
    pb.DT_INT32: "int_val",
    pb.DT_UINT8: "int_val",
    pb.DT_INT16: "int_val",
    pb.DT_INT8: "int_val",
    pb.DT_INT64: "int64_val",
    pb.DT_BOOL: "bool_val",
    pb.DT_HALF: "half_val",
    pb.DT_UINT32: "uint32_val",
    pb.DT_UINT64: "uint64_val",
}


def dtype_name(dtype: int) -> str:
    try:
        return str(pb.DataType.Name(dtype))  # type: ignore[arg-type]
    except ValueError:
        return f"DataType({dtype})"


def numpy_dtype(dtype: int) -> np.dtype:
    try:
        return _DTYPE_TO_NUMPY[dtype]
    except KeyError:
        raise TensorCodecError(f"unsupported tensor dtype {dtype_name(dtype)}") from None


def to_tensor_proto(array: np.ndarray | list | float | int, out: pb.TensorProto | None = None) -> pb.TensorProto:
    """Encode ``array`` (numeric, or bytes/str objects) as a TensorProto."""
    array = np.asarray(array)
    proto = out if out is not None else pb.TensorProto()
    proto.tensor_shape.dim.extend(pb.TensorShapeProto.Dim(size=int(size)) for size in array.shape)
    if array.dtype.kind in ("S", "U", "O"):
        proto.dtype = pb.DT_STRING
        proto.string_val.extend(
            item if isinstance(item, bytes) else str(item).encode() for item in array.reshape(-1).tolist()
        )
        return proto
    dtype = _NUMPY_TO_DTYPE.get(array.dtype.newbyteorder("="))
    if dtype is None:
        raise TensorCodecError(f"cannot encode numpy dtype {array.dtype} as a TF Serving tensor")
    proto.dtype = dtype  # type: ignore[assignment]
    proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto


def tensor_shape(proto: pb.TensorProto) -> tuple[int, ...]:
    if proto.tensor_shape.unknown_rank:
        raise TensorCodecError("tensor has unknown rank")
    return tuple(int(dim.size) for dim in proto.tensor_shape.dim)


def from_tensor_proto(proto: pb.TensorProto) -> np.ndarray:
    """Decode a TensorProto to a numpy array (strings become an object array of bytes)."""
    shape = tensor_shape(proto)
    if any(size < 0 for size in shape):
        raise TensorCodecError(f"tensor shape {list(shape)} has a negative dimension")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if proto.dtype == pb.DT_STRING:
        return _fill(np.array(list(proto.string_val), dtype=object), shape, count, "string_val")
    dtype = numpy_dtype(proto.dtype)
    if proto.tensor_content:
        expected = count * dtype.itemsize
        if len(proto.tensor_content) != expected:
            raise TensorCodecError(
                f"tensor_content has {len(proto.tensor_content)} bytes; shape {list(shape)} of "
                f"{dtype_name(proto.dtype)} needs {expected}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    field = VALUE_FIELDS[proto.dtype]
    raw = getattr(proto, field)
    if proto.dtype == pb.DT_HALF:
        typed = np.array(list(raw), dtype=np.uint16).view(np.float16)
    else:
        typed = np.array(list(raw), dtype=dtype)
    return _fill(typed, shape, count, field)


def _fill(values: np.ndarray, shape: tuple[int, ...], count: int, field: str) -> np.ndarray:
    if values.size == count:
        return values.reshape(shape)
    if values.size == 1:  # TF's shorthand: one value repeated over the whole shape
        return np.full(shape, values[0], dtype=values.dtype)
    if values.size == 0 and count == 0:
        return values.reshape(shape)
    raise TensorCodecError(f"{field} has {values.size} values; shape {list(shape)} needs {count}")
