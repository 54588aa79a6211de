"""Per-round keys of one device: agreement (X25519 + HKDF) and the share channel (AEAD).

Each device makes two fresh X25519 key pairs per round (Bonawitz et al. 2017, §4): the *cipher*
pair encrypts the secret shares it sends to each neighbour through the aggregator, so the
aggregator relays them without reading them; the *mask* pair agrees, with each neighbour, the
seed of their pairwise mask. The mask private key is itself secret-shared, so the survivors can
cancel the masks of a device that drops out after masking began. Fresh keys per round mean that
reconstructing a dropped device's key reveals nothing about any other round.

Every derived key is bound by HKDF ``info`` to the fleet, the round, the vector shape and, for
the share channel, to the direction (sender → recipient), so no ciphertext or seed can be
replayed into another round or reflected back to its sender.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.secagg.params import RoundContext

PUBLIC_KEY_BYTES = 32
_NONCE = bytes(12)     # each derived share key encrypts exactly one message


@dataclass(frozen=True)
class RoundKeys:
    """A device's two key pairs for one round."""

    cipher: X25519PrivateKey
    mask: X25519PrivateKey

    @classmethod
    def generate(cls) -> RoundKeys:
        return cls(X25519PrivateKey.generate(), X25519PrivateKey.generate())

    def public(self) -> tuple[bytes, bytes]:
        """(cipher public key, mask public key), 32 raw bytes each."""
        return (self.cipher.public_key().public_bytes_raw(),
                self.mask.public_key().public_bytes_raw())


def load_public(raw: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise Rejected(RejectReason.MALFORMED, "not an X25519 public key") from None


def exchange(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The raw X25519 shared secret; a low-order peer key is refused."""
    try:
        return private.exchange(load_public(peer_public))
    except ValueError:
        raise Rejected(RejectReason.MALFORMED, "peer key is of low order") from None


def check_not_low_order(*public_keys: bytes) -> None:
    """Refuse keys no agreement can use (low-order points give an all-zero secret), at the
    advertisement: let through, one such key would make every neighbour leave the round."""
    probe = X25519PrivateKey.generate()
    for raw in public_keys:
        exchange(probe, raw)


def _derive(shared: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def pair_seed(mask_key: X25519PrivateKey, peer_mask_public: bytes, context: RoundContext) -> bytes:
    """The seed both ends of an edge derive for their pairwise mask (symmetric in u and v)."""
    return _derive(exchange(mask_key, peer_mask_public), context.label("pair-mask"))


class ShareChannel:
    """The sealed channel between this device and one neighbour, both directions.

    One X25519 exchange serves both: each direction gets its own key (HKDF ``info`` names
    sender and recipient), so a ciphertext cannot be reflected back to its sender.
    """

    def __init__(self, cipher_key: X25519PrivateKey, peer_cipher_public: bytes,
                 context: RoundContext, me: str, peer: str) -> None:
        self._shared = exchange(cipher_key, peer_cipher_public)
        self._context = context
        self._me, self._peer = me, peer

    def _key(self, sender: str, recipient: str) -> tuple[ChaCha20Poly1305, bytes]:
        direction = f"\x00{sender}\x00{recipient}".encode()
        key = _derive(self._shared, self._context.label("share") + direction)
        return ChaCha20Poly1305(key), self._context.label("share-ad") + direction

    def seal(self, plaintext: bytes) -> bytes:
        aead, associated = self._key(self._me, self._peer)
        return aead.encrypt(_NONCE, plaintext, associated)

    def open(self, ciphertext: bytes) -> bytes:
        aead, associated = self._key(self._peer, self._me)
        try:
            return aead.decrypt(_NONCE, ciphertext, associated)
        except InvalidTag:
            raise Rejected(RejectReason.DECRYPT_FAILED, "share ciphertext does not open") from None
