"""The device's SecAgg session: answers stages, and leaves instead of crashing on bad input."""

from __future__ import annotations

import numpy as np
from secagg_testing import FixedRounding

from fedbeat.broker.rounds import Announcement, SecAggConfig, TrainingConfig
from fedbeat.broker.secagg import wire
from fedbeat.broker.secagg.coordinator import Coordinator
from fedbeat.device.privacy.secure_round import secure_round
from fedbeat.device.runtime.secagg_session import SecAggSession
from fedbeat.models.params import ParamLayout

LAYOUT = ParamLayout((("w", (40, 3)), ("b", (7,))))
ANNOUNCEMENT = Announcement(5, 2, "ab" * 32, 0, 2, 3, 1.0, "seed",
                            TrainingConfig(clip_norm=0.5),       # quantise and clip, no noise
                            mode="secagg", secagg=SecAggConfig(bits=16))


def _sessions(names: list[str]) -> tuple[dict[str, SecAggSession], dict[str, list[bytes]]]:
    setup = secure_round(ANNOUNCEMENT, "fleet", LAYOUT)
    sent: dict[str, list[bytes]] = {name: [] for name in names}
    sessions = {}
    for name in names:
        encoded = setup.encoder.encode(np.full(LAYOUT.size, 0.01), FixedRounding())
        sessions[name] = SecAggSession(name, 5, setup, encoded, sent[name].append)
    return sessions, sent


def _run_stages(names: list[str], stages: int) -> tuple[
        dict[str, SecAggSession], Coordinator, dict[str, bytes]]:
    """Sessions and a coordinator exchanging wire bytes for ``stages`` stages; returns the
    last stage's messages to the devices too."""
    sessions, sent = _sessions(names)
    setup = secure_round(ANNOUNCEMENT, "fleet", LAYOUT)
    coordinator = Coordinator(setup.context, min_participants=2, graph=setup.graph,
                              graph_seed=setup.seed)
    for session in sessions.values():
        session.start()
    last: dict[str, bytes] = {}
    for _ in range(stages):
        for name in names:
            while sent[name]:
                coordinator.receive(name, wire.decode(sent[name].pop(0), setup.context))
        for device, message in coordinator.advance().items():
            last[device] = wire.encode(message)
            sessions[device].on_message(last[device])
    return sessions, coordinator, last


def test_three_sessions_and_a_coordinator_sum_over_the_wire_bytes() -> None:
    names = ["a1", "b2", "c3"]
    sessions, coordinator, _ = _run_stages(names, 4)
    setup = secure_round(ANNOUNCEMENT, "fleet", LAYOUT)
    total = coordinator.result()
    assert total.contributors == tuple(names)
    assert all(session.finished and session.outcome == "unmasked"
               for session in sessions.values())
    decoded = setup.encoder.decode_sum(total.vector)
    # each device's rounding moves its rotated vector by at most γ/2 per coordinate
    rounding = 3 * setup.params.granularity / 2 * np.sqrt(setup.params.padded_dim)
    assert float(np.linalg.norm(decoded - 3 * 0.01)) <= rounding


def test_garbage_and_aborts_end_the_session_without_an_exception() -> None:
    sessions, sent = _sessions(["a1"])
    session = sessions["a1"]
    session.start()
    session.on_message(b"\xff\x00 not cbor")
    assert session.finished
    assert session.outcome.startswith("left: malformed")
    assert len(sent["a1"]) == 1                        # only the advertisement went out
    sessions, _ = _sessions(["b2"])
    sessions["b2"].start()
    sessions["b2"].on_message(wire.encode(wire.Abort("too few devices")))
    assert sessions["b2"].outcome == "aborted: too few devices"


def test_shares_relayed_twice_end_the_session_instead_of_the_device() -> None:
    sessions, _, relay = _run_stages(["a1", "b2", "c3"], 2)
    sessions["a1"].on_message(relay["a1"])            # the same RelayedShares again
    assert sessions["a1"].finished
    assert sessions["a1"].outcome.startswith("left:")
