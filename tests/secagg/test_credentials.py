"""Authenticated advertisements: a malicious aggregator cannot invent a device's neighbours."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.identity import DeviceIdentity
from fedbeat.broker.secagg import wire
from fedbeat.broker.secagg.coordinator import Coordinator
from fedbeat.broker.secagg.credentials import (
    CertificateMemo,
    Credentials,
    Trust,
    certificate_digest,
)
from fedbeat.broker.secagg.keys import RoundKeys
from fedbeat.broker.secagg.params import RoundContext
from fedbeat.broker.secagg.participant import Participant
from fedbeat.broker.secagg.wire import AdvertiseKeys, NeighbourKeys, Peer, RelayedShares
from fedbeat.tools import pki

CONTEXT = RoundContext("ward-7", 3, 64, 16)
DEVICES = ("dev-a", "dev-b", "dev-c", "dev-d")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys = tmp_path_factory.mktemp("fleet") / "keys"
    pki.init_fleet(keys, "ward-7")
    for device in DEVICES:
        pki.add_device(keys, device)
    return keys


def _device(keys: Path, name: str) -> tuple[Credentials, Trust]:
    identity = DeviceIdentity.load(keys / "devices" / name)
    return (Credentials.load(identity.client_cert, identity.client_key),
            Trust.load(identity.ca_cert, "ward-7"))


def _participants(keys: Path) -> dict[str, Participant]:
    out = {}
    for name in DEVICES:
        credentials, trust = _device(keys, name)
        out[name] = Participant(name, CONTEXT, credentials=credentials, trust=trust)
    return out


def test_a_round_of_certified_devices_sums_exactly(fleet: Path) -> None:
    _, trust = _device(fleet, "dev-a")
    coordinator = Coordinator(CONTEXT, min_participants=3, trust=trust)
    participants = _participants(fleet)
    inputs = {d: np.full(CONTEXT.dim, i + 1, dtype=np.uint32) for i, d in enumerate(DEVICES)}
    for name, participant in participants.items():
        coordinator.receive(name, participant.advertise())
    for name, message in coordinator.advance().items():
        assert isinstance(message, NeighbourKeys)
        coordinator.receive(name, participants[name].share_keys(message))
    for name, message in coordinator.advance().items():
        assert isinstance(message, RelayedShares)
        coordinator.receive(name, participants[name].mask(message, inputs[name]))
    for name, message in coordinator.advance().items():
        coordinator.receive(name, participants[name].unmask(message))  # type: ignore[arg-type]
    coordinator.advance()
    assert np.all(coordinator.result().vector == 1 + 2 + 3 + 4)


def _keys_for(fleet: Path, victim: str) -> NeighbourKeys:
    """An honest neighbourhood for ``victim``, as a coordinator would send it."""
    coordinator = Coordinator(CONTEXT, min_participants=3)
    for name, participant in _participants(fleet).items():
        coordinator.receive(name, participant.advertise())
    message = coordinator.advance()[victim]
    assert isinstance(message, NeighbourKeys)
    return message


def test_a_neighbour_whose_keys_the_aggregator_made_is_refused(fleet: Path) -> None:
    honest = _keys_for(fleet, "dev-a")
    sybil_keys = RoundKeys.generate().public()
    forged = dataclasses.replace(honest.peers[0], cipher_public=sybil_keys[0],
                                 mask_public=sybil_keys[1])          # its certificate, new keys
    victim = _participants(fleet)["dev-a"]
    victim.advertise()
    with pytest.raises(Rejected) as refused:
        victim.share_keys(dataclasses.replace(honest, peers=(forged, *honest.peers[1:])))
    assert refused.value.reason is RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize("tamper", ["unsigned", "renamed", "other-ca", "truncated"])
def test_certificates_that_do_not_prove_the_neighbour_are_refused(
        fleet: Path, tmp_path: Path, tamper: str) -> None:
    honest = _keys_for(fleet, "dev-a")
    peer = honest.peers[0]
    if tamper == "unsigned":
        bad = dataclasses.replace(peer, certificate=b"", signature=b"")
    elif tamper == "renamed":           # dev-c's real certificate and signature, as dev-b
        other = honest.peers[1]
        bad = Peer(peer.device_id, peer.index, other.cipher_public, other.mask_public,
                   other.certificate, other.signature)
    elif tamper == "other-ca":          # a well-formed certificate from another fleet's CA
        pki.init_fleet(tmp_path / "other", "ward-7")
        pki.add_device(tmp_path / "other", peer.device_id)
        credentials, _ = _device(tmp_path / "other", peer.device_id)
        from fedbeat.broker.secagg.credentials import advertisement

        signed = advertisement(CONTEXT, peer.device_id, peer.cipher_public, peer.mask_public,
                           peer.seed_digest)
        bad = dataclasses.replace(peer, certificate=credentials.certificate,
                                  signature=credentials.sign(signed))
    else:
        bad = dataclasses.replace(peer, certificate=peer.certificate[:100])
    victim = _participants(fleet)["dev-a"]
    victim.advertise()
    with pytest.raises(Rejected) as refused:
        victim.share_keys(dataclasses.replace(honest, peers=(bad, *honest.peers[1:])))
    assert refused.value.reason is RejectReason.BAD_SIGNATURE


def test_the_coordinator_refuses_a_bad_advertisement_on_arrival(fleet: Path) -> None:
    credentials, trust = _device(fleet, "dev-b")
    coordinator = Coordinator(CONTEXT, min_participants=3, trust=trust)
    advert = Participant("dev-b", CONTEXT, credentials=credentials).advertise()
    with pytest.raises(Rejected) as refused:       # dev-b's certificate, sent as dev-c
        coordinator.receive("dev-c", advert)
    assert refused.value.reason is RejectReason.BAD_SIGNATURE
    with pytest.raises(Rejected):                  # keys swapped after signing
        coordinator.receive("dev-b", AdvertiseKeys(advert.mask_public, advert.cipher_public,
                                                   advert.certificate, advert.signature))
    coordinator.receive("dev-b", advert)           # the genuine one is taken


def test_an_expired_certificate_is_refused(fleet: Path) -> None:
    honest = _keys_for(fleet, "dev-a")
    _, trust = _device(fleet, "dev-a")
    peer = honest.peers[0]
    from fedbeat.broker.secagg.credentials import advertisement

    signed = advertisement(CONTEXT, peer.device_id, peer.cipher_public, peer.mask_public,
                           peer.seed_digest)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=20 * 365)
    trust.verify(peer.device_id, peer.certificate, peer.signature, signed)
    # the certificate is now remembered as checked: validity and signature still are not
    with pytest.raises(Rejected, match="not valid now"):
        trust.verify(peer.device_id, peer.certificate, peer.signature, signed, now=later)
    with pytest.raises(Rejected, match="does not verify"):
        trust.verify(peer.device_id, peer.certificate, peer.signature, signed + b"x")
    with pytest.raises(Rejected, match="another device"):
        trust.verify("dev-d", peer.certificate, peer.signature, signed)


def test_an_advertisement_signed_for_another_round_is_refused(fleet: Path) -> None:
    credentials, trust = _device(fleet, "dev-b")
    advert = Participant("dev-b", CONTEXT, credentials=credentials).advertise()
    next_round = RoundContext("ward-7", CONTEXT.round_id + 1, CONTEXT.dim, CONTEXT.bits)
    with pytest.raises(Rejected, match="does not verify"):
        Coordinator(next_round, min_participants=3, trust=trust).receive("dev-b", advert)


def _round(context: RoundContext, devices: dict[str, tuple[Credentials, Trust]],
           coordinator_trust: Trust, memo: CertificateMemo) -> tuple[int, np.ndarray]:
    """One authenticated round; (bytes of the key stage sent to devices, the sum)."""
    coordinator = Coordinator(context, min_participants=3, trust=coordinator_trust, memo=memo)
    participants = {d: Participant(d, context, credentials=c, trust=t)
                    for d, (c, t) in devices.items()}
    for name, participant in participants.items():
        coordinator.receive(name, participant.advertise())
    keys = coordinator.advance()
    sent = sum(len(wire.encode(m)) for m in keys.values())
    for name, message in keys.items():
        coordinator.receive(name, participants[name].share_keys(message))  # type: ignore[arg-type]
    for name, message in coordinator.advance().items():
        coordinator.receive(name, participants[name].mask(
            message, np.ones(context.dim, dtype=np.uint32)))  # type: ignore[arg-type]
    for name, message in coordinator.advance().items():
        coordinator.receive(name, participants[name].unmask(message))  # type: ignore[arg-type]
    coordinator.advance()
    return sent, coordinator.result().vector


def test_certificates_a_device_checked_travel_as_digests_in_later_rounds(fleet: Path) -> None:
    devices = {d: _device(fleet, d) for d in DEVICES}
    memo = CertificateMemo()
    aggregator_trust = _device(fleet, "dev-a")[1]
    first, total = _round(CONTEXT, devices, aggregator_trust, memo)
    assert np.all(total == 4)
    later = RoundContext("ward-7", CONTEXT.round_id + 1, CONTEXT.dim, CONTEXT.bits)
    second, total = _round(later, devices, aggregator_trust, memo)
    assert np.all(total == 4)
    assert first - second > 4 * 3 * 400          # 12 certificates replaced by 32-byte digests
    # a device that lost its cache (a restart) advertises a new id and gets certificates again
    devices["dev-b"] = _device(fleet, "dev-b")
    third_context = RoundContext("ward-7", CONTEXT.round_id + 2, CONTEXT.dim, CONTEXT.bits)
    third, total = _round(third_context, devices, aggregator_trust, memo)
    assert np.all(total == 4)
    assert second + 3 * 400 < third < first


def test_an_unknown_digest_makes_the_device_leave_and_start_a_new_cache(fleet: Path) -> None:
    credentials, trust = _device(fleet, "dev-a")
    honest = _keys_for(fleet, "dev-a")
    peer = honest.peers[0]
    by_digest = dataclasses.replace(peer, certificate=b"",
                                    digest=certificate_digest(peer.certificate))
    victim = Participant("dev-a", CONTEXT, credentials=credentials, trust=trust)
    old_id = victim.advertise().cache_id
    with pytest.raises(Rejected, match="does not know"):
        victim.share_keys(dataclasses.replace(honest, peers=(by_digest, *honest.peers[1:])))
    assert trust.cache_id != old_id


def test_the_aggregators_own_certificate_is_never_a_neighbour(fleet: Path) -> None:
    from fedbeat.broker.identity import AggregatorIdentity
    from fedbeat.broker.secagg.credentials import advertisement

    aggregator = AggregatorIdentity.load(fleet)
    credentials = Credentials.load(aggregator.client_cert, aggregator.client_key)
    _, trust = _device(fleet, "dev-a")
    signed = advertisement(CONTEXT, "aggregator", bytes(32), bytes(32))
    with pytest.raises(Rejected, match="not a device"):
        trust.verify("aggregator", credentials.certificate, credentials.sign(signed), signed)
    with pytest.raises(Rejected) as malformed:
        wire.decode(wire.encode(wire.RelayedShares((("aggregator", bytes(
            wire.SHARES_CIPHERTEXT_BYTES)),))), CONTEXT)
    assert malformed.value.reason is RejectReason.MALFORMED
