"""What every party of one SecAgg round must agree on, and the SecAgg+ neighbour graph.

The graph (Bell et al., CCS 2020, §3): instead of every device masking with every other one
(O(n) keys, shares and mask expansions per device, O(n²) for the aggregator), each device masks
with the ``degree`` neighbours it has in a random Harary graph — node i is joined to the
``degree / 2`` nodes on either side of it in a random cyclic order — and secret-shares its
secrets among those neighbours only. A degree of O(log n) keeps, with overwhelming probability,
every honest device's neighbourhood mostly honest and alive. :class:`GraphParams` derives the
degree from the dropout rate to tolerate: at 30 % dropout and a one-in-a-million chance of an
aborted round it is the complete graph up to ~200 devices and 204 for 500 devices; at 10 % it
is 34 for 100 devices and 38 for 1,000.

The cyclic order comes from a seed the aggregator publishes in the round announcement, so any
device can recompute its own neighbourhood from the list of devices that advertised keys.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedbeat.broker.secagg.ring import check_bits

MAX_DEGREE = 510
MAX_DIM = 1 << 24


@dataclass(frozen=True)
class RoundContext:
    """Binds every key, share and mask of a round to (fleet, round) and to the vector shape."""

    fleet: str
    round_id: int
    dim: int
    bits: int

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if not 0 < self.dim <= MAX_DIM:
            raise ValueError(f"vector length must be between 1 and {MAX_DIM}")

    def label(self, purpose: str) -> bytes:
        """HKDF ``info`` for ``purpose``: a key derived for one round never serves another."""
        return (f"fedbeat/v1/secagg/{purpose}\x00{self.fleet}\x00{self.round_id}\x00"
                f"{self.dim}\x00{self.bits}").encode()


@dataclass(frozen=True)
class GraphParams:
    """Shape of the neighbour graph and the reconstruction threshold inside a neighbourhood.

    The degree is the smallest even one for which, if each device independently drops out with
    probability ``dropout_tolerance`` anywhere in the round, the chance that some neighbourhood
    keeps fewer than ``threshold`` living members (and so the round must abort) is at most
    ``failure_probability`` (exact binomial tail, union bound over the n neighbourhoods).
    """

    degree: int | None = None         # None: derived from the tolerance below
    threshold_fraction: float = 0.5   # shares needed = floor(fraction * degree) + 1
    dropout_tolerance: float = 0.3
    failure_probability: float = 1e-6

    def __post_init__(self) -> None:
        if self.degree is not None and not 2 <= self.degree <= MAX_DEGREE:
            raise ValueError(f"degree must be between 2 and {MAX_DEGREE}")
        if not 0.5 <= self.threshold_fraction < 1.0:
            raise ValueError("threshold_fraction must be in [0.5, 1): a strict majority of a "
                             "neighbourhood at least")
        if not 0.0 <= self.dropout_tolerance < 1.0 - self.threshold_fraction:
            raise ValueError("dropout_tolerance must be below 1 - threshold_fraction: more "
                             "dropouts than that can never leave a threshold alive")
        if not 0.0 < self.failure_probability < 1.0:
            raise ValueError("failure_probability must be in (0, 1)")

    def degree_for(self, n: int) -> int:
        """The even degree used for ``n`` devices, capped at ``n - 1`` (the complete graph)."""
        if n < 2:
            return 0
        if self.degree is not None:
            return min(n - 1, self.degree + self.degree % 2)
        degree = 2
        while degree < min(n - 1, MAX_DEGREE) and n * self._abort_chance(degree) > \
                self.failure_probability:
            degree += 2
        return min(n - 1, degree)

    def _abort_chance(self, degree: int) -> float:
        alive = 1.0 - self.dropout_tolerance
        return sum(math.comb(degree, i) * alive**i * self.dropout_tolerance**(degree - i)
                   for i in range(self.threshold_for(degree)))

    def threshold_for(self, neighbours: int) -> int:
        """Shares needed to reconstruct a secret shared among ``neighbours`` holders."""
        return min(neighbours, math.floor(self.threshold_fraction * neighbours) + 1)


DEFAULT_GRAPH = GraphParams()


def neighbour_graph(devices: Sequence[str], degree: int, seed: bytes) -> dict[str, list[str]]:
    """Each device's neighbours (sorted) in the seeded random Harary graph over ``devices``.

    ``devices`` must be sorted and distinct; the result is symmetric. With ``degree`` ≥ n - 1
    every device neighbours every other one (plain SecAgg).
    """
    n = len(devices)
    if list(devices) != sorted(set(devices)):
        raise ValueError("devices must be sorted and distinct")
    if n < 2:
        return {device: [] for device in devices}
    if degree >= n - 1:
        return {device: [d for d in devices if d != device] for device in devices}
    rng = np.random.default_rng(np.frombuffer(hashlib.sha256(seed).digest(), dtype=np.uint32))
    order = [devices[i] for i in rng.permutation(n)]
    half = degree // 2
    graph: dict[str, set[str]] = {device: set() for device in devices}
    for position, device in enumerate(order):
        for step in range(1, half + 1):
            other = order[(position + step) % n]
            graph[device].add(other)
            graph[other].add(device)
    return {device: sorted(neighbours) for device, neighbours in graph.items()}
