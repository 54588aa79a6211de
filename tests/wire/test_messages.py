"""The receive path end to end (without a broker): updates, chunked models, topic binding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from wire.fleet_keys import FLEET, Fleet

from fedbeat.broker import chunks, envelope
from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.messages import (
    Receiver,
    Update,
    open_plain,
    open_update,
    seal_update,
    sign_plain,
)
from fedbeat.broker.replay import ReplayGuard
from fedbeat.broker.tensors import Int8
from fedbeat.broker.topics import FleetTopics

TOPICS = FleetTopics(FLEET)
UPDATE = Update(120, {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                      "b": np.array([0.5], np.float32)}, {"loss": 0.7, "epsilon": 1.2})


def sealed_from(fleet: Fleet, sender: str = "dev-a", round_id: int = 1, **kw: object) -> bytes:
    header = Header.new(MessageType.UPDATE, fleet=FLEET, sender=sender, round=round_id)
    return seal_update(header, UPDATE, signing_key=fleet.devices[sender],
                       aggregator_key=fleet.aggregator_sealing.public_key(), **kw)  # type: ignore[arg-type]


def receiver(fleet: Fleet) -> Receiver:
    return Receiver(FLEET, fleet.resolve, replay=ReplayGuard())


def test_update_round_trip_through_the_receiver(fleet: Fleet) -> None:
    rx = receiver(fleet)
    message = rx.receive(TOPICS.update("dev-a"), sealed_from(fleet))
    assert message is not None
    assert message.header.sender == "dev-a"
    update = open_update(message, fleet.aggregator_sealing,
                         expected={"w": (2, 3), "b": (1,)})
    assert update.num_samples == 120
    assert update.metrics == UPDATE.metrics
    np.testing.assert_array_equal(update.tensors["w"], UPDATE.tensors["w"])


def test_the_update_is_unreadable_without_the_aggregators_key(fleet: Fleet) -> None:
    data = sealed_from(fleet, compressor=Int8())
    message = receiver(fleet).receive(TOPICS.update("dev-a"), data)
    assert message is not None
    with pytest.raises(Rejected) as excinfo:
        open_update(message, X25519PrivateKey.generate())
    assert excinfo.value.reason is RejectReason.DECRYPT_FAILED


def test_a_device_cannot_publish_as_another(fleet: Fleet) -> None:
    rx = receiver(fleet)
    with pytest.raises(Rejected) as excinfo:
        rx.receive(TOPICS.update("dev-b"), sealed_from(fleet, sender="dev-a"))
    assert excinfo.value.reason is RejectReason.TOPIC_MISMATCH
    assert rx.rejections.snapshot() == {"topic_mismatch": 1}


def test_resigning_a_stolen_ciphertext_does_not_open(fleet: Fleet) -> None:
    """dev-b copies dev-a's sealed payload into its own signed envelope: it must not open."""
    stolen = envelope.parse(sealed_from(fleet), 1 << 20)
    header = dataclasses.replace(stolen.header, sender="dev-b")
    forged = envelope.sign(header, stolen.payload, fleet.devices["dev-b"])
    message = receiver(fleet).receive(TOPICS.update("dev-b"), forged)
    assert message is not None                      # dev-b's signature is valid...
    with pytest.raises(Rejected) as excinfo:        # ...but the ciphertext is bound to dev-a
        open_update(message, fleet.aggregator_sealing)
    assert excinfo.value.reason is RejectReason.DECRYPT_FAILED


def test_replays_wrong_fleets_and_foreign_topics_are_counted(fleet: Fleet) -> None:
    rx = receiver(fleet)
    data = sealed_from(fleet)
    rx.receive(TOPICS.update("dev-a"), data)
    for topic, payload in [(TOPICS.update("dev-a"), data),
                           (FleetTopics("other").update("dev-a"), data),
                           ("fedbeat/ward-7/device/dev-a/secrets", data),
                           (TOPICS.round, sealed_from(fleet))]:
        with pytest.raises(Rejected):
            rx.receive(topic, payload)
    assert rx.rejections.snapshot() == {"replay": 1, "topic_mismatch": 1, "unknown_type": 2}


def test_a_chunked_model_reassembles_and_verifies(fleet: Fleet) -> None:
    header = Header.new(MessageType.MODEL, fleet=FLEET, sender="aggregator", model_version=4)
    body = {"version": 4, "params": np.random.default_rng(0).bytes(300_000)}
    data = sign_plain(header, body, fleet.aggregator_signing)
    frames = chunks.split(data, 64 * 1024)
    assert len(frames) == 5
    rx = Receiver(FLEET, fleet.resolve)      # retained topic: no replay guard
    results = [rx.receive(TOPICS.model_chunk(i), f) for i, f in enumerate(reversed(frames))]
    assert results[:-1] == [None] * 4
    assert results[-1] is not None
    assert open_plain(results[-1]) == body


def test_a_device_cannot_inject_model_chunks(fleet: Fleet) -> None:
    header = Header.new(MessageType.STATUS, fleet=FLEET, sender="dev-a")
    data = envelope.sign(header, b"\xa0", fleet.devices["dev-a"])
    with pytest.raises(Rejected) as excinfo:
        Receiver(FLEET, fleet.resolve).receive(TOPICS.model, data)
    assert excinfo.value.reason is RejectReason.TOPIC_MISMATCH


def test_empty_retained_messages_are_ignored(fleet: Fleet) -> None:
    assert Receiver(FLEET, fleet.resolve).receive(TOPICS.model_chunk(3), b"") is None
