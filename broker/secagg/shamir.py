"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

SecAgg shares two secrets per device and round: the seed of its self-mask and its mask-agreement
private key (Bonawitz et al. 2017, §4). Both are 256-bit strings, so a field larger than 2^256
holds either one whole; 2^256 + 297 is the smallest prime above 2^256, which keeps a share at
33 bytes (each neighbour costs a device two of them), and Python's integers make the
arithmetic exact. A share is the pair (x, f(x)); x is the holder's 1-based index
in the round, never 0 (f(0) is the secret).

Any ``threshold`` shares reconstruct the secret; ``threshold - 1`` shares are independent of it
(the polynomial's other coefficients are uniform on the field), which is the whole of SecAgg's
dropout tolerance and of its privacy against a few colluding neighbours.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**256 + 297
SECRET_BYTES = 32
SHARE_BYTES = 33            # one field element, big-endian


class ShareError(ValueError):
    """Shares that cannot reconstruct a secret (too few, duplicate x, or out of the field)."""


def split(secret: bytes, xs: Sequence[int], threshold: int) -> dict[int, int]:
    """Shares of ``secret`` for the holders at ``xs``; any ``threshold`` of them reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs):
        raise ValueError("threshold must be between 1 and the number of holders")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and non-zero")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x) for x in xs}


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):     # Horner
        value = (value * x + coefficient) % PRIME
    return value


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (Lagrange interpolation at 0).

    Uses exactly ``threshold`` of them: more add nothing for an honest sender, and an aggregator
    that is honest-but-curious receives only honest shares (docs/protocol.md §10.5).
    """
    if len(shares) < threshold:
        raise ShareError(f"{len(shares)} shares, {threshold} needed")
    points = sorted(shares.items())[:threshold]
    if any(not 0 < x < PRIME or not 0 <= y < PRIME for x, y in points):
        raise ShareError("share outside the field")
    xs = [x for x, _ in points]
    # Share points are small integers (device indices), so the Lagrange products are exact
    # small-integer arithmetic, reduced into the field once.
    everything = 1
    for x in xs:
        everything *= -x
    numerators, denominators = [], []
    for i, x_i in enumerate(xs):
        denominator = 1
        for j, x_j in enumerate(xs):
            if i != j:
                denominator *= x_i - x_j
        numerators.append(everything // -x_i % PRIME)
        denominators.append(denominator % PRIME)
    inverses = _batch_inverse(denominators)
    secret = sum(y * n * d for (_, y), n, d in zip(points, numerators, inverses,
                                                  strict=True)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ShareError("shares do not belong to one secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Modular inverses of all ``values`` with one exponentiation (Montgomery's trick): the
    unmasking stage reconstructs hundreds of secrets, and inversion dominated it."""
    prefix = [1]
    for value in values:
        prefix.append(prefix[-1] * value % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inverse % PRIME
        inverse = inverse * values[i] % PRIME
    return out


def share_to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ShareError(f"a share is {SHARE_BYTES} bytes")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ShareError("share outside the field")
    return value
