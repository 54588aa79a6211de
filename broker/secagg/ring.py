"""Vectors in the ring Z_(2^bits), their masks, and their wire packing.

Masked inputs only hide anything if every mask is uniform on the same finite ring the inputs
live in, and only cancel exactly if all arithmetic wraps the same way on every device. Values are
``uint32`` arrays whose low ``bits`` bits are the ring element (``bits`` ≤ 32): numpy's uint32
arithmetic wraps modulo 2^32, and 2^bits divides 2^32, so masking with ``& (2^bits - 1)`` after
any sum gives the same answer as exact modular arithmetic.

Masks come from ChaCha20 (RFC 8439) keyed by a 32-byte seed: a PRG every device has in
``cryptography``, fast enough that expanding a mask costs less than encrypting the update.
On the wire a vector takes the fewest whole bytes per value that hold ``bits`` (3 for 20 bits).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

MAX_BITS = 32
SEED_BYTES = 32
_ZERO_NONCE = bytes(16)   # each seed expands exactly one mask, so a fixed nonce is safe


def check_bits(bits: int) -> None:
    if not 2 <= bits <= MAX_BITS:
        raise ValueError(f"ring bits must be between 2 and {MAX_BITS}")


def modulus_mask(bits: int) -> np.uint32:
    return np.uint32((1 << bits) - 1)


def expand(seed: bytes, dim: int, bits: int) -> np.ndarray:
    """``dim`` ring elements, uniform on Z_(2^bits), determined by ``seed``."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seeds are {SEED_BYTES} bytes")
    encryptor = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(bytes(4 * dim)), dtype="<u4").astype(np.uint32)
    words &= modulus_mask(bits)
    return words


def add(total: np.ndarray, other: np.ndarray, bits: int) -> None:
    """``total += other`` in the ring, in place."""
    np.add(total, other, out=total)
    total &= modulus_mask(bits)


def subtract(total: np.ndarray, other: np.ndarray, bits: int) -> None:
    """``total -= other`` in the ring, in place."""
    np.subtract(total, other, out=total)
    total &= modulus_mask(bits)


def bytes_per_value(bits: int) -> int:
    check_bits(bits)
    return (bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    """Little-endian, ``bytes_per_value(bits)`` bytes per value."""
    width = bytes_per_value(bits)
    raw = np.ascontiguousarray(values, dtype="<u4").view(np.uint8).reshape(-1, 4)
    return raw[:, :width].tobytes()


def unpack(data: bytes, dim: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack`; raises ``ValueError`` on a wrong length or an out-of-ring value."""
    width = bytes_per_value(bits)
    if len(data) != dim * width:
        raise ValueError(f"expected {dim * width} bytes for {dim} values of {bits} bits")
    raw = np.zeros((dim, 4), dtype=np.uint8)
    raw[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(dim, width)
    values = raw.view("<u4").reshape(dim).astype(np.uint32)
    if np.any(values > modulus_mask(bits)):
        raise ValueError(f"value outside Z_(2^{bits})")
    return values


def centered(values: np.ndarray, bits: int) -> np.ndarray:
    """Ring elements as signed integers in [-2^(bits-1), 2^(bits-1)) (int64)."""
    signed: np.ndarray = values.astype(np.int64)
    half = 1 << (bits - 1)
    signed[signed >= half] -= 1 << bits
    return signed


def from_signed(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers reduced into the ring (the "modular clipping" of Kairouz et al.)."""
    reduced: np.ndarray = (np.asarray(values, dtype=np.int64) & ((1 << bits) - 1)
                           ).astype(np.uint32)
    return reduced


def add_pair_mask(total: np.ndarray, pair: np.ndarray, device: str, neighbour: str,
                  bits: int, *, remove: bool = False) -> None:
    """Apply the mask ``device`` shares with ``neighbour``: the smaller id adds it, the larger
    subtracts it, so the two cancel in the sum; ``remove`` takes ``device``'s use away again
    (the aggregator, for a neighbour that dropped out after masking began)."""
    if (device < neighbour) != remove:
        add(total, pair, bits)
    else:
        subtract(total, pair, bits)
