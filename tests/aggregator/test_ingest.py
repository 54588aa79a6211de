"""Ingest in one process: group commit, and refusals that must come before the row commits."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedbeat.aggregator.ingest import Ingest, OpenRound
from fedbeat.aggregator.store import StateStore
from fedbeat.aggregator.strategies import Aggregation, create_strategy
from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.errors import RejectReason
from fedbeat.broker.identity import AggregatorIdentity, DeviceIdentity
from fedbeat.broker.messages import Receiver, Update, seal_update
from fedbeat.broker.registry import DeviceRegistry, fleet_key_resolver
from fedbeat.broker.replay import ReplayGuard
from fedbeat.broker.topics import FleetTopics
from fedbeat.tools.bench_ingest import FLEET, MODEL_VERSION, Workload, build_workload

ROUND = 1


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    return build_workload(tmp_path_factory.mktemp("ingest"), model="ecg-cnn-s", devices=4,
                          updates=4, update_norm=1.0, seed=0)


def _ingest(workload: Workload, state: Path, *, store_type: type[StateStore] = StateStore
            ) -> tuple[Ingest, StateStore]:
    aggregator = AggregatorIdentity.load(workload.keys)
    registry = DeviceRegistry.load(aggregator.registry_path)
    receiver = Receiver(FLEET, fleet_key_resolver(registry, aggregator.signing_key.public_key()),
                        replay=ReplayGuard(max_skew_s=3600.0))
    store = store_type(state / "aggregator.sqlite")
    store.open_round(ROUND, MODEL_VERSION, time.time() + 3600, {})
    return Ingest(receiver, aggregator.sealing_key, workload.layout, store,
                  max_update_norm=10.0), store


def _open_round() -> OpenRound:
    return OpenRound(ROUND, MODEL_VERSION, "bench", 1.0)


def _begin(workload: Workload, strategy: str = "fedavg") -> Aggregation:
    return create_strategy(strategy).begin(workload.layout, MODEL_VERSION)


def _update(workload: Workload, device_id: str, *, num_samples: int = 10) -> tuple[str, bytes]:
    """Another sealed update from ``device_id`` for the round (a fresh nonce)."""
    ident = DeviceIdentity.load(workload.keys / "devices" / device_id)
    rng = np.random.default_rng(7)
    tensors = {name: rng.standard_normal(shape, dtype=np.float32) * np.float32(1e-3)
               for name, shape in workload.layout.entries}
    header = Header.new(MessageType.UPDATE, fleet=FLEET, sender=device_id, round=ROUND,
                        model_version=MODEL_VERSION)
    payload = seal_update(header, Update(num_samples, tensors, {"loss": 0.5}),
                          signing_key=ident.signing_key,
                          aggregator_key=ident.aggregator_sealing_key)
    return FleetTopics(FLEET).update(device_id), payload


def _result_bytes(aggregation: Aggregation) -> bytes:
    result = aggregation.result()
    return b"".join(result.delta[name].tobytes() for name in sorted(result.delta))


def test_group_commit_equals_one_commit_each_bit_for_bit(workload: Workload,
                                                         tmp_path: Path) -> None:
    messages = workload.rounds[0]
    ingest, store = _ingest(workload, tmp_path / "group")
    grouped = _begin(workload)
    outcomes = ingest.process_many(messages, _open_round(), grouped)
    assert [o is not None and o.accepted for o in outcomes] == [True] * len(messages)
    ingest, single_store = _ingest(workload, tmp_path / "single")
    single = _begin(workload)
    for topic, payload in reversed(messages):
        outcome = ingest.process(topic, payload, _open_round(), single)
        assert outcome is not None
        assert outcome.accepted
    assert _result_bytes(grouped) == _result_bytes(single)
    assert len(store.round_updates(ROUND)) == len(messages)
    store.close()
    single_store.close()


def test_a_second_update_in_the_same_group_is_a_duplicate(workload: Workload,
                                                          tmp_path: Path) -> None:
    ingest, store = _ingest(workload, tmp_path)
    aggregation = _begin(workload)
    first = workload.rounds[0][0]
    again = _update(workload, "dev-0000")
    outcomes = ingest.process_many([first, again], _open_round(), aggregation)
    assert outcomes[0] is not None
    assert outcomes[0].accepted
    assert outcomes[1] is not None
    assert outcomes[1].reason is RejectReason.DUPLICATE
    assert len(aggregation) == 1
    assert [u["device_id"] for u in store.round_updates(ROUND)] == ["dev-0000"]
    store.close()


def test_what_the_strategy_refuses_is_rejected_before_its_row_commits(
        workload: Workload, tmp_path: Path) -> None:
    # FedAvg's exact sum takes num_samples < 2^24. Refused only after the commit, the row
    # would replay into every restart and refuse there again.
    ingest, store = _ingest(workload, tmp_path)
    aggregation = _begin(workload)
    too_many = _update(workload, "dev-0001", num_samples=1 << 24)
    good = workload.rounds[0][2]
    outcomes = ingest.process_many([too_many, good], _open_round(), aggregation)
    assert outcomes[0] is not None
    assert outcomes[0].reason is RejectReason.BAD_TENSOR
    assert "below 2^24" in outcomes[0].detail
    assert outcomes[1] is not None
    assert outcomes[1].accepted
    assert not store.has_update(ROUND, "dev-0001")
    assert len(aggregation) == 1
    store.close()


class _FailingCommit(StateStore):
    """A store whose group commit fails at the end, as on a full disk."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with super().transaction():
            yield
            raise sqlite3.OperationalError("database or disk is full")


def test_a_group_whose_commit_fails_raises_and_keeps_none_of_its_rows(
        workload: Workload, tmp_path: Path) -> None:
    ingest, store = _ingest(workload, tmp_path, store_type=_FailingCommit)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        ingest.process_many(workload.rounds[0][:2], _open_round(), _begin(workload))
    assert not store.round_updates(ROUND)
    store.close()
