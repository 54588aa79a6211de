"""Authenticated key advertisements: who a neighbour is, proven by the fleet CA, not the aggregator.

Without this, a *malicious* aggregator could answer a device's key advertisement with a
neighbourhood of keys it made itself: it would then hold every share of the device's secrets
and every pairwise mask, and unmask its input. So each device signs its two round keys with the
private key of its TLS client certificate (ECDSA P-256, issued by the fleet CA with the device
id as common name), the aggregator relays certificate and signature with the keys, and a device
accepts a neighbour only if the certificate was issued by the fleet CA to that device id of
this fleet, is valid now and allows signing, and the signature covers exactly the advertised
keys for this round (the round context binds fleet, round, vector length and ring). The
aggregator checks the same on arrival, so one device's bad advertisement is refused at once
instead of making its neighbours leave the round.

Known limit: devices do not see the CA's revocation list, so a revoked device's certificate
still proves its identity to its peers until it expires (the aggregator itself refuses revoked
devices at the envelope layer).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.secagg.params import RoundContext
from fedbeat.broker.topics import AGGREGATOR_ID

MAX_CERTIFICATE_BYTES = 2048
MAX_SIGNATURE_BYTES = 80          # DER ECDSA P-256 is at most 72
_SIGNATURE = ec.ECDSA(hashes.SHA256())


def advertisement(context: RoundContext, device_id: str, cipher_public: bytes,
                  mask_public: bytes, seed_digest: bytes = b"") -> bytes:
    """The bytes a device signs for its advertisement: round context, id, both keys and the
    digest of its self-mask seed."""
    return (context.label("advertise") + b"\x00" + device_id.encode() + cipher_public
            + mask_public + seed_digest)


@dataclass(frozen=True)
class Credentials:
    """A device's certificate (DER) and the private key that signs its advertisements."""

    certificate: bytes
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, certificate: Path, key: Path) -> Credentials:
        """From the PEM files ``fedbeat keys add-device`` wrote (the TLS client pair)."""
        cert = x509.load_pem_x509_certificate(certificate.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key}: the client key must be an EC key")
        return cls(cert.public_bytes(serialization.Encoding.DER), private)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message, _SIGNATURE)


MAX_CACHED = 4096
CACHE_ID_BYTES = 8
DIGEST_BYTES = 32


def certificate_digest(certificate: bytes) -> bytes:
    return hashlib.sha256(certificate).digest()


class Trust:
    """Verifies neighbours' advertisements against the fleet CA.

    A device meets the same neighbours' certificates round after round, and checking one
    against the CA costs more than checking the advertisement's signature; so a certificate
    that passed is remembered (by its exact bytes, with its validity window, which is still
    checked every time), up to :data:`MAX_CACHED` of them. The device advertises
    :attr:`cache_id` so the aggregator may send a remembered certificate as its SHA-256 digest
    (:class:`CertificateMemo`); an unknown digest makes the device :meth:`forget` everything and
    start a new cache id, after which it gets whole certificates again.
    """

    def __init__(self, ca: x509.Certificate, fleet: str) -> None:
        self.ca = ca
        self.organisation = f"fedbeat fleet {fleet}"
        self._checked: dict[tuple[str, bytes], tuple[ec.EllipticCurvePublicKey, dt.datetime,
                                                     dt.datetime]] = {}
        self._by_digest: dict[tuple[str, bytes], bytes] = {}
        self._cache_id = os.urandom(CACHE_ID_BYTES)

    @property
    def cache_id(self) -> bytes:
        """What the advertisement carries; empty once the cache is full (send certificates)."""
        return self._cache_id if len(self._checked) < MAX_CACHED else b""

    def resolve(self, device_id: str, digest: bytes) -> bytes | None:
        """The certificate of ``device_id`` this device checked before, by its digest."""
        return self._by_digest.get((device_id, digest))

    def forget(self) -> None:
        self._checked.clear()
        self._by_digest.clear()
        self._cache_id = os.urandom(CACHE_ID_BYTES)

    @classmethod
    def load(cls, ca_certificate: Path, fleet: str) -> Trust:
        return cls(x509.load_pem_x509_certificate(ca_certificate.read_bytes()), fleet)

    def verify(self, device_id: str, certificate: bytes, signature: bytes, message: bytes,
               *, now: dt.datetime | None = None) -> None:
        """Return if ``signature`` over ``message`` is ``device_id``'s, certified by the CA."""
        if not certificate or not signature:
            raise _refuse(f"{device_id}: advertisement is not signed")
        if len(certificate) > MAX_CERTIFICATE_BYTES or len(signature) > MAX_SIGNATURE_BYTES:
            raise _refuse(f"{device_id}: certificate or signature too large")
        known = self._checked.get((device_id, certificate))
        key, not_before, not_after = known or self._check_certificate(device_id, certificate)
        moment = now or dt.datetime.now(dt.UTC)
        if not not_before <= moment <= not_after:
            raise _refuse(f"{device_id}: certificate is not valid now")
        if known is None and len(self._checked) < MAX_CACHED:
            self._checked[(device_id, certificate)] = (key, not_before, not_after)
            self._by_digest[(device_id, certificate_digest(certificate))] = certificate
        try:
            key.verify(signature, message, _SIGNATURE)
        except InvalidSignature:
            raise _refuse(f"{device_id}: advertisement signature does not verify") from None

    def _check_certificate(self, device_id: str, certificate: bytes
                           ) -> tuple[ec.EllipticCurvePublicKey, dt.datetime, dt.datetime]:
        """The certificate's key and validity window, if the fleet CA issued it to
        ``device_id`` of this fleet for signing. The aggregator's own client certificate is
        from the same CA: it never counts as a device (a neighbour of its own choosing)."""
        if device_id == AGGREGATOR_ID:
            raise _refuse("the aggregator is not a device")
        try:
            cert = x509.load_der_x509_certificate(certificate)
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature):
            raise _refuse(f"{device_id}: certificate not issued by the fleet CA") from None
        subject = cert.subject
        names = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        fleets = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        if names != [device_id] or fleets != [self.organisation]:
            raise _refuse(f"{device_id}: certificate names another device or fleet")
        try:
            allowed = cert.extensions.get_extension_for_class(x509.KeyUsage).value \
                .digital_signature
        except x509.ExtensionNotFound:
            allowed = False
        key = cert.public_key()
        if not allowed or not isinstance(key, ec.EllipticCurvePublicKey):
            raise _refuse(f"{device_id}: certificate does not allow signing")
        return key, cert.not_valid_before_utc, cert.not_valid_after_utc


class CertificateMemo:
    """The aggregator's record of which certificates each device has already checked.

    A device has checked its neighbours' certificates once it answered the share-keys stage
    (it verifies all of them first), so only then are they recorded, under the cache id the
    device advertised. While a device keeps that id, the aggregator sends those neighbours'
    certificates as digests (32 bytes instead of ~450); a new id clears the record.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[bytes, set[bytes]]] = {}

    def knows(self, device_id: str, cache_id: bytes, digest: bytes) -> bool:
        entry = self._known.get(device_id)
        return bool(cache_id) and entry is not None and entry[0] == cache_id and \
            digest in entry[1]

    def learned(self, device_id: str, cache_id: bytes, digests: Iterable[bytes]) -> None:
        if not cache_id:
            self._known.pop(device_id, None)
            return
        entry = self._known.get(device_id)
        if entry is None or entry[0] != cache_id:
            entry = self._known[device_id] = (cache_id, set())
        room = MAX_CACHED - len(entry[1])
        entry[1].update(list(digests)[:max(0, room)])


def _refuse(detail: str) -> Rejected:
    return Rejected(RejectReason.BAD_SIGNATURE, detail)
