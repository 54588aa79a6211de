"""Building and publishing the signed ``model`` message (format: :mod:`fedbeat.broker.model_body`).

The aggregator publishes the current global model retained on ``fedbeat/<fleet>/model`` (chunked
to ``…/model/<i>`` when larger than the chunk limit, protocol §6); devices parse it with
:func:`fedbeat.broker.model_body.parse_model_body`, which lives in ``broker`` because the device
must not import the aggregator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedbeat.broker.chunks import split
from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.messages import sign_plain
from fedbeat.broker.model_body import BODY_FORMAT
from fedbeat.broker.topics import AGGREGATOR_ID, FleetTopics

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedbeat.aggregator.model_store import ModelStore, ModelVersion
    from fedbeat.broker.client import MqttClient

def model_body(version: ModelVersion, store: ModelStore) -> dict[str, Any]:
    """The CBOR map (module docstring) for ``version`` from ``store``.

    Files are re-read and re-checked against their SHA-256 here, at the last moment before
    signing, so a file altered since ``version`` was loaded is never signed.

    Raises
    ------
    ModelStoreError
        If a file of the version no longer matches its hash.
    """
    from fedbeat.aggregator.model_store import PARAMS_FILE

    params = version.read_file(PARAMS_FILE)
    graphs = {role: digest for role, (_, digest) in store.model_dir.manifest.files.items()
              if role != "params"}
    body: dict[str, Any] = {
        "format": BODY_FORMAT,
        "version": version.version,
        "model": version.model,
        "layout_digest": version.layout_digest,
        "params": params,
        "params_sha256": version.params_sha256,
        "round": version.round_id,
        "reason": version.reason.value,
        "created_at_ms": version.created_at_ms,
        "graphs": graphs,
    }
    path = version.tflite_path
    if path is not None:
        body["tflite"] = version.read_file(path.name)
        body["tflite_sha256"] = version.files[path.name]
    return body


def publish_model(client: MqttClient, topics: FleetTopics, version: ModelVersion,
                  store: ModelStore, signing_key: Ed25519PrivateKey, *,
                  now: float | None = None) -> int:
    """Sign ``version`` and publish it retained on ``topics.model``; returns the frame count.

    A topic retains only its last message, so what a previous publication left must go: when
    this one is whole, the old chunks ``model/<i>`` are cleared; when it is chunked, an old
    whole message on ``model`` and chunks beyond this one's count are cleared (empty retained
    messages, which receivers ignore, protocol §6). ``root/published.json`` records what is
    retained; it is widened *before* publishing, so a crash mid-publication still clears
    everything next time.

    Raises
    ------
    ModelStoreError
        If the version's files no longer match their hashes.
    BrokerConnectionError
        If the broker does not acknowledge a message.
    """
    header = Header.new(MessageType.MODEL, fleet=topics.fleet, sender=AGGREGATOR_ID,
                        round=version.round_id or 0, model_version=version.version, now=now)
    message = sign_plain(header, model_body(version, store), signing_key)
    before = store.read_published()

    def shape(frames: int) -> tuple[bool, int]:       # (whole on topics.model, chunk topics)
        return frames == 1, 0 if frames == 1 else frames

    whole, chunks = shape(len(split(message, client.chunk_limit())))
    store.write_published(version=before["version"], whole=before["whole"] or whole,
                          chunks=max(before["chunks"], chunks))
    published = client.publish_message(topics.model, message, retain=True)
    if shape(published) != (whole, chunks):        # the broker's limit changed (reconnect)
        whole, chunks = shape(published)
        store.write_published(version=before["version"], whole=True,
                              chunks=max(before["chunks"], published))
    if before["whole"] and not whole:
        client.publish(topics.model, b"", retain=True)
    for index in range(chunks, before["chunks"]):
        client.publish(topics.model_chunk(index), b"", retain=True)
    store.write_published(version=version.version, whole=whole, chunks=chunks)
    return published


# ------------------------------------------------------------------------------ device

