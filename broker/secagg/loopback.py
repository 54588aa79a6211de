"""A whole SecAgg round in one process, every message through its wire encoding.

For tests, the benchmark and fleet simulations that want the protocol's exact arithmetic and
byte counts without a broker: each message is encoded, counted and decoded exactly as it would
be on MQTT. ``drop`` says which devices go silent before which stage, so dropout at every stage
can be exercised. Time spent is recorded per party, so the benchmark can report device and
aggregator compute separately.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np

from fedbeat.broker.secagg import wire
from fedbeat.broker.secagg.coordinator import Coordinator, SecAggSum
from fedbeat.broker.secagg.credentials import Credentials, Trust
from fedbeat.broker.secagg.params import DEFAULT_GRAPH, GraphParams, RoundContext
from fedbeat.broker.secagg.participant import Participant
from fedbeat.broker.secagg.wire import Message, NeighbourKeys, RelayedShares, UnmaskRequest

STAGES = ("advertise", "share", "mask", "unmask")
M = TypeVar("M", bound=Message)


@dataclass
class Traffic:
    """Bytes and seconds per party; ``device_*`` keyed by device id."""

    device_bytes_up: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    device_bytes_down: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    device_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    aggregator_seconds: float = 0.0


def run_round(inputs: Mapping[str, np.ndarray], context: RoundContext, *, min_participants: int,
              graph: GraphParams = DEFAULT_GRAPH, graph_seed: bytes = b"",
              drop: Mapping[str, set[str]] | None = None,
              traffic: Traffic | None = None,
              credentials: Mapping[str, Credentials] | None = None,
              trust: Callable[[], Trust] | None = None) -> SecAggSum:
    """Run one round over ``inputs`` (ring vectors); raises ``SecAggAborted`` like the service.

    ``drop[stage]`` lists devices that send nothing from ``stage`` on (see :data:`STAGES`).
    With ``credentials`` (by device) and ``trust`` (a factory: every party has its own, as on
    real devices, so no party profits from another's cache) advertisements are signed and
    verified (credentials.py).
    """
    drop = drop or {}
    traffic = traffic if traffic is not None else Traffic()
    credentials = credentials or {}
    coordinator = Coordinator(context, min_participants=min_participants, graph=graph,
                              graph_seed=graph_seed, trust=trust() if trust else None)
    participants = {device: Participant(device, context, credentials=credentials.get(device),
                                        trust=trust() if trust else None)
                    for device in sorted(inputs)}
    gone: set[str] = set()

    def timed_device(device: str, step: Callable[[], Message]) -> None:
        started = time.perf_counter()
        reply = step()
        traffic.device_seconds[device] += time.perf_counter() - started
        data = wire.encode(reply)
        traffic.device_bytes_up[device] += len(data)
        started = time.perf_counter()
        coordinator.receive(device, wire.decode(data, context))
        traffic.aggregator_seconds += time.perf_counter() - started

    def advance() -> dict[str, Message]:
        started = time.perf_counter()
        outgoing = coordinator.advance()
        traffic.aggregator_seconds += time.perf_counter() - started
        return outgoing

    def deliver(outgoing: Mapping[str, Message], stage: str,
                answer: Callable[[Participant, Message], Message]) -> None:
        gone.update(drop.get(stage, set()))
        for device, message in outgoing.items():
            data = wire.encode(message)
            traffic.device_bytes_down[device] += len(data)
            if device not in gone:
                participant, decoded = participants[device], wire.decode(data, context)
                timed_device(device, partial(answer, participant, decoded))

    gone.update(drop.get("advertise", set()))
    for device, participant in participants.items():
        if device not in gone:
            timed_device(device, participant.advertise)
    deliver(advance(), "share", lambda p, m: p.share_keys(_as(m, NeighbourKeys)))
    deliver(advance(), "mask",
            lambda p, m: p.mask(_as(m, RelayedShares), inputs[p.device_id]))
    deliver(advance(), "unmask", lambda p, m: p.unmask(_as(m, UnmaskRequest)))
    advance()
    started = time.perf_counter()
    result = coordinator.result()
    traffic.aggregator_seconds += time.perf_counter() - started
    return result


def _as(message: Message, kind: type[M]) -> M:
    if not isinstance(message, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(message).__name__}")
    return message
