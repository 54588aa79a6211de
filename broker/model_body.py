"""The body of the signed ``model`` message (protocol §5) and how a device checks it.

The aggregator publishes the current global model retained on ``fedbeat/<fleet>/model`` (chunked
to ``…/model/<i>`` when larger than the chunk limit, protocol §6), inside a COSE_Sign1 envelope
of type ``model`` whose header carries ``m`` = the model version. The payload is one canonical
CBOR map (format 1)::

    {
      "format":        1,
      "version":       uint,        ; 1 … 2^53-1, equal to the header's "m"; only ever grows
      "model":         tstr,        ; architecture name, e.g. "ecg-cnn-s" (1-64 chars)
      "layout_digest": tstr,        ; SHA-256 hex of the parameter layout (ParamLayout.digest)
      "params":        bstr,        ; flat little-endian float32, 4 * layout.size bytes
      "params_sha256": tstr,        ; SHA-256 hex of "params"
      "round":         uint / null, ; the round that produced it; null for initial and rollback
      "reason":        tstr,        ; "initial" | "round" | "rollback"
      "created_at_ms": uint,        ; when the aggregator stored this version (Unix epoch, ms)
      "graphs":        {* tstr => tstr},  ; role -> SHA-256 hex of the ONNX graphs this model
                                          ; runs with (the aggregator's model manifest, without
                                          ; "params"); a device compares them with its own
      ? "tflite":        bstr,      ; the TFLite model with these weights baked in
      ? "tflite_sha256": tstr,      ; SHA-256 hex of "tflite" (present exactly when it is)
    }

Hashes are lowercase hex text (64 characters), the form ``manifest.json`` uses, so a device
compares them with its own files directly. The map has exactly these keys; anything else is
refused. The signature already protects integrity end to end; the SHA-256 fields let a device
check the parameters it keeps on disk later, and name them in logs without the bytes.

The device side (:func:`parse_model_body`) refuses, with ``Rejected``: a missing, extra or
mistyped field (``malformed``), parameters or TFLite bytes beyond ``max_bytes`` (``oversized``),
and a layout digest that is not the device's, a parameter vector of the wrong length, a hash
mismatch or a non-finite value (``bad_tensor``). Nothing else escapes it (fuzzed).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedbeat.broker.envelope import MAX_ROUND, MessageType, SignedMessage
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.messages import open_plain
from fedbeat.models.params import ParamLayout, Params

if TYPE_CHECKING:
    from fedbeat.models.manifest import ModelManifest

BODY_FORMAT = 1
REASONS = ("initial", "round", "rollback")
MAX_MODEL_NAME = 64
MAX_GRAPHS = 32
MAX_ROLE_CHARS = 64

_REQUIRED = frozenset({"format", "version", "model", "layout_digest", "params", "params_sha256",
                       "round", "reason", "created_at_ms", "graphs"})
_TFLITE = frozenset({"tflite", "tflite_sha256"})
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, eq=False)
class ReceivedModel:
    """A model body that passed :func:`parse_model_body`; ``params`` fit the device's layout."""

    version: int
    model: str
    layout_digest: str
    params: Params
    params_sha256: str
    round_id: int | None
    reason: str
    created_at_ms: int
    graphs: Mapping[str, str]
    tflite: bytes | None

    def mismatched_graphs(self, manifest: ModelManifest) -> list[str]:
        """Roles whose graph hash differs from (or is missing in) the device's ``manifest``.

        Empty means the device runs the same graphs the aggregator built; otherwise it should
        keep its model and report, since the parameters may not mean the same thing.
        """
        return sorted(role for role, digest in self.graphs.items()
                      if manifest.files.get(role, ("", ""))[1] != digest)


def _malformed(detail: str) -> Rejected:
    return Rejected(RejectReason.MALFORMED, f"model: {detail}")


def _bad(detail: str) -> Rejected:
    return Rejected(RejectReason.BAD_TENSOR, f"model: {detail}")


def _uint(body: Mapping[Any, Any], key: str, *, lo: int) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= MAX_ROUND:
        raise _malformed(f"{key} must be an integer in [{lo}, 2^53-1]")
    return value


def _optional_uint(body: Mapping[Any, Any], key: str) -> int | None:
    return None if body[key] is None else _uint(body, key, lo=0)


def _hex(body: Mapping[Any, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _malformed(f"{key} must be 64 lowercase hex characters")
    return value


def _bytes(body: Mapping[Any, Any], key: str) -> bytes:
    value = body[key]
    if not isinstance(value, bytes):
        raise _malformed(f"{key} must be a byte string")
    return value


def parse_model_body(body: Mapping[Any, Any], *, expected_layout: ParamLayout,
                     max_bytes: int) -> ReceivedModel:
    """Validate a model body (module docstring) against the device's parameter layout.

    Parameters
    ----------
    body
        The map from :func:`fedbeat.broker.messages.open_plain` of a verified message.
    expected_layout
        The layout of the device's model directory; a model for another architecture is
        refused before its bytes are interpreted.
    max_bytes
        Bound on ``len(params) + len(tflite)``.

    Raises
    ------
    Rejected
        ``malformed``, ``oversized`` or ``bad_tensor`` (and nothing else, whatever ``body``).
    """
    if not isinstance(body, Mapping):
        raise _malformed("body must be a map")
    keys = set(body)
    if keys != _REQUIRED and keys != _REQUIRED | _TFLITE:
        raise _malformed("unexpected or missing fields")
    if _uint(body, "format", lo=0) != BODY_FORMAT:
        raise Rejected(RejectReason.UNSUPPORTED_VERSION,
                       f"model body format {body['format']}, this fedbeat reads {BODY_FORMAT}")
    version = _uint(body, "version", lo=1)
    model = body["model"]
    if not isinstance(model, str) or not 1 <= len(model) <= MAX_MODEL_NAME:
        raise _malformed("model must be a name of 1-64 characters")
    reason = body["reason"]
    if not isinstance(reason, str) or reason not in REASONS:
        raise _malformed("reason must be initial, round or rollback")
    round_id = _optional_uint(body, "round")
    created_at_ms = _uint(body, "created_at_ms", lo=0)
    layout_digest = _hex(body, "layout_digest")
    params_sha256 = _hex(body, "params_sha256")
    graphs_map = body["graphs"]
    if not isinstance(graphs_map, Mapping) or len(graphs_map) > MAX_GRAPHS:
        raise _malformed(f"graphs must be a map of at most {MAX_GRAPHS} entries")
    graphs: dict[str, str] = {}
    for role, digest in graphs_map.items():
        if (not isinstance(role, str) or not 1 <= len(role) <= MAX_ROLE_CHARS
                or not isinstance(digest, str) or not _HEX64.fullmatch(digest)):
            raise _malformed("graphs must map role names to SHA-256 hex")
        graphs[role] = digest
    raw = _bytes(body, "params")
    tflite = _bytes(body, "tflite") if "tflite" in body else None
    tflite_sha256 = _hex(body, "tflite_sha256") if tflite is not None else None
    size = len(raw) + (len(tflite) if tflite is not None else 0)
    if size > max_bytes:
        raise Rejected(RejectReason.OVERSIZED, f"model: {size} bytes, limit {max_bytes}")
    if layout_digest != expected_layout.digest():
        raise _bad("parameter layout differs from this device's model (another architecture)")
    if len(raw) != 4 * expected_layout.size:
        raise _bad(f"params hold {len(raw)} bytes, the layout needs {4 * expected_layout.size}")
    if hashlib.sha256(raw).hexdigest() != params_sha256:
        raise _bad("params do not match params_sha256")
    if tflite is not None and hashlib.sha256(tflite).hexdigest() != tflite_sha256:
        raise _bad("tflite does not match tflite_sha256")
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        raise _bad("params contain NaN or infinity")
    params = Params.from_flat(expected_layout, vector)
    return ReceivedModel(version, model, layout_digest, params, params_sha256, round_id, reason,
                         created_at_ms, graphs, tflite)


def receive_model(message: SignedMessage, *, expected_layout: ParamLayout,
                  max_bytes: int) -> ReceivedModel:
    """Open a verified ``model`` message and parse its body; the header's model version must
    equal the body's (a signed header and body that disagree are refused as ``malformed``)."""
    if message.header.type is not MessageType.MODEL:
        raise Rejected(RejectReason.UNKNOWN_TYPE, "not a model message")
    received = parse_model_body(open_plain(message), expected_layout=expected_layout,
                                max_bytes=max_bytes)
    if received.version != message.header.model_version:
        raise _malformed("header and body disagree on the model version")
    return received
