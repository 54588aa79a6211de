"""The aggregator's Prometheus metrics: what an operator graphs and alerts on.

Counters and gauges are updated by the service's main thread as things happen and served by
``prometheus_client``'s HTTP server from its own thread (the library's metric objects are
thread-safe), so a scrape never touches the service's state or its SQLite connection. Counters
start from zero when the process starts, as Prometheus expects (``rate()`` handles resets);
the durable history is ``fedbeat aggregator status --json``. Names and meanings:
``docs/operations.md``.

``prometheus_client`` is the ``server`` extra: a device never installs it, and the aggregator
imports it only when ``service.metrics_port`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds from taking a message off the queue to its committed verdict."""


class MetricsUnavailableError(RuntimeError):
    """``service.metrics_port`` is set but ``prometheus_client`` is not installed."""


class ServiceMetrics:
    """One aggregator's metrics in their own registry (tests may run several services)."""

    def __init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise MetricsUnavailableError(
                "service.metrics_port needs prometheus_client: pip install 'fedbeat[server]' "
                "(or set metrics_port = 0)") from None
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter("fedbeat_rounds", "Rounds finished, by outcome (closed, aborted)",
                              ["state"], registry=r)
        self.accepted = Counter("fedbeat_updates_accepted", "Updates accepted into a round",
                                registry=r)
        self.rejected = Counter("fedbeat_updates_rejected", "Messages refused, by reason "
                                "(docs/protocol.md §8)", ["reason"], registry=r)
        self.participants = Gauge("fedbeat_round_participants",
                                  "Devices in the last closed round's aggregate", registry=r)
        self.open_round = Gauge("fedbeat_open_round", "Id of the open round (0: none)",
                                registry=r)
        self.model_version = Gauge("fedbeat_model_version", "Current global model version",
                                   registry=r)
        self.bytes_in = Counter("fedbeat_bytes_received", "MQTT payload bytes received from "
                                "devices", registry=r)
        self.bytes_out = Counter("fedbeat_bytes_published", "MQTT payload bytes published "
                                 "(announcements, models, receipts, SecAgg messages)", registry=r)
        self.latency = Histogram("fedbeat_ingest_latency_seconds", "From dequeue to a "
                                 "committed verdict, per message", buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.secagg_messages = Counter("fedbeat_secagg_messages", "Secure-aggregation stage "
                                       "messages taken (not counted as updates)", registry=r)
        self.secagg_devices = Gauge("fedbeat_secagg_stage_devices", "Devices that reached each "
                                    "secure-aggregation stage in the last secure round",
                                    ["stage"], registry=r)
        self._server: Any = None

    def serve(self, port: int, bind: str) -> int:
        """Start the HTTP endpoint (``/metrics``); returns the port it listens on."""
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(port, addr=bind, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def secagg_stages(self, stages: Mapping[str, int]) -> None:
        for stage, count in stages.items():
            self.secagg_devices.labels(stage).set(count)
