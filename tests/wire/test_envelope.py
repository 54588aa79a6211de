"""Envelope: COSE_Sign1 structure, signature checks, header validation, sealing binds the header."""

from __future__ import annotations

import dataclasses

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from wire.fleet_keys import FLEET, Fleet

from fedbeat.broker import crypto, envelope
from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.errors import Rejected, RejectReason

LIMIT = 1 << 20


def reason(excinfo: pytest.ExceptionInfo[Rejected]) -> RejectReason:
    return excinfo.value.reason


def test_signed_envelope_round_trips_and_is_a_cose_sign1(fleet: Fleet) -> None:
    header = Header.new(MessageType.STATUS, fleet=FLEET, sender="dev-a", round=3,
                        model_version=2)
    data = envelope.sign(header, b"payload", fleet.devices["dev-a"])
    message = envelope.verify(data, fleet.resolve, LIMIT)
    assert message.header == header
    assert message.payload == b"payload"
    # Any COSE library can check it: tag 18, [protected, {}, payload, sig] over Sig_structure.
    outer = cbor2.loads(data)
    assert outer.tag == 18
    protected, _unprotected, payload, signature = outer.value
    assert cbor2.loads(protected)[1] == -8
    assert cbor2.loads(protected)[4] == b"dev-a"
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    fleet.devices["dev-a"].public_key().verify(signature, sig_structure)


def test_a_flipped_bit_anywhere_in_payload_or_header_fails_verification(fleet: Fleet) -> None:
    header = Header.new(MessageType.STATUS, fleet=FLEET, sender="dev-a")
    data = bytearray(envelope.sign(header, b"x" * 40, fleet.devices["dev-a"]))
    for position in range(len(data)):
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        with pytest.raises(Rejected):
            envelope.verify(bytes(flipped), fleet.resolve, LIMIT)


def test_another_devices_key_is_a_bad_signature(fleet: Fleet) -> None:
    header = Header.new(MessageType.STATUS, fleet=FLEET, sender="dev-a")
    data = envelope.sign(header, b"p", fleet.devices["dev-b"])
    with pytest.raises(Rejected) as excinfo:
        envelope.verify(data, fleet.resolve, LIMIT)
    assert reason(excinfo) is RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize(("sender", "expected"), [("dev-zz", RejectReason.UNKNOWN_SENDER),
                                                  ("dev-old", RejectReason.REVOKED_SENDER)])
def test_unknown_and_revoked_senders_are_refused(fleet: Fleet, sender: str,
                                                 expected: RejectReason) -> None:
    header = Header.new(MessageType.STATUS, fleet=FLEET, sender=sender)
    data = envelope.sign(header, b"p", Ed25519PrivateKey.generate())
    with pytest.raises(Rejected) as excinfo:
        envelope.verify(data, fleet.resolve, LIMIT)
    assert reason(excinfo) is expected


def test_devices_cannot_sign_aggregator_message_types() -> None:
    with pytest.raises(Rejected) as excinfo:
        Header.new(MessageType.MODEL, fleet=FLEET, sender="dev-a")
    assert reason(excinfo) is RejectReason.UNKNOWN_TYPE
    with pytest.raises(Rejected):
        Header.new(MessageType.UPDATE, fleet=FLEET, sender="aggregator")


@pytest.mark.parametrize("change", [
    {"version": 2}, {"fleet": "Bad Fleet"}, {"sender": "a/b"}, {"sender": "+"}, {"round": -1},
    {"nonce": b"short"}, {"created_at_ms": 2**60},
])
def test_invalid_header_fields_are_refused_when_decoding(change: dict[str, object]) -> None:
    header = dataclasses.replace(Header.new(MessageType.STATUS, fleet=FLEET, sender="dev-a"),
                                 **change)  # type: ignore[arg-type]
    fields = {1: -8, 4: header.sender.encode(), "v": header.version, "t": header.type.value,
              "f": header.fleet, "r": header.round, "m": header.model_version,
              "ts": header.created_at_ms, "n": header.nonce}
    with pytest.raises(Rejected) as excinfo:
        Header.decode(cbor2.dumps(fields))
    expected = (RejectReason.UNSUPPORTED_VERSION if "version" in change
                else RejectReason.MALFORMED)
    assert reason(excinfo) is expected


def test_oversized_envelope_is_refused_before_parsing() -> None:
    with pytest.raises(Rejected) as excinfo:
        envelope.parse(b"\xd2" + b"\x00" * 100, max_bytes=50)
    assert reason(excinfo) is RejectReason.OVERSIZED


def test_sealed_payload_opens_only_with_its_header_and_key() -> None:
    key = X25519PrivateKey.generate()
    header = Header.new(MessageType.UPDATE, fleet=FLEET, sender="dev-a", round=1)
    other = dataclasses.replace(header, sender="dev-b")
    sealed = crypto.seal(b"secret update", key.public_key(), header.encode())
    assert b"secret update" not in sealed
    assert crypto.open_sealed(sealed, key, header.encode()) == b"secret update"
    for wrong_key, wrong_header in [(X25519PrivateKey.generate(), header), (key, other)]:
        with pytest.raises(Rejected) as excinfo:
            crypto.open_sealed(sealed, wrong_key, wrong_header.encode())
        assert reason(excinfo) is RejectReason.DECRYPT_FAILED


def test_each_seal_uses_a_fresh_ephemeral_key() -> None:
    key = X25519PrivateKey.generate()
    header = Header.new(MessageType.UPDATE, fleet=FLEET, sender="dev-a").encode()
    first, second = (crypto.seal(b"same", key.public_key(), header) for _ in range(2))
    assert first[:crypto.HPKE_ENC_BYTES] != second[:crypto.HPKE_ENC_BYTES]
    assert first != second
