"""A fleet with six devices and a Mosquitto (TLS, client certificates) per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aggregator_harness import stop_all_aggregators
from mqtt_testing import MOSQUITTO_MISSING, build_fleet

from fedbeat.broker.launch import free_port
from fedbeat.broker.mosquitto import MosquittoBroker, MosquittoConfig, find_mosquitto

DEVICES = tuple(f"dev-{i}" for i in range(6))


@pytest.fixture(scope="module")
def fleet_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fleet(tmp_path_factory.mktemp("fleet") / "keys", devices=DEVICES)


@pytest.fixture(scope="module")
def mosquitto(fleet_keys: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[MosquittoBroker]:
    if find_mosquitto() is None:
        pytest.skip(MOSQUITTO_MISSING)
    config = MosquittoConfig(keys_dir=fleet_keys, data_dir=tmp_path_factory.mktemp("mosq"),
                             port=free_port(), bind="127.0.0.1")
    with MosquittoBroker(config) as broker:
        yield broker



@pytest.fixture(autouse=True)
def _no_aggregator_outlives_its_test() -> Iterator[None]:
    yield
    stop_all_aggregators()
