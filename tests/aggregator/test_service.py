"""The aggregator service end to end: a real process, Mosquitto with TLS, scripted devices.

Each test uses its own fleet prefix-free state directory; devices are real MQTT clients with
certificates, and the aggregator runs as ``fedbeat aggregator run`` in a child process, so
``kill -9`` is a real kill.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aggregator_harness import (
    AggregatorProcess,
    Device,
    scripted_delta,
    wait_until,
    write_config,
)
from click.testing import CliRunner

from fedbeat.aggregator.model_store import ModelStore
from fedbeat.broker.mosquitto import MosquittoBroker
from fedbeat.broker.rounds import Announcement
from fedbeat.models.manifest import load_model_dir
from fedbeat.tools import pki
from fedbeat.tools.cli import cli

pytestmark = pytest.mark.slow


@pytest.fixture
def model_dir(model_dirs: dict[str, Path]) -> Path:
    return model_dirs["ecg-cnn-s"]


@pytest.fixture
def devices(mosquitto: MosquittoBroker, fleet_keys: Path,
            model_dir: Path) -> Iterator[list[Device]]:
    made: list[Device] = []
    yield made
    for device in made:
        device.close()


def start_devices(made: list[Device], url: str, keys: Path, model_dir: Path,
                  names: list[str]) -> list[Device]:
    for name in names:
        made.append(Device(url, keys / "devices" / name, model_dir))
    return made


def final_params(state_dir: Path, model_dir: Path) -> np.ndarray:
    return np.array(ModelStore.open(state_dir / "models", model_dir).current().params)


def status_of(config: Path) -> dict[str, object]:
    result = CliRunner().invoke(cli, ["aggregator", "status", "--config", str(config),
                                      "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def run_rounds(tmp: Path, mosquitto: MosquittoBroker, keys: Path, model_dir: Path,
               devices: list[Device], *, rounds: int, crash_at: str | None = None
               ) -> tuple[Path, Path]:
    """Run the aggregator for ``rounds`` rounds with 4 devices; if ``crash_at``, it is killed
    there once and restarted. Returns (config, state dir)."""
    state = tmp / "state"
    config = write_config(tmp / "aggregator.toml", keys=keys, broker=mosquitto.tls_url,
                          model_dir=model_dir, state_dir=state, rounds__rounds=rounds)
    process = AggregatorProcess(config, tmp / "aggregator.log", crash_at=crash_at).start()
    if not devices:
        start_devices(devices, mosquitto.tls_url, keys, model_dir,
                      ["dev-0", "dev-1", "dev-2", "dev-3"])
    code = process.wait()
    if crash_at:
        assert code == -9, process.output()
        process = AggregatorProcess(config, tmp / "aggregator.log").start()
        code = process.wait()
    assert code == 0, process.output()
    return config, state


def test_three_rounds_of_fedavg_end_to_end(tmp_path: Path, mosquitto: MosquittoBroker,
                                           fleet_keys: Path, model_dir: Path,
                                           devices: list[Device]) -> None:
    config, state = run_rounds(tmp_path, mosquitto, fleet_keys, model_dir, devices, rounds=3)
    # The expected model: initial parameters plus, each round, the mean of the four deltas.
    layout = load_model_dir(model_dir).manifest.layout
    expected = load_model_dir(model_dir).initial_params().to_flat().astype(np.float64)
    for round_id in (1, 2, 3):
        deltas = [np.concatenate([d.ravel() for d in scripted_delta(
            list(layout.entries), f"dev-{i}", round_id).values()]) for i in range(4)]
        expected = (expected + np.mean(deltas, axis=0)).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(final_params(state, model_dir), expected, atol=1e-6)
    doc = status_of(config)
    assert [r["state"] for r in doc["rounds"]] == ["closed"] * 3  # type: ignore[index]
    assert [m["participants"] for m in doc["metrics"]] == [4, 4, 4]  # type: ignore[index]
    # Every device got an "accepted" receipt for each round.
    for device in devices:
        receipts = [device.next_receipt(5) for _ in range(3)]
        assert sorted(r["round"] for r in receipts) == [1, 2, 3]
        assert all(r["accepted"] for r in receipts)


@pytest.mark.parametrize("crash_at", ["after-accept:2", "after-accept:6", "before-model-commit",
                                      "after-model-commit", "after-round-closed"])
def test_kill_9_anywhere_loses_nothing_and_counts_nothing_twice(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        devices: list[Device], crash_at: str) -> None:
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"
    reference_dir.mkdir()
    crashed_dir.mkdir()
    _, reference = run_rounds(reference_dir, mosquitto, fleet_keys, model_dir, devices,
                              rounds=2)
    for device in devices:
        device.close()
    devices.clear()
    config, crashed = run_rounds(crashed_dir, mosquitto, fleet_keys, model_dir, devices,
                                 rounds=2, crash_at=crash_at)
    # Bit for bit the model of the run that was never interrupted.
    assert final_params(crashed, model_dir).tobytes() == \
        final_params(reference, model_dir).tobytes()
    doc = status_of(config)
    assert [m["participants"] for m in doc["metrics"]] == [4, 4]  # type: ignore[index]
    assert all(d["accepted"] == 2 for d in doc["devices"])  # type: ignore[index, union-attr]


def wait_for_open_round(device: Device, mode: str = "sync") -> Announcement:
    """The first open round of ``mode`` (an earlier test's retained announcement may come
    first: the broker is shared by the module)."""
    while True:
        announcement = device.announcements.get(timeout=30)
        if announcement.state == "open" and announcement.mode == mode:
            return announcement


def test_bad_updates_are_rejected_with_named_reasons(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        devices: list[Device]) -> None:
    keys = fleet_keys    # dev-5 is revoked below; no other test in this module uses it
    config = write_config(tmp_path / "aggregator.toml", keys=keys, broker=mosquitto.tls_url,
                          model_dir=model_dir, state_dir=tmp_path / "state", rounds__rounds=1,
                          rounds__min_participants=1, rounds__target_participants=6)
    process = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    try:
        device = start_devices(devices, mosquitto.tls_url, keys, model_dir, ["dev-4"])[0]
        device.answer_rounds = False
        announcement = wait_for_open_round(device)
        round_id, version = announcement.round, announcement.model_version
        layout = dict(device.layout)
        name = next(iter(layout))
        topic = device.topics.update("dev-4")

        def send(data: bytes) -> None:
            device.client.publish(topic, data)

        def receipt_reason() -> str:
            return str(device.next_receipt(30)["reason"])

        bad_shapes = {name: np.zeros((3, 3), np.float32)}
        nan = {name: np.full(layout[name], np.nan, np.float32)}
        huge = {name: np.full(layout[name], 50.0, np.float32)}
        cases = [(device.update_for(round_id, version, tensors=bad_shapes), "bad_tensor"),
                 (device.update_for(round_id, version, tensors=nan), "bad_tensor"),
                 (device.update_for(round_id, version, tensors=huge), "norm_exceeded"),
                 (device.update_for(round_id, version + 5), "wrong_model_version")]
        for data, reason in cases:
            send(data)
            assert receipt_reason() == reason
        good = device.update_for(round_id, version)
        send(good)
        assert device.next_receipt(30)["accepted"] is True
        send(device.update_for(round_id, version))        # a second update, fresh nonce
        assert receipt_reason() == "duplicate"
        send(good)                                       # the same bytes again
        send(device.update_for(round_id - 1, version))   # a round that is over
        # Unproven senders get no receipt; the counts show them.
        pki.revoke_device(keys, "dev-5")
        revoked = start_devices(devices, mosquitto.tls_url, keys, model_dir, ["dev-5"])[0]
        revoked.answer_rounds = False
        revoked.client.publish(revoked.topics.update("dev-5"),
                               revoked.update_for(round_id, version))
        wait_until(lambda: status_of(config)["rejections"].get("revoked_sender") == 1,  # type: ignore[union-attr]
                   what="the revoked device's update to be refused")
        rejections = status_of(config)["rejections"]
        assert rejections == {"bad_tensor": 2, "norm_exceeded": 1, "wrong_model_version": 1,
                              "duplicate": 1, "replay": 1, "stale_round": 1,
                              "revoked_sender": 1}
    finally:
        process.stop()


@pytest.mark.parametrize(("answering", "minimum", "outcome"), [
    (2, 1, "closed"),        # at the deadline with at least the minimum: close with what came
    (1, 3, "aborted"),       # too few even after an extension: abort, with a reason
])
def test_deadline_and_minimum_participants(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        devices: list[Device], answering: int, minimum: int, outcome: str) -> None:
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir,
                          state_dir=tmp_path / "state", rounds__rounds=1,
                          rounds__min_participants=minimum, rounds__target_participants=4,
                          rounds__deadline_s=1.5, rounds__max_extensions=1)
    process = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    start_devices(devices, mosquitto.tls_url, fleet_keys, model_dir,
                  [f"dev-{i}" for i in range(answering)])
    assert process.wait() == 0, process.output()
    row = status_of(config)["rounds"][0]  # type: ignore[index]
    assert row["state"] == outcome
    seen = []
    while not devices[0].announcements.empty():
        seen.append(devices[0].announcements.get())
    final = [a for a in seen if a.round == row["round_id"]][-1]
    assert final.state == outcome
    if outcome == "aborted":
        assert row["extensions"] == 1
        assert "minimum 3" in final.reason
    else:
        assert status_of(config)["metrics"][0]["participants"] == answering  # type: ignore[index]


def test_a_round_closes_once_every_device_answered_even_if_one_was_refused(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        devices: list[Device]) -> None:
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir,
                          state_dir=tmp_path / "state", rounds__rounds=1,
                          rounds__min_participants=2, rounds__target_participants=3,
                          rounds__deadline_s=120.0)
    process = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    started = time.monotonic()
    start_devices(devices, mosquitto.tls_url, fleet_keys, model_dir, ["dev-0", "dev-1"])
    devices.append(Device(mosquitto.tls_url, fleet_keys / "devices" / "dev-2", model_dir,
                          tamper=lambda tensors: {n: t * 100 for n, t in tensors.items()}))
    assert process.wait() == 0, process.output()
    assert time.monotonic() - started < 60          # not held until the 120 s deadline
    row = status_of(config)["rounds"][0]  # type: ignore[index]
    assert row["state"] == "closed"
    assert status_of(config)["metrics"][0]["participants"] == 2  # type: ignore[index]
    assert status_of(config)["rejections"] == {"norm_exceeded": 1}


def test_fedbuff_accepts_stale_updates_with_staleness_weights(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        devices: list[Device]) -> None:
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir,
                          state_dir=tmp_path / "state", rounds__rounds=3,
                          aggregation__strategy="fedbuff", aggregation__buffer_size=2,
                          aggregation__max_staleness=1)
    process = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    a, b = start_devices(devices, mosquitto.tls_url, fleet_keys, model_dir, ["dev-2", "dev-3"])
    for device in (a, b):
        device.answer_rounds = False
    entries = list(a.layout)

    def delta(tag: int) -> dict[str, np.ndarray]:
        return scripted_delta(entries, "buffered", tag)

    def send(device: Device, round_id: int, base: int, tag: int) -> dict[object, object]:
        device.client.publish(device.topics.update(device.identity.device_id),
                              device.update_for(round_id, base, tensors=delta(tag)))
        return device.next_receipt(30)

    def flat(tensors: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([t.ravel() for t in tensors.values()]).astype(np.float64)

    def weight(staleness: int) -> float:     # 1/sqrt(1 + staleness) on a 2^-20 grid
        return round(2**20 / np.sqrt(1 + staleness)) / 2**20

    announcement = wait_for_open_round(a, mode="async")
    assert announcement.max_staleness == 1
    # Buffer 1 (model v1): two fresh updates.
    def accepted(receipt: dict[object, object]) -> bool:
        assert receipt["accepted"], receipt          # show the reason if not
        return True

    assert accepted(send(a, 1, 1, 1))
    assert accepted(send(b, 1, 1, 2))
    # Buffer 2 (model v2): one update trained from v1 (staleness 1), one fresh.
    wait_until(lambda: any(x.round == 2 and x.state == "open"
                           for x in list(a.announcements.queue)), what="buffer 2")
    assert accepted(send(a, 1, 1, 3))
    assert accepted(send(b, 2, 2, 4))
    # Buffer 3 (model v3): v1 is now two versions behind, beyond max_staleness.
    wait_until(lambda: any(x.round == 3 and x.state == "open"
                           for x in list(a.announcements.queue)), what="buffer 3")
    assert send(a, 2, 1, 5)["reason"] == "wrong_model_version"
    assert accepted(send(a, 3, 3, 6))
    assert accepted(send(b, 2, 2, 7))
    assert process.wait() == 0, process.output()
    expected = load_model_dir(model_dir).initial_params().to_flat().astype(np.float64)
    for buffer in ([(1, 0), (2, 0)], [(3, 1), (4, 0)], [(6, 0), (7, 1)]):
        step = sum(weight(tau) * flat(delta(tag)) for tag, tau in buffer) / len(buffer)
        expected = (expected + step).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(final_params(tmp_path / "state", model_dir), expected,
                               atol=2e-6)


def test_updates_arriving_together_fill_fedbuff_buffers_in_turn(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        devices: list[Device]) -> None:
    # Four updates at once, buffers of two: the service ingests waiting updates together (one
    # commit), but never more than the buffer has room for, and closes a full buffer before
    # the next update, so every one is accepted (the last two with staleness 1).
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir,
                          state_dir=tmp_path / "state", rounds__rounds=2,
                          aggregation__strategy="fedbuff", aggregation__buffer_size=2,
                          aggregation__max_staleness=1)
    process = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    group = start_devices(devices, mosquitto.tls_url, fleet_keys, model_dir,
                          ["dev-0", "dev-1", "dev-2", "dev-3"])   # dev-5 is revoked
    for device in group:
        device.answer_rounds = False
    announcement = wait_for_open_round(group[0], mode="async")
    for device in group:
        device.client.publish(device.topics.update(device.identity.device_id),
                              device.update_for(announcement.round,
                                                announcement.model_version))
    receipts = [device.next_receipt(30) for device in group]
    assert all(r["accepted"] for r in receipts), receipts
    assert process.wait() == 0, process.output()
    assert [m["participants"] for m in status_of(config)["metrics"]] == [2, 2]  # type: ignore[index,union-attr]


@pytest.mark.mitdb
def test_server_side_evaluation_after_every_round(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        devices: list[Device], mitdb_dir: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir, state_dir=state,
                          rounds__rounds=2, evaluation__data=str(mitdb_dir),
                          evaluation__max_beats=3000)
    process = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    start_devices(devices, mosquitto.tls_url, fleet_keys, model_dir,
                  ["dev-0", "dev-1", "dev-2", "dev-3"])
    assert process.wait(180) == 0, process.output()
    history = status_of(config)["metrics"]
    assert len(history) == 2  # type: ignore[arg-type]
    for entry in history:  # type: ignore[union-attr]
        evaluation = entry["evaluation"]
        assert evaluation["beats"] == 3000
        assert "DS2" in evaluation["data"]
        assert sum(map(sum, evaluation["confusion_matrix"])) == 3000
        assert 0.0 <= evaluation["accuracy"] <= 1.0


def test_unreadable_evaluation_data_is_a_clear_error(tmp_path: Path, fleet_keys: Path,
                                                     model_dir: Path) -> None:
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker="mqtt://127.0.0.1:1", model_dir=model_dir,
                          state_dir=tmp_path / "state", evaluation__data=str(tmp_path))
    result = CliRunner().invoke(cli, ["aggregator", "run", "--config", str(config)])
    assert result.exit_code == 1
    assert "holds no MIT-BIH records" in result.output
    assert "Traceback" not in result.output


def test_a_secure_round_cut_by_a_crash_is_aborted_on_restart_and_the_next_opens(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        devices: list[Device]) -> None:
    """SecAgg state (the devices' ephemeral keys, the stage sets) is not persisted: a restart
    aborts the round it cut, says why, and opens the next one."""
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir,
                          state_dir=tmp_path / "state", rounds__rounds=3,
                          secagg__enabled=True, secagg__bits=16)
    process = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    device = start_devices(devices, mosquitto.tls_url, fleet_keys, model_dir, ["dev-5"])[0]
    device.answer_rounds = False
    first = wait_for_open_round(device, mode="secagg")
    assert first.secagg.bits == 16
    assert process.proc is not None
    process.proc.kill()
    process.wait()
    restarted = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    try:
        nxt = wait_for_open_round(device, mode="secagg")
        assert nxt.round == first.round + 1
        rounds = {r["round_id"]: r for r in status_of(config)["rounds"]}  # type: ignore[union-attr]
        assert rounds[first.round]["state"] == "aborted"
        assert "restarted during secure aggregation" in rounds[first.round]["reason"]
    finally:
        restarted.stop()


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("aggregation__strategy", "median", "reveals only the sum"),
    ("aggregation__norm_bound", True, "reveals only the sum"),
    ("secagg__bits", 3, "use more bits"),          # 8 levels cannot hold 4 devices' rounding
])
def test_secure_aggregation_refuses_settings_it_cannot_serve_at_start(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        setting: str, value: object, message: str) -> None:
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir,
                          state_dir=tmp_path / "state", secagg__enabled=True,
                          **{setting: value})
    result = CliRunner().invoke(cli, ["aggregator", "run", "--config", str(config)])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def _scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {sample name with labels: value} (Prometheus text format)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_prometheus_metrics_count_rounds_updates_bytes_and_latency(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        devices: list[Device]) -> None:
    from fedbeat.broker.launch import free_port

    port = free_port()
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir,
                          state_dir=tmp_path / "state", rounds__rounds=0,
                          service__metrics_port=port)
    process = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    start_devices(devices, mosquitto.tls_url, fleet_keys, model_dir,
                  ["dev-0", "dev-1", "dev-2", "dev-3"])
    wait_until(lambda: sum(r["state"] == "closed"  # type: ignore[index]
                           for r in status_of(config)["rounds"]) >= 2)  # type: ignore[union-attr]
    samples = _scrape(port)
    process.stop()
    assert samples['fedbeat_rounds_total{state="closed"}'] >= 2
    assert samples["fedbeat_updates_accepted_total"] >= 8
    assert samples["fedbeat_round_participants"] == 4
    assert samples["fedbeat_model_version"] >= 3
    assert samples["fedbeat_open_round"] >= 3
    assert samples["fedbeat_bytes_received_total"] > 8 * 4 * 4000      # sealed ecg-cnn-s updates
    assert samples["fedbeat_bytes_published_total"] > 3 * 4 * 4000     # three signed models
    assert samples["fedbeat_ingest_latency_seconds_count"] >= 8
    assert 0 < samples["fedbeat_ingest_latency_seconds_sum"] < 60


def test_metrics_port_taken_is_a_clear_error(tmp_path: Path, mosquitto: MosquittoBroker,
                                            fleet_keys: Path, model_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                              broker=mosquitto.tls_url, model_dir=model_dir,
                              state_dir=tmp_path / "state",
                              service__metrics_port=taken.getsockname()[1])
        result = CliRunner().invoke(cli, ["aggregator", "run", "--config", str(config)])
    assert result.exit_code != 0
    assert "metrics_port" in result.output
    assert "Traceback" not in result.output


def test_a_secure_round_whose_model_was_committed_before_a_crash_is_finished_on_restart(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path, model_dir: Path,
        devices: list[Device]) -> None:
    """The sum of a secure round cannot be recomputed after a crash; if the new model was
    committed, the restart closes the round with it (no crash loop) and goes on."""
    state = tmp_path / "state"
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir, state_dir=state,
                          rounds__rounds=3, secagg__enabled=True, secagg__bits=16)
    process = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    device = start_devices(devices, mosquitto.tls_url, fleet_keys, model_dir, ["dev-5"])[0]
    device.answer_rounds = False
    first = wait_for_open_round(device, mode="secagg")
    process.stop()
    # what a crash between the model commit and closing the round leaves behind
    store = ModelStore.open(state / "models", model_dir)
    committed = store.commit(np.array(store.current().params) + np.float32(0.5),
                             round_id=first.round, metrics={})
    restarted = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    try:
        nxt = wait_for_open_round(device, mode="secagg")
        assert nxt.round == first.round + 1
        assert nxt.model_version == committed.version
        rounds = {r["round_id"]: r for r in status_of(config)["rounds"]}  # type: ignore[union-attr]
        assert rounds[first.round]["state"] == "closed"
        assert rounds[first.round]["result_version"] == committed.version
        assert restarted.proc is not None
        assert restarted.proc.poll() is None                  # still running, no crash loop
    finally:
        restarted.stop()
