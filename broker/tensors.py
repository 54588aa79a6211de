"""Named tensors on the wire, and the compressors that shrink an update before it is sealed.

One tensor is a CBOR map::

    {"name": tstr, "shape": [uint...], "dtype": "f32" | "f16" | "i8",
     "data": bstr, ? "scale": float (i8 only), ? "index": bstr (sparse only)}

``data`` holds little-endian values. ``i8`` values are multiplied by ``scale`` (symmetric,
per tensor). With ``index`` (little-endian uint32 flat positions, strictly increasing) the tensor
is sparse: ``data`` holds only those positions and every other value is zero (top-k).

Compressors all implement :class:`Compressor`, so the accuracy cost of each can be measured
against ``Float32`` in the same run. Decoding never trusts the sender: names, shapes, sizes,
indices and values are checked, and every problem is ``Rejected(BAD_TENSOR)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedbeat.broker import cbor
from fedbeat.broker.errors import Rejected, RejectReason

_WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    "f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "i8": np.dtype("i1")}
_INDEX_DTYPE = np.dtype("<u4")
_MAX_SCALE = float(np.finfo(np.float32).max) / 127.0   # so scale × int8 stays finite
MAX_NAME_CHARS = 256
MAX_DIMS = 8


class Compressor(Protocol):
    """Turns one float32 tensor into its wire map (see the module docstring)."""

    @property
    def name(self) -> str: ...

    def encode(self, array: np.ndarray) -> dict[str, Any]: ...


def _dense(array: np.ndarray, dtype: str) -> dict[str, Any]:
    values = np.ascontiguousarray(array, dtype=_WIRE_DTYPES[dtype])
    return {"dtype": dtype, "data": values.tobytes()}


def _int8(values: np.ndarray) -> dict[str, Any]:
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    quantised = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
    return {"dtype": "i8", "scale": scale, "data": quantised.tobytes()}


@dataclass(frozen=True)
class Float32:
    """Lossless: the reference every other compressor is measured against."""

    name: str = "f32"

    def encode(self, array: np.ndarray) -> dict[str, Any]:
        return _dense(array, "f32")


@dataclass(frozen=True)
class Float16:
    """Half the bytes; relative error about 1e-3, values beyond ±65504 saturate to inf."""

    name: str = "f16"

    def encode(self, array: np.ndarray) -> dict[str, Any]:
        return _dense(array, "f16")


@dataclass(frozen=True)
class Int8:
    """A quarter of the bytes: symmetric per-tensor scale ``max|x| / 127``, round to nearest."""

    name: str = "i8"

    def encode(self, array: np.ndarray) -> dict[str, Any]:
        return _int8(np.asarray(array, dtype=np.float32).ravel())


@dataclass(frozen=True)
class TopK:
    """Keep the ``fraction`` of entries largest in magnitude (at least one), values as ``inner``.

    Sparse tensors carry 4 bytes of index per kept value, so top-k pays off below about half.
    """

    fraction: float
    inner: Float32 | Float16 | Int8 = Float32()
    name: str = "topk"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"top-k fraction must be in (0, 1], got {self.fraction}")

    def encode(self, array: np.ndarray) -> dict[str, Any]:
        flat = np.asarray(array, dtype=np.float32).ravel()
        keep = max(1, math.ceil(self.fraction * flat.size)) if flat.size else 0
        index = np.sort(np.argpartition(np.abs(flat), flat.size - keep)[flat.size - keep:]
                        if keep else np.empty(0, dtype=np.int64))
        wire = self.inner.encode(flat[index])
        wire["index"] = index.astype(_INDEX_DTYPE).tobytes()
        return wire


COMPRESSIONS = "f32, f16, i8 or topk:FRACTION (e.g. topk:0.1)"


def compressor_from_name(spec: str) -> Compressor:
    """The compressor a round configuration names; :data:`COMPRESSIONS` lists the forms.
    Raises ``ValueError`` saying what is accepted."""
    dense: dict[str, Float32 | Float16 | Int8] = {"f32": Float32(), "f16": Float16(),
                                                  "i8": Int8()}
    if spec in dense:
        return dense[spec]
    kind, _, fraction = spec.partition(":")
    if kind == "topk":
        try:
            return TopK(float(fraction))
        except ValueError:
            pass
    raise ValueError(f"compression must be {COMPRESSIONS}, got {spec!r}")


def encode_tensors(tensors: Mapping[str, np.ndarray], compressor: Compressor) -> list[Any]:
    """Wire list for ``tensors`` in their given order, each compressed by ``compressor``."""
    out = []
    for name, array in tensors.items():
        wire = compressor.encode(np.asarray(array))
        wire["name"] = name
        wire["shape"] = list(np.shape(array))
        out.append(wire)
    return out


def _bad(detail: str) -> Rejected:
    return Rejected(RejectReason.BAD_TENSOR, detail)


def _decode_one(item: object, max_elements: int) -> tuple[str, np.ndarray]:
    fields = cbor.as_mapping(item, "tensor")
    if not set(fields) <= {"name", "shape", "dtype", "data", "scale", "index"}:
        raise _bad("tensor has unexpected fields")
    name = cbor.field(fields, "name", str, "tensor")
    if not 0 < len(name) <= MAX_NAME_CHARS:
        raise _bad("tensor name empty or too long")
    shape_items = cbor.as_sequence(cbor.field(fields, "shape", list, "tensor"), "shape")
    if len(shape_items) > MAX_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= max_elements
            for d in shape_items):
        raise _bad(f"tensor {name!r}: invalid shape")
    shape = tuple(int(d) for d in shape_items)
    size = math.prod(shape)
    if size > max_elements:
        raise _bad(f"tensor {name!r}: {size} elements, limit {max_elements}")
    dtype_name = cbor.field(fields, "dtype", str, "tensor")
    if dtype_name not in _WIRE_DTYPES:
        raise _bad(f"tensor {name!r}: unknown dtype")
    dtype = _WIRE_DTYPES[dtype_name]
    data = cbor.field(fields, "data", bytes, "tensor")
    if len(data) % dtype.itemsize:
        raise _bad(f"tensor {name!r}: data length is not a whole number of values")
    values = np.frombuffer(data, dtype=dtype).astype(np.float32)
    if dtype_name == "i8":
        scale = cbor.field(fields, "scale", float, "tensor")
        if not 0 < scale <= _MAX_SCALE:
            raise _bad(f"tensor {name!r}: scale must be positive and fit float32")
        values = values * np.float32(scale)
    elif "scale" in fields:
        raise _bad(f"tensor {name!r}: scale only belongs to i8")
    if "index" in fields:
        dense = _scatter(name, cbor.field(fields, "index", bytes, "tensor"), values, size)
    elif values.size != size:
        raise _bad(f"tensor {name!r}: {values.size} values for shape {shape}")
    else:
        dense = values
    if not np.all(np.isfinite(dense)):
        raise _bad(f"tensor {name!r}: non-finite values")
    return name, dense.reshape(shape)


def _scatter(name: str, index_bytes: bytes, values: np.ndarray, size: int) -> np.ndarray:
    if len(index_bytes) != values.size * _INDEX_DTYPE.itemsize:
        raise _bad(f"tensor {name!r}: index and data lengths differ")
    index = np.frombuffer(index_bytes, dtype=_INDEX_DTYPE).astype(np.int64)
    if index.size and (index[-1] >= size or np.any(np.diff(index) <= 0)):
        raise _bad(f"tensor {name!r}: indices must be increasing and inside the tensor")
    dense = np.zeros(size, dtype=np.float32)
    dense[index] = values
    return dense


def decode_tensors(items: object, *, max_elements: int,
                   expected: Mapping[str, tuple[int, ...]] | None = None,
                   allow_subset: bool = False) -> dict[str, np.ndarray]:
    """Float32 arrays by name from a wire list; ``expected`` pins names and shapes.

    With ``allow_subset`` a message may carry only some of the expected tensors (a wearable
    that trains just the classifier head); otherwise all of them must be present.

    ``max_elements`` bounds the total across all tensors, so a sparse message cannot expand
    into more memory than the caller budgeted.
    """
    budget = max_elements
    out: dict[str, np.ndarray] = {}
    for item in cbor.as_sequence(items, "tensors"):
        name, array = _decode_one(item, budget)
        budget -= array.size
        if name in out:
            raise _bad(f"tensor {name!r} appears twice")
        if expected is not None and expected.get(name) != array.shape:
            raise _bad(f"tensor {name!r}: not expected with shape {array.shape}")
        out[name] = array
    if expected is not None and not allow_subset and set(out) != set(expected):
        raise _bad(f"missing tensors: {sorted(set(expected) - set(out))}")
    return out
