"""Shared by the secure-aggregation tests. Imported as ``secagg_testing`` (``tests`` is on
``pythonpath``)."""

from __future__ import annotations

import numpy as np


class FixedRounding:
    """A deterministic source for ``DdgEncoder`` in rounds without noise: rounds every value
    the same way (uniforms all 0.5), so tests can bound the rounding error exactly."""

    def uniform(self, size: int) -> np.ndarray:
        return np.full(size, 0.5)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return np.zeros(shape)
