"""The signed model message: its body, strict device-side parsing, and retained publication."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedbeat.aggregator.model_message import model_body, publish_model
from fedbeat.aggregator.model_store import ModelStore
from fedbeat.broker import cbor
from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.messages import Receiver, sign_plain
from fedbeat.broker.model_body import ReceivedModel, parse_model_body, receive_model
from fedbeat.broker.topics import AGGREGATOR_ID, FleetTopics
from fedbeat.models.params import ParamLayout

MODEL = "ecg-cnn-s"
FLEET = "ward-7"
MAX_BYTES = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedbeat.models.graph.export import build_model_dir

    path = tmp_path_factory.mktemp("model") / MODEL
    build_model_dir(MODEL, path, seed=0, optimizers=("sgd",))
    return path


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> ModelStore:
    """A registry with versions 1 (initial) and 2 (a round), shared by read-only tests."""
    store = ModelStore.open(tmp_path_factory.mktemp("registry"), model_dir)
    store.initialize()
    store.commit(store.current().params + np.float32(0.01), round_id=3,
                 metrics={"macro_f1": 0.5})
    return store


@pytest.fixture(scope="module")
def valid_body(shared_store: ModelStore) -> dict[str, Any]:
    return model_body(shared_store.current(), shared_store)


def parse(body: Mapping[Any, Any], store: ModelStore) -> ReceivedModel:
    return parse_model_body(body, expected_layout=store.layout, max_bytes=MAX_BYTES)


def rejected_reason(body: Mapping[Any, Any], store: ModelStore) -> RejectReason:
    with pytest.raises(Rejected) as info:
        parse(body, store)
    return info.value.reason


# --------------------------------------------------------------------------- body

def test_body_round_trips_through_cbor(shared_store: ModelStore,
                                       valid_body: dict[str, Any]) -> None:
    version = shared_store.current()
    wire = cbor.decode(cbor.encode(valid_body), "model")
    received = parse(cbor.as_mapping(wire, "model"), shared_store)
    assert received.version == 2
    assert received.round_id == 3
    assert received.reason == "round"
    assert received.model == MODEL
    assert received.params.to_flat().tobytes() == version.params.tobytes()
    assert received.params_sha256 == version.params_sha256
    assert received.created_at_ms == version.created_at_ms
    assert received.mismatched_graphs(shared_store.model_dir.manifest) == []
    assert "inference" in received.graphs
    assert "params" not in received.graphs
    if version.tflite_path is not None:
        assert received.tflite == version.tflite_path.read_bytes()
    initial = parse(model_body(shared_store.get(1), shared_store), shared_store)
    assert initial.round_id is None
    assert initial.reason == "initial"


def test_graph_mismatch_is_reported(shared_store: ModelStore,
                                    valid_body: dict[str, Any]) -> None:
    received = parse({**valid_body, "graphs": {**valid_body["graphs"],
                                               "inference": "0" * 64}}, shared_store)
    assert received.mismatched_graphs(shared_store.model_dir.manifest) == ["inference"]


def _with_params(body: dict[str, Any], raw: bytes) -> dict[str, Any]:
    return {**body, "params": raw, "params_sha256": hashlib.sha256(raw).hexdigest()}


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda b: {k: v for k, v in b.items() if k != "round"}, RejectReason.MALFORMED),
    (lambda b: {**b, "extra": 1}, RejectReason.MALFORMED),
    (lambda b: {k: v for k, v in b.items() if k != "tflite_sha256"}, RejectReason.MALFORMED),
    (lambda b: {**b, "version": True}, RejectReason.MALFORMED),
    (lambda b: {**b, "version": 0}, RejectReason.MALFORMED),
    (lambda b: {**b, "version": 2**53}, RejectReason.MALFORMED),
    (lambda b: {**b, "round": -1}, RejectReason.MALFORMED),
    (lambda b: {**b, "reason": "whim"}, RejectReason.MALFORMED),
    (lambda b: {**b, "params": list(b["params"])}, RejectReason.MALFORMED),
    (lambda b: {**b, "params_sha256": b["params_sha256"].upper()}, RejectReason.MALFORMED),
    (lambda b: {**b, "graphs": {"inference": 5}}, RejectReason.MALFORMED),
    (lambda b: {**b, "format": 2}, RejectReason.UNSUPPORTED_VERSION),
    (lambda b: {**b, "layout_digest": "a" * 64}, RejectReason.BAD_TENSOR),
    (lambda b: {**b, "params_sha256": "0" * 64}, RejectReason.BAD_TENSOR),
    (lambda b: {**b, "tflite_sha256": "0" * 64}, RejectReason.BAD_TENSOR),
    (lambda b: _with_params(b, b["params"][:-4]), RejectReason.BAD_TENSOR),
    (lambda b: _with_params(b, b["params"] + b"\0\0\0\0"), RejectReason.BAD_TENSOR),
    (lambda b: _with_params(b, np.float32(np.nan).tobytes() + b["params"][4:]),
     RejectReason.BAD_TENSOR),
    (lambda b: _with_params(b, b["params"][:-4] + np.float32(np.inf).tobytes()),
     RejectReason.BAD_TENSOR),
])
def test_strict_parsing(shared_store: ModelStore, valid_body: dict[str, Any], mutate: Any,
                        reason: RejectReason) -> None:
    assert rejected_reason(mutate(valid_body), shared_store) is reason


def test_size_limit(shared_store: ModelStore, valid_body: dict[str, Any]) -> None:
    with pytest.raises(Rejected) as info:
        parse_model_body(valid_body, expected_layout=shared_store.layout,
                         max_bytes=len(valid_body["params"]))
    expected = RejectReason.OVERSIZED if "tflite" in valid_body else None
    if expected is None:
        pytest.skip("no TFLite in the body without the 'tflite' extra")
    assert info.value.reason is expected
    without = {k: v for k, v in valid_body.items() if k not in ("tflite", "tflite_sha256")}
    parse_model_body(without, expected_layout=shared_store.layout,
                     max_bytes=len(valid_body["params"]))


def test_header_and_body_must_agree_on_the_version(shared_store: ModelStore,
                                                   valid_body: dict[str, Any]) -> None:
    key = Ed25519PrivateKey.generate()
    receiver = Receiver(FLEET, lambda header: key.public_key())
    topics = FleetTopics(FLEET)
    for header_version, ok in ((2, True), (1, False)):
        header = Header.new(MessageType.MODEL, fleet=FLEET, sender=AGGREGATOR_ID,
                            model_version=header_version)
        message = receiver.receive(topics.model, sign_plain(header, valid_body, key))
        assert message is not None
        if ok:
            assert receive_model(message, expected_layout=shared_store.layout,
                                 max_bytes=MAX_BYTES).version == 2
        else:
            with pytest.raises(Rejected, match="disagree"):
                receive_model(message, expected_layout=shared_store.layout,
                              max_bytes=MAX_BYTES)


# --------------------------------------------------------------------------- fuzz

_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
            | st.floats(allow_nan=True) | st.text(max_size=70) | st.binary(max_size=80)
            | st.sampled_from(["0" * 64, "round", "ecg-cnn-s"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=12) | st.integers(-5, 5), inner,
                                         max_size=4), max_leaves=12)
_KEYS = ["format", "version", "model", "layout_digest", "params", "params_sha256", "round",
         "reason", "created_at_ms", "graphs", "tflite", "tflite_sha256", "other"]
FUZZ = settings(max_examples=1000, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _only_rejected(body: object, store: ModelStore) -> None:
    with contextlib.suppress(Rejected):
        parse_model_body(body, expected_layout=store.layout,  # type: ignore[arg-type]
                         max_bytes=MAX_BYTES)


@FUZZ
@given(replaced=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=4),
       dropped=st.sets(st.sampled_from(_KEYS), max_size=2),
       params_bytes=st.none() | st.binary(max_size=64))
def test_fuzz_mutated_bodies_only_raise_rejected(shared_store: ModelStore,
                                                 valid_body: dict[str, Any],
                                                 replaced: dict[str, Any], dropped: set[str],
                                                 params_bytes: bytes | None) -> None:
    body = {k: v for k, v in valid_body.items() if k not in dropped}
    body.update(replaced)
    if params_bytes is not None:
        body = _with_params(body, params_bytes)
    _only_rejected(body, shared_store)


@FUZZ
@given(body=_VALUES)
def test_fuzz_arbitrary_values_only_raise_rejected(shared_store: ModelStore,
                                                   body: object) -> None:
    _only_rejected(body, shared_store)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_fuzz_wire_bytes_only_raise_rejected(shared_store: ModelStore, data: bytes) -> None:
    try:
        body = cbor.as_mapping(cbor.decode(data, "model"), "model")
    except Rejected:
        return
    _only_rejected(body, shared_store)


# --------------------------------------------------------------------------- publishing

class RecordingClient:
    """Stands in for ``MqttClient``: records retained state as a broker would."""

    def __init__(self, chunk_limit: int, *, fail_after: int | None = None) -> None:
        self.limit = chunk_limit
        self.retained: dict[str, bytes] = {}
        self.fail_after = fail_after

    def chunk_limit(self) -> int:
        return self.limit

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise ConnectionError("broker went away")
            self.fail_after -= 1
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)

    def publish_message(self, topic: str, message: bytes, *, retain: bool = False) -> int:
        from fedbeat.broker.chunks import split

        frames = split(message, self.limit)
        for index, frame in enumerate(frames):
            self.publish(f"{topic}/{index}" if len(frames) > 1 else topic, frame, retain=retain)
        return len(frames)


def test_surplus_chunks_survive_a_crash_mid_publication(tmp_path: Path,
                                                        model_dir: Path) -> None:
    store = ModelStore.open(tmp_path / "r", model_dir)
    first = store.initialize()
    topics = FleetTopics(FLEET)
    key = Ed25519PrivateKey.generate()
    small = RecordingClient(2048)
    many = publish_model(small, topics, first, store, key)  # type: ignore[arg-type]
    assert many > 4
    assert set(small.retained) == {topics.model_chunk(i) for i in range(many)}
    # A larger publication dies half way: the record is widened first, so nothing is forgotten.
    second = store.commit(first.params + np.float32(1e-3), round_id=1)
    small.limit, small.fail_after = 1024, many + 2
    with pytest.raises(ConnectionError):
        publish_model(small, topics, second, store, key)  # type: ignore[arg-type]
    widened = store.read_published()
    assert widened["version"] == 1
    assert widened["chunks"] > many
    small.limit, small.fail_after = 1 << 20, None      # now it fits whole
    assert publish_model(small, topics, second, store, key) == 1  # type: ignore[arg-type]
    assert set(small.retained) == {topics.model}
    assert store.read_published() == {"version": 2, "whole": True, "chunks": 0}


# --------------------------------------------------------------------------- real broker

class DeviceSide:
    """A fresh subscriber: collects what the broker retains under ``model/#``, verifies it."""

    def __init__(self, url: str, name: str, key: Ed25519PublicKey,
                 layout: ParamLayout) -> None:
        from fedbeat.broker.client import ClientOptions, MqttClient

        self.topics = FleetTopics(FLEET)
        self.layout = layout
        self.receiver = Receiver(FLEET, lambda header: key)
        self.seen: list[str] = []
        self.models: list[ReceivedModel] = []
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.client = MqttClient(url, name, options=ClientOptions(protocol="3.1.1"))
        self.client.subscribe(self.topics.model_chunks, self._on_message)

    def _on_message(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.seen.append(topic)
            try:
                message = self.receiver.receive(topic, payload)
                if message is not None:
                    self.models.append(receive_model(message, expected_layout=self.layout,
                                                     max_bytes=MAX_BYTES))
            except Exception as exc:     # reported by the test, not lost on the network thread
                self.errors.append(exc)

    def settle(self, expect_models: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.models) >= expect_models:
                    break
            time.sleep(0.05)
        time.sleep(0.5)                              # anything retained beyond it arrives too
        self.client.close()


def test_publish_and_receive_through_a_real_broker(tmp_path: Path, model_dir: Path) -> None:
    pytest.importorskip("amqtt", reason="needs the 'sim' extra (embedded broker)")
    from fedbeat.broker.client import ClientOptions, MqttClient
    from fedbeat.broker.embedded import EmbeddedBroker

    store = ModelStore.open(tmp_path / "registry", model_dir)
    topics = FleetTopics(FLEET)
    key = Ed25519PrivateKey.generate()
    versions = [store.initialize()]
    for round_id in (1, 2, 3):
        versions.append(store.commit(versions[-1].params + np.float32(1e-3),
                                     round_id=round_id))

    def publish(version_index: int, chunk_limit: int) -> int:
        options = ClientOptions(protocol="3.1.1", chunk_limit=chunk_limit)
        with MqttClient(broker.url, f"aggregator-{version_index}", options=options) as client:
            return publish_model(client, topics, versions[version_index], store, key)

    def fetch(name: str) -> DeviceSide:
        device = DeviceSide(broker.url, name, key.public_key(), store.layout)
        device.settle(expect_models=1)
        assert not device.errors, device.errors
        # QoS 1 is at least once, and a resubscription after a reconnect sends retained
        # messages again: a device may see the same model twice, never another one.
        assert len({m.version for m in device.models}) == 1
        return device

    with EmbeddedBroker() as broker:
        many = publish(0, 8 * 1024)
        assert many > 3
        device = fetch("dev-a")
        assert device.models[0].version == 1
        assert device.models[0].params.to_flat().tobytes() == versions[0].params.tobytes()
        assert set(device.seen) == {topics.model_chunk(i) for i in range(many)}

        fewer = publish(1, 32 * 1024)                # fewer chunks: the surplus is cleared
        assert 1 < fewer < many
        device = fetch("dev-b")
        assert device.models[0].version == 2
        assert set(device.seen) == {topics.model_chunk(i) for i in range(fewer)}

        assert publish(2, 1 << 20) == 1              # whole: every chunk topic is cleared
        device = fetch("dev-c")
        assert device.models[0].version == 3
        assert set(device.seen) == {topics.model}

        again = publish(3, 8 * 1024)                 # chunked again: the whole one is cleared
        device = fetch("dev-d")
        assert device.models[0].version == 4
        assert device.models[0].params.to_flat().tobytes() == versions[3].params.tobytes()
        assert set(device.seen) == {topics.model_chunk(i) for i in range(again)}
        assert store.read_published() == {"version": 4, "whole": False, "chunks": again}
