"""numpy <-> TensorProto: round trips, TF's encodings, and the errors a bad tensor gets."""

from __future__ import annotations

import numpy as np
import pytest

from framescale.modelserver.grpc_api import encode_as_fields
from framescale.tfserving import pb
from framescale.tfserving.codec import TensorCodecError, from_tensor_proto, to_tensor_proto

NUMERIC = [
    (np.float32, pb.DT_FLOAT),
    (np.float64, pb.DT_DOUBLE),
    (np.int32, pb.DT_INT32),
    (np.uint8, pb.DT_UINT8),
    (np.int16, pb.DT_INT16),
    (np.int8, pb.DT_INT8),
    (np.int64, pb.DT_INT64),
    (np.bool_, pb.DT_BOOL),
    (np.float16, pb.DT_HALF),
    (np.uint32, pb.DT_UINT32),
    (np.uint64, pb.DT_UINT64),
]


def sample(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype is np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 1000).astype(dtype)


@pytest.mark.parametrize(("dtype", "enum"), NUMERIC)
@pytest.mark.parametrize("shape", [(2, 3, 4), (5,), (), (0, 3)])
def test_numeric_round_trip_through_tensor_content(dtype: type, enum: int, shape: tuple[int, ...]) -> None:
    array = sample(dtype, shape)
    proto = to_tensor_proto(array)
    assert proto.dtype == enum
    assert [dim.size for dim in proto.tensor_shape.dim] == list(shape)
    assert proto.tensor_content == array.astype(array.dtype.newbyteorder("<")).tobytes()

    back = from_tensor_proto(pb.TensorProto.FromString(proto.SerializeToString()))
    assert back.dtype == array.dtype
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize(("dtype", "enum"), NUMERIC)
def test_numeric_round_trip_through_typed_fields(dtype: type, enum: int) -> None:
    array = sample(dtype, (3, 2))
    proto = pb.TensorProto()
    encode_as_fields(array, proto)
    assert proto.dtype == enum
    assert proto.tensor_content == b""
    back = from_tensor_proto(pb.TensorProto.FromString(proto.SerializeToString()))
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_big_endian_input_is_sent_little_endian() -> None:
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    proto = to_tensor_proto(array)
    assert proto.dtype == pb.DT_INT32
    assert proto.tensor_content == np.arange(6, dtype="<i4").tobytes()
    np.testing.assert_array_equal(from_tensor_proto(proto), array)


def test_strings_become_bytes() -> None:
    array = np.array([["a", "é"], ["", "long text"]])
    proto = to_tensor_proto(array)
    assert proto.dtype == pb.DT_STRING
    assert list(proto.string_val) == [b"a", "é".encode(), b"", b"long text"]
    back = from_tensor_proto(proto)
    assert back.dtype == object
    assert back.tolist() == [[b"a", "é".encode()], [b"", b"long text"]]


def test_binary_strings_round_trip() -> None:
    array = np.array([b"\x00\xff", b"jpeg"], dtype=object)
    assert from_tensor_proto(to_tensor_proto(array)).tolist() == [b"\x00\xff", b"jpeg"]


def test_python_scalars_and_lists() -> None:
    assert from_tensor_proto(to_tensor_proto(2.5)).tolist() == 2.5
    np.testing.assert_array_equal(from_tensor_proto(to_tensor_proto([[1, 2], [3, 4]])), [[1, 2], [3, 4]])


def test_single_value_stands_for_the_whole_shape() -> None:
    # TF's shorthand (make_tensor_proto of a constant): one value, repeated over the shape.
    proto = pb.TensorProto(dtype=pb.DT_FLOAT, float_val=[1.5])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    back = from_tensor_proto(proto)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, np.full((2, 3), 1.5, np.float32))

    strings = pb.TensorProto(dtype=pb.DT_STRING, string_val=[b"x"])
    strings.tensor_shape.dim.add(size=3)
    assert from_tensor_proto(strings).tolist() == [b"x", b"x", b"x"]


def test_uint8_values_in_int_val() -> None:
    proto = pb.TensorProto(dtype=pb.DT_UINT8, int_val=[0, 128, 255, 7])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    back = from_tensor_proto(proto)
    assert back.dtype == np.uint8
    assert back.tolist() == [[0, 128], [255, 7]]


def test_half_values_are_carried_as_bits() -> None:
    values = np.array([0.5, -2.0, 65504.0], np.float16)
    proto = pb.TensorProto(dtype=pb.DT_HALF, half_val=values.view(np.uint16).tolist())
    proto.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(from_tensor_proto(proto), values)


def test_wrong_byte_count_is_an_error() -> None:
    proto = to_tensor_proto(np.zeros((2, 3), np.float32))
    proto.tensor_content = proto.tensor_content[:-1]
    with pytest.raises(TensorCodecError, match=r"23 bytes; shape \[2, 3\] of DT_FLOAT needs 24"):
        from_tensor_proto(proto)


def test_wrong_value_count_is_an_error() -> None:
    proto = pb.TensorProto(dtype=pb.DT_INT32, int_val=[1, 2, 3])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(TensorCodecError, match=r"int_val has 3 values; shape \[2, 2\] needs 4"):
        from_tensor_proto(proto)


def test_unsupported_dtypes_are_errors_both_ways() -> None:
    with pytest.raises(TensorCodecError, match="complex"):
        to_tensor_proto(np.zeros(2, np.complex64))
    proto = pb.TensorProto()
    proto.dtype = 8  # type: ignore[assignment]  # DT_COMPLEX64 on the wire; not a dtype we decode
    proto.tensor_shape.dim.add(size=1)
    with pytest.raises(TensorCodecError, match="unsupported tensor dtype"):
        from_tensor_proto(proto)


def test_bad_shapes_are_errors() -> None:
    unknown_rank = pb.TensorProto(dtype=pb.DT_FLOAT)
    unknown_rank.tensor_shape.unknown_rank = True
    with pytest.raises(TensorCodecError, match="unknown rank"):
        from_tensor_proto(unknown_rank)
    negative = pb.TensorProto(dtype=pb.DT_FLOAT)
    negative.tensor_shape.dim.add(size=-1)
    with pytest.raises(TensorCodecError, match="negative"):
        from_tensor_proto(negative)
