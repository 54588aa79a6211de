"""Named model parameters and their stable flat-vector form.

Updates travel as one float32 vector; the :class:`ParamLayout` says which slice is which tensor.
Its :meth:`ParamLayout.digest` (SHA-256 over names and shapes) lets a receiver refuse a vector
laid out for another architecture instead of silently mixing tensors. This module imports numpy
only, so devices can use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedbeat.models.zoo import Architecture


class ParamError(ValueError):
    """Parameters that do not fit their layout (names, shapes, dtype, values)."""


@dataclass(frozen=True)
class ParamLayout:
    """Ordered (name, shape) pairs; the order is the flat-vector order."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def from_architecture(cls, arch: Architecture) -> ParamLayout:
        return cls(tuple((name, spec.shape) for name, spec in arch.param_specs()))

    @classmethod
    def from_json(cls, data: object) -> ParamLayout:
        """Parse the manifest form ``[[name, [dims...]], ...]``, validating every field."""
        if not isinstance(data, list) or not data:
            raise ParamError("parameter layout must be a non-empty list")
        entries = []
        for item in data:
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                    or not isinstance(item[1], list)
                    or not all(isinstance(d, int) and d > 0 for d in item[1])):
                raise ParamError(f"bad parameter layout entry: {item!r}")
            entries.append((item[0], tuple(item[1])))
        return cls(tuple(entries))

    def to_json(self) -> list[list[object]]:
        return [[name, list(shape)] for name, shape in self.entries]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.entries)

    @property
    def size(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.entries)

    def digest(self) -> str:
        """SHA-256 hex digest of the layout; equal digests mean interchangeable vectors."""
        return hashlib.sha256(json.dumps(self.to_json()).encode()).hexdigest()

    def slices(self) -> Iterator[tuple[str, tuple[int, ...], slice]]:
        offset = 0
        for name, shape in self.entries:
            size = int(np.prod(shape))
            yield name, shape, slice(offset, offset + size)
            offset += size


class Params(Mapping[str, np.ndarray]):
    """An immutable-by-convention mapping of parameter name to float32 array, in layout order."""

    def __init__(self, layout: ParamLayout, tensors: Mapping[str, np.ndarray]) -> None:
        expected = set(layout.names)
        if set(tensors) != expected:
            missing = sorted(expected - set(tensors))
            extra = sorted(set(tensors) - expected)
            raise ParamError(f"parameter names do not match the layout "
                             f"(missing {missing}, unexpected {extra})")
        self.layout = layout
        self._tensors: dict[str, np.ndarray] = {}
        for name, shape in layout.entries:
            value = np.asarray(tensors[name])
            if value.shape != shape:
                raise ParamError(f"{name}: shape {value.shape}, layout says {shape}")
            self._tensors[name] = np.ascontiguousarray(value, dtype=np.float32)

    @classmethod
    def initial(cls, arch: Architecture, *, seed: int) -> Params:
        """Deterministic initial parameters: the same seed gives the same bits on every platform.

        Each tensor draws from its own PCG64 stream keyed by (seed, index), so adding a layer at
        the end does not change the initialisation of the layers before it.
        """
        tensors = {}
        for index, (name, spec) in enumerate(arch.param_specs()):
            rng = np.random.Generator(np.random.PCG64([seed, index]))
            tensors[name] = spec.initialise(rng)
        return cls(ParamLayout.from_architecture(arch), tensors)

    @classmethod
    def from_flat(cls, layout: ParamLayout, vector: np.ndarray) -> Params:
        """Split a flat vector into named tensors; refuses bad length, dtype or non-finite data."""
        vector = np.asarray(vector)
        if vector.ndim != 1 or vector.size != layout.size:
            raise ParamError(f"flat vector has shape {vector.shape}, layout needs ({layout.size},)")
        if not np.issubdtype(vector.dtype, np.floating):
            raise ParamError(f"flat vector dtype {vector.dtype} is not floating point")
        if not np.all(np.isfinite(vector)):
            raise ParamError("flat vector contains NaN or infinity")
        vector = vector.astype(np.float32, copy=False)
        return cls(layout, {name: vector[s].reshape(shape) for name, shape, s in layout.slices()})

    def to_flat(self) -> np.ndarray:
        return np.concatenate([self._tensors[name].ravel() for name in self.layout.names])

    def save(self, path: Path) -> None:
        """Write the flat vector as raw little-endian float32 (portable, no pickle)."""
        path.write_bytes(self.to_flat().astype("<f4").tobytes())

    @classmethod
    def load(cls, layout: ParamLayout, path: Path) -> Params:
        raw = path.read_bytes()
        if len(raw) != 4 * layout.size:
            raise ParamError(f"{path.name}: {len(raw)} bytes, layout needs {4 * layout.size}")
        return cls.from_flat(layout, np.frombuffer(raw, dtype="<f4").astype(np.float32))

    def __getitem__(self, name: str) -> np.ndarray:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layout.names)

    def __len__(self) -> int:
        return len(self._tensors)

    def __sub__(self, other: Params) -> Params:
        if other.layout != self.layout:
            raise ParamError("cannot subtract parameters of different layouts")
        return Params(self.layout, {n: self[n] - other[n] for n in self.layout.names})
