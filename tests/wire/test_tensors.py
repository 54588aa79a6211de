"""Tensor wire format: lossless f32, bounded error for f16/i8/top-k, and strict decoding."""

from __future__ import annotations

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.tensors import Float16, Float32, Int8, TopK, decode_tensors, encode_tensors

RNG = np.random.default_rng(7)
TENSORS = {"conv.weight": RNG.normal(size=(8, 1, 7)).astype(np.float32),
           "conv.bias": RNG.normal(size=(8,)).astype(np.float32),
           "scalar": np.float32(0.5).reshape(())}
SHAPES = {name: array.shape for name, array in TENSORS.items()}


def round_trip(tensors: dict[str, np.ndarray], compressor: object) -> dict[str, np.ndarray]:
    wire = cbor2.loads(cbor2.dumps(encode_tensors(tensors, compressor)))  # type: ignore[arg-type]
    return decode_tensors(wire, max_elements=10_000)


def test_float32_is_lossless_and_keeps_names_and_shapes() -> None:
    out = round_trip(TENSORS, Float32())
    assert list(out) == list(TENSORS)
    for name, array in TENSORS.items():
        assert out[name].dtype == np.float32
        np.testing.assert_array_equal(out[name], array)


@pytest.mark.parametrize(("compressor", "bound"), [
    (Float16(), lambda x: np.abs(x) * 2**-11 + 1e-7),
    (Int8(), lambda x: np.full_like(x, np.abs(x).max() / 254 * 1.0001)),
])
def test_lossy_codecs_stay_within_their_error_bound(compressor: object, bound: object) -> None:
    out = round_trip(TENSORS, compressor)
    for name, array in TENSORS.items():
        assert np.all(np.abs(out[name] - array) <= bound(array))  # type: ignore[operator]


@given(hnp.arrays(np.float32, st.integers(1, 300),
                  elements=st.floats(-1e3, 1e3, width=32)),
       st.floats(0.01, 1.0))
@settings(max_examples=200, deadline=None)
def test_top_k_keeps_exactly_the_largest_entries(values: np.ndarray, fraction: float) -> None:
    out = round_trip({"w": values}, TopK(fraction))["w"]
    keep = max(1, int(np.ceil(fraction * values.size)))
    kept = np.flatnonzero(out) if np.any(out) else np.array([], dtype=int)
    assert kept.size <= keep
    threshold = np.sort(np.abs(values))[-keep]
    # Everything kept is at least the k-th largest magnitude, and kept values are exact.
    assert np.all(np.abs(values[kept]) >= threshold)
    np.testing.assert_array_equal(out[kept], values[kept])
    assert np.all(np.abs(values[np.abs(out) == 0]) <= threshold)


def test_sparse_int8_is_smaller_than_dense_float32() -> None:
    big = {"w": RNG.normal(size=10_000).astype(np.float32)}
    dense = len(cbor2.dumps(encode_tensors(big, Float32())))
    sparse = len(cbor2.dumps(encode_tensors(big, TopK(0.1, Int8()))))
    assert sparse < dense * 0.15


def wire_of(**overrides: object) -> list[dict[str, object]]:
    item: dict[str, object] = {"name": "w", "shape": [2, 2], "dtype": "f32",
                               "data": np.ones(4, "<f4").tobytes()}
    item.update(overrides)
    return [{k: v for k, v in item.items() if v is not None}]


@pytest.mark.parametrize("overrides", [
    {"dtype": "f64"}, {"shape": [2, 3]}, {"shape": [-1, 4]}, {"shape": [2, True]},
    {"shape": [1] * 9}, {"data": b"\x00" * 15}, {"name": ""}, {"name": "x" * 300},
    {"data": np.array([1, np.nan, 1, 1], "<f4").tobytes()},
    {"data": np.array([1, np.inf, 1, 1], "<f4").tobytes()},
    {"dtype": "i8", "data": b"\x01" * 4},                      # i8 without scale
    {"dtype": "i8", "data": b"\x01" * 4, "scale": -1.0},
    {"dtype": "i8", "data": b"\x01" * 4, "scale": float("nan")},
    {"scale": 1.0},                                            # scale on f32
    {"extra": 1},
    {"data": np.ones(2, "<f4").tobytes(), "index": np.array([3, 1], "<u4").tobytes()},
    {"data": np.ones(2, "<f4").tobytes(), "index": np.array([1, 1], "<u4").tobytes()},
    {"data": np.ones(2, "<f4").tobytes(), "index": np.array([0, 4], "<u4").tobytes()},
    {"data": np.ones(2, "<f4").tobytes(), "index": np.array([0], "<u4").tobytes()},
])
def test_invalid_tensors_are_refused_with_a_reason(overrides: dict[str, object]) -> None:
    with pytest.raises(Rejected) as excinfo:
        decode_tensors(wire_of(**overrides), max_elements=100)
    assert excinfo.value.reason in (RejectReason.BAD_TENSOR, RejectReason.MALFORMED)


def test_element_budget_counts_all_tensors_and_sparse_expansion() -> None:
    with pytest.raises(Rejected, match="limit"):
        decode_tensors(wire_of(shape=[1000, 1000], data=np.ones(1, "<f4").tobytes(),
                               index=np.array([5], "<u4").tobytes()), max_elements=10_000)
    two = [*wire_of(), dict(wire_of()[0], name="v")]
    assert len(decode_tensors(two, max_elements=8)) == 2
    with pytest.raises(Rejected):
        decode_tensors(two, max_elements=7)


def test_expected_shapes_pin_names_and_allow_subsets_only_when_asked() -> None:
    wire = encode_tensors({"conv.bias": TENSORS["conv.bias"]}, Float32())
    with pytest.raises(Rejected, match="missing"):
        decode_tensors(wire, max_elements=1000, expected=SHAPES)
    assert list(decode_tensors(wire, max_elements=1000, expected=SHAPES, allow_subset=True)) \
        == ["conv.bias"]
    with pytest.raises(Rejected, match="not expected"):
        decode_tensors(encode_tensors({"other": np.zeros(8, np.float32)}, Float32()),
                       max_elements=1000, expected=SHAPES, allow_subset=True)
    duplicate = wire + wire
    with pytest.raises(Rejected, match="twice"):
        decode_tensors(duplicate, max_elements=1000)
