"""The only module that calls ``cryptography``'s hazmat layer on the message path.

Two primitives, both from RFCs with independent implementations, so a device written in another
language can interoperate:

* **Ed25519** (RFC 8032) signatures over a COSE ``Sig_structure`` (RFC 9052 §4.4).
* **HPKE** (RFC 9180) base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
  ChaCha20-Poly1305 to seal an update to the aggregator. ``cryptography`` exposes single-shot
  HPKE whose only context input is ``info``; we put the SHA-256 of the signed envelope header
  there, so a ciphertext opens only under the header (fleet, sender, round, nonce, …) it was
  sealed for. Re-signing someone else's ciphertext under another identity therefore fails to
  open.

Every failure raises :class:`~fedbeat.broker.errors.Rejected` with a reason; nothing returns
``False``.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedbeat.broker.errors import Rejected, RejectReason

SIGNATURE_BYTES = 64
HPKE_SUITE_NAME = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305"
HPKE_ENC_BYTES = 32     # the encapsulated ephemeral X25519 public key
HPKE_TAG_BYTES = 16     # Poly1305 tag
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_SEAL_INFO_LABEL = b"fedbeat/v1/seal\x00"


def sign(message: bytes, key: Ed25519PrivateKey) -> bytes:
    return key.sign(message)


def verify(signature: bytes, message: bytes, key: Ed25519PublicKey) -> None:
    """Return if ``signature`` is ``key``'s over ``message``; raise ``Rejected`` otherwise."""
    if len(signature) != SIGNATURE_BYTES:
        raise Rejected(RejectReason.BAD_SIGNATURE, "signature has the wrong length")
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise Rejected(RejectReason.BAD_SIGNATURE, "signature does not verify") from None


def seal_info(header_bytes: bytes) -> bytes:
    """HPKE ``info`` binding a sealed payload to the exact signed header bytes."""
    return _SEAL_INFO_LABEL + hashlib.sha256(header_bytes).digest()


def seal(plaintext: bytes, recipient: X25519PublicKey, header_bytes: bytes) -> bytes:
    """``enc || ciphertext`` for ``recipient``, bound to ``header_bytes``; fresh ephemeral key."""
    return _SUITE.encrypt(plaintext, recipient, info=seal_info(header_bytes))


def open_sealed(sealed: bytes, key: X25519PrivateKey, header_bytes: bytes) -> bytes:
    """Inverse of :func:`seal`; wrong key, other header or any flipped bit → DECRYPT_FAILED."""
    if len(sealed) < HPKE_ENC_BYTES + HPKE_TAG_BYTES:
        raise Rejected(RejectReason.DECRYPT_FAILED, "sealed payload too short")
    try:
        return _SUITE.decrypt(sealed, key, info=seal_info(header_bytes))
    except (InvalidTag, ValueError):
        raise Rejected(RejectReason.DECRYPT_FAILED, "sealed payload does not open") from None
