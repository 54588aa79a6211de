"""Keys of one small fleet (aggregator and devices) and a key resolver over them."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedbeat.broker.envelope import Header
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.topics import AGGREGATOR_ID

FLEET = "ward-7"


@dataclass
class Fleet:
    """Private keys of an aggregator and two devices, and a key resolver over them."""

    aggregator_signing: Ed25519PrivateKey
    aggregator_sealing: X25519PrivateKey
    devices: dict[str, Ed25519PrivateKey]
    revoked: set[str]

    def resolve(self, header: Header) -> Ed25519PublicKey:
        if header.sender == AGGREGATOR_ID:
            return self.aggregator_signing.public_key()
        if header.sender in self.revoked:
            raise Rejected(RejectReason.REVOKED_SENDER, header.sender)
        key = self.devices.get(header.sender)
        if key is None:
            raise Rejected(RejectReason.UNKNOWN_SENDER, header.sender)
        return key.public_key()


def make_fleet() -> Fleet:
    """Fresh keys: ``dev-a`` and ``dev-b`` are registered, ``dev-old`` is revoked."""
    return Fleet(Ed25519PrivateKey.generate(), X25519PrivateKey.generate(),
                 {"dev-a": Ed25519PrivateKey.generate(), "dev-b": Ed25519PrivateKey.generate(),
                  "dev-old": Ed25519PrivateKey.generate()}, {"dev-old"})
