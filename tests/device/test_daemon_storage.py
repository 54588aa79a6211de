"""The device daemon on a full disk: a clear message, no crash, nothing already stored lost.

A real "database or disk is full" from SQLite, made by capping the beat store's page count,
hits the daemon's loop; no broker is needed because storing beats comes before any network.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from mqtt_testing import build_fleet

from fedbeat.device.config import example_device_config, load_device_config
from fedbeat.device.runtime.service import DeviceService, open_source
from fedbeat.device.trainer import Trainer


def test_a_full_disk_is_reported_and_stored_beats_are_kept(
        tmp_path: Path, model_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    keys = build_fleet(tmp_path / "keys", devices=("dev-1",))
    config_path = tmp_path / "device.toml"
    config_path.write_text(example_device_config(**{
        "device.keys": str(keys / "devices" / "dev-1"), "device.state_dir": str(tmp_path / "st"),
        "model.dir": str(model_dirs["ecg-cnn-s"]), "data.source": "synthetic",
        "data.speed": 0.0}))
    service = DeviceService(load_device_config(config_path))
    service.trainer = Trainer(service.model_dir)
    service.source = open_source(service.config)
    service._ingest_beats()                          # the first poll stores every beat
    stored = service.store.count()
    assert stored > 1000
    # The disk fills up: no page can be added any more.
    pages = service.store.db.execute("PRAGMA page_count").fetchone()[0]
    service.store.db.execute(f"PRAGMA max_page_count = {pages}")
    service.source = open_source(service.config)     # a fresh patient's worth of new beats
    service.source_done = False
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    with caplog.at_level(logging.ERROR, logger="fedbeat.device"):
        service.run(stop)                            # returns: the loop survived
    assert "local storage is failing" in caplog.text
    assert "free space in" in caplog.text
    assert service.store.count() == stored           # nothing already stored was lost
    service.close()
