"""The aggregator's secure-round driver: stage clock, refusals, and the decoded mean."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from secagg_testing import FixedRounding

from fedbeat.aggregator.secure_round import Progress, SecureRoundDriver
from fedbeat.broker import envelope
from fedbeat.broker.envelope import Header, MessageType, SignedMessage
from fedbeat.broker.errors import RejectReason
from fedbeat.broker.messages import seal_secagg
from fedbeat.broker.rounds import Announcement, SecAggConfig, TrainingConfig
from fedbeat.broker.secagg import wire
from fedbeat.device.privacy.secure_round import flatten, secure_round
from fedbeat.device.runtime.secagg_session import SecAggSession
from fedbeat.models.params import ParamLayout

FLEET = "ward-7"
LAYOUT = ParamLayout((("w", (30, 4)), ("b", (8,))))
DEVICES = ("dev-a", "dev-b", "dev-c", "dev-d")
DEADLINE = 1_000.0


def _announcement(**changes: object) -> Announcement:
    fields: dict[str, object] = {
        "round": 3, "model_version": 7, "model_sha256": "ab" * 32,
        "deadline_ms": int(DEADLINE * 1000), "min_participants": 3, "target_participants": 4,
        "participation_fraction": 1.0, "participation_seed": "s",
        "training": TrainingConfig(clip_norm=1.0), "mode": "secagg",
        "secagg": SecAggConfig(bits=16, stage_timeout_s=5.0)}
    fields.update(changes)
    return Announcement(**fields)  # type: ignore[arg-type]


class Harness:
    """A driver, device sessions, and the sealed MQTT messages between them."""

    def __init__(self, announcement: Announcement, silent: tuple[str, ...] = ()) -> None:
        self.sealing = X25519PrivateKey.generate()
        self.signing = {d: Ed25519PrivateKey.generate() for d in DEVICES}
        self.announcement = announcement
        self.to_devices: list[tuple[str, bytes]] = []
        self.driver = SecureRoundDriver(announcement, FLEET, LAYOUT, self.sealing,
                                        lambda d, data: self.to_devices.append((d, data)))
        setup = secure_round(announcement, FLEET, LAYOUT)
        self.updates = {d: np.full(LAYOUT.size, 0.01 * (i + 1)) for i, d in enumerate(DEVICES)}
        self.outbox: list[SignedMessage] = []
        self.silent = set(silent)
        self.sessions = {
            d: SecAggSession(d, announcement.round, setup, setup.encoder.encode(
                flatten({"w": self.updates[d][:120].reshape(30, 4),
                         "b": self.updates[d][120:]}, LAYOUT), FixedRounding()),
                lambda body, d=d: self.outbox.append(self.sealed(d, body)))
            for d in DEVICES}

    def sealed(self, device: str, body: bytes, *, round_id: int | None = None,
               model_version: int | None = None) -> SignedMessage:
        header = Header.new(MessageType.SECAGG, fleet=FLEET, sender=device,
                            round=self.announcement.round if round_id is None else round_id,
                            model_version=(self.announcement.model_version
                                           if model_version is None else model_version))
        data = seal_secagg(header, body, signing_key=self.signing[device],
                           aggregator_key=self.sealing.public_key())
        return envelope.parse(data, 1 << 24).verify(self.signing[device].public_key())

    def deliver(self) -> None:
        """The aggregator's messages to the devices, then the devices' answers to it."""
        for device, data in self.to_devices:
            if device not in self.silent:
                self.sessions[device].on_message(data)
        self.to_devices.clear()
        for message in self.outbox:
            outcome = self.driver.receive(message)
            assert outcome.accepted, outcome
        self.outbox.clear()


def test_a_full_round_closes_on_the_clock_and_yields_the_mean() -> None:
    h = Harness(_announcement())
    for session in h.sessions.values():
        session.start()
    now = 0.0
    progress = Progress.WAITING
    for _ in range(8):
        h.deliver()
        progress = h.driver.tick(now)
        if progress is Progress.FINISHED:
            break
    assert progress is Progress.FINISHED
    assert h.driver.result is not None
    mean = np.concatenate([h.driver.result.delta["w"].ravel(), h.driver.result.delta["b"]])
    expected = np.mean([h.updates[d] for d in DEVICES], axis=0)
    assert np.allclose(mean, expected, atol=1e-3)
    assert h.driver.contributors == DEVICES
    assert h.driver.overhead.stages == {"advertised": 4, "shared": 4, "masked": 4,
                                        "revealed": 4}
    assert h.driver.overhead.bytes_in > 4 * LAYOUT.size
    assert h.driver.epsilon(1e-5, []) is None                  # no DDG noise asked for


def test_a_silent_device_costs_a_stage_timeout_not_the_round() -> None:
    h = Harness(_announcement(), silent=("dev-d",))
    for session in h.sessions.values():
        session.start()
    h.deliver()
    assert h.driver.tick(0.0) is Progress.WAITING      # keys went out; dev-d never answers
    h.deliver()
    assert h.driver.tick(1.0) is Progress.WAITING      # 3 of 4 shared: wait for the timeout
    assert h.driver.tick(6.0) is Progress.WAITING      # timed out: go on without dev-d
    progress = Progress.WAITING
    now = 6.0
    for _ in range(6):
        h.deliver()
        now += 1.0
        progress = h.driver.tick(now)
        if progress is not Progress.WAITING:
            break
    assert progress is Progress.FINISHED
    assert h.driver.contributors == ("dev-a", "dev-b", "dev-c")


def test_too_few_keys_by_the_deadline_aborts_with_a_reason() -> None:
    h = Harness(_announcement())
    for device in DEVICES[:2]:
        h.sessions[device].start()
    h.deliver()
    assert h.driver.tick(DEADLINE - 1) is Progress.WAITING
    assert h.driver.tick(DEADLINE + 1) is Progress.ABORTED
    assert "fewer than the minimum of 3" in h.driver.reason
    told = {d: wire.decode(data, h.driver.setup.context) for d, data in h.to_devices}
    assert told == {d: wire.Abort(h.driver.reason) for d in DEVICES[:2]}   # the two in it


@pytest.mark.parametrize(("changes", "reason"), [
    ({"round_id": 2}, RejectReason.NOT_OPEN),
    ({"model_version": 6}, RejectReason.WRONG_MODEL_VERSION),
])
def test_stage_messages_for_another_round_or_model_are_refused(
        changes: dict[str, int], reason: RejectReason) -> None:
    h = Harness(_announcement())
    body = wire.encode(h.sessions["dev-a"].participant.advertise())
    outcome = h.driver.receive(h.sealed("dev-a", body, **changes))
    assert not outcome.accepted
    assert outcome.reason is reason


def test_devices_the_participation_rule_leaves_out_are_refused() -> None:
    h = Harness(_announcement(participation_fraction=0.01, participation_seed="x"))
    body = wire.encode(h.sessions["dev-a"].participant.advertise())
    outcome = h.driver.receive(h.sealed("dev-a", body))
    assert outcome.reason is RejectReason.NOT_SELECTED


def test_garbage_inside_a_valid_envelope_is_a_refusal_not_a_crash() -> None:
    h = Harness(_announcement())
    outcome = h.driver.receive(h.sealed("dev-a", b"\xa1\x61k\x61?"))
    assert outcome.reason is RejectReason.MALFORMED
