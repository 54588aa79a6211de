"""The MQTT topic tree of one fleet: who publishes and who subscribes where.

Everything lives under ``fedbeat/<fleet>/``. Topic names carry routing only; identity, round and
model version travel inside the signed envelope, so the protocol works on MQTT 3.1.1 brokers that
have no message properties. Broker ACLs (``broker/templates``) mirror this tree: a device writes
only its own ``update`` and ``status`` topics and reads only the fleet's public ones and its own
``inbox``. ``docs/protocol.md`` is the normative description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "fedbeat"
AGGREGATOR_ID = "aggregator"
"""The aggregator's identity (sender id, certificate CN); reserved, never a device id."""

FLEET_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
"""A fleet id (use with ``fullmatch``): a topic level, so no ``/``, ``+`` or ``#``."""

DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A device id, also an MQTT user name and topic level (``aggregator`` matches, but is
reserved)."""


@dataclass(frozen=True)
class DeviceTopic:
    """A topic under ``device/<id>/`` split into its parts."""

    device_id: str
    kind: str          # "update", "status" or "inbox"


@dataclass(frozen=True)
class FleetTopics:
    """Topic names for ``fleet``; the fleet id is validated by whoever builds this."""

    fleet: str

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.fleet}"

    @property
    def round(self) -> str:
        """Round announcements: aggregator → devices, QoS 1, retained."""
        return f"{self.prefix}/round"

    @property
    def model(self) -> str:
        """The current global model (or its chunk pointer): aggregator → devices, retained."""
        return f"{self.prefix}/model"

    @property
    def model_chunks(self) -> str:
        """Subscription filter for the retained chunks of the current model."""
        return f"{self.prefix}/model/#"

    def model_chunk(self, index: int) -> str:
        return f"{self.prefix}/model/{index}"

    @property
    def aggregator_status(self) -> str:
        """Aggregator presence: retained, also its last will."""
        return f"{self.prefix}/aggregator/status"

    def update(self, device_id: str) -> str:
        """Sealed updates: one device → aggregator, QoS 1, not retained."""
        return f"{self.prefix}/device/{device_id}/update"

    def status(self, device_id: str) -> str:
        """Device presence and progress: retained, also the device's last will."""
        return f"{self.prefix}/device/{device_id}/status"

    def inbox(self, device_id: str) -> str:
        """Aggregator → one device (e.g. secure-aggregation shares)."""
        return f"{self.prefix}/device/{device_id}/inbox"

    @property
    def all_updates(self) -> str:
        return f"{self.prefix}/device/+/update"

    @property
    def all_status(self) -> str:
        return f"{self.prefix}/device/+/status"

    def shared_updates(self, group: str) -> str:
        """MQTT 5 shared subscription: several aggregator workers split the update stream."""
        return f"$share/{group}/{self.all_updates}"

    def parse_device_topic(self, topic: str) -> DeviceTopic | None:
        """``DeviceTopic`` for ``…/device/<id>/<kind>`` of this fleet, else ``None``."""
        head = f"{self.prefix}/device/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 2 or not parts[0] or parts[1] not in ("update", "status", "inbox"):
            return None
        return DeviceTopic(parts[0], parts[1])
