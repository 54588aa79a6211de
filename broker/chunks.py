"""Chunking of messages above a broker's size limit, and bounded reassembly.

AWS IoT Core caps MQTT messages at 128 KiB and EMQX at 1 MiB by default, while a model or an
``ecg-cnn-m`` update can be larger. A message above the limit travels as chunk frames, each a
CBOR array that carries the whole transfer's manifest::

    [1, transfer_id: bstr(16), index: uint, count: uint, total: uint, sha256: bstr(32), data: bstr]

Every chunk repeats the manifest, so reassembly can start from whichever chunk arrives first and
needs no extra message. A chunk frame begins with the CBOR byte ``0x87`` (array of 7); a whole
envelope with ``0xd2`` (tag 18), which is how a receiver tells them apart. The reassembled bytes
are an ordinary signed envelope, checked like any other: chunks are not signed one by one, the
SHA-256 catches corruption and the envelope's signature catches forgery.

Reassembly holds memory only within explicit bounds (per transfer, per sender, in total),
forgets transfers that stall past a timeout, accepts chunks in any order, ignores exact
duplicates (QoS 1 redelivers) and refuses a chunk that contradicts its transfer.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from fedbeat.broker import cbor
from fedbeat.broker.errors import Rejected, RejectReason

CHUNK_VERSION = 1
DEFAULT_CHUNK_LIMIT = 128 * 1024
TRANSFER_ID_BYTES = 16
_FRAME_OVERHEAD = 96          # generous bound on everything in a frame but the data
_CHUNK_MARKER = 0x87          # CBOR: array of 7 items


@dataclass(frozen=True)
class Chunk:
    """One decoded chunk frame."""

    transfer_id: bytes
    index: int
    count: int
    total: int
    sha256: bytes
    data: bytes

    def encode(self) -> bytes:
        return cbor.encode([CHUNK_VERSION, self.transfer_id, self.index, self.count, self.total,
                            self.sha256, self.data])

    @classmethod
    def decode(cls, frame: bytes, max_total: int) -> Chunk:
        items = cbor.as_sequence(cbor.decode(frame, "chunk"), "chunk", 7)
        version, transfer_id, index, count, total, digest, data = items
        if version != CHUNK_VERSION or isinstance(version, bool):
            raise Rejected(RejectReason.UNSUPPORTED_VERSION, "unknown chunk version")
        if not (isinstance(transfer_id, bytes) and len(transfer_id) == TRANSFER_ID_BYTES
                and isinstance(digest, bytes) and len(digest) == 32
                and isinstance(data, bytes) and data):
            raise Rejected(RejectReason.MALFORMED, "chunk fields have the wrong types")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count, total)):
            raise Rejected(RejectReason.MALFORMED, "chunk counters must be integers")
        if total > max_total:
            raise Rejected(RejectReason.OVERSIZED, f"transfer of {total} bytes, "
                           f"limit {max_total}")
        if not (1 <= count <= total and 0 <= index < count and len(data) <= total):
            raise Rejected(RejectReason.CHUNK_MISMATCH, "chunk counters are inconsistent")
        return cls(transfer_id, index, count, total, digest, data)


def is_chunk(message: bytes) -> bool:
    """True if ``message`` is a chunk frame rather than a whole envelope."""
    return bool(message) and message[0] == _CHUNK_MARKER


def split(message: bytes, limit: int = DEFAULT_CHUNK_LIMIT) -> list[bytes]:
    """``[message]`` if it fits in ``limit`` bytes, else chunk frames no larger than ``limit``."""
    if limit <= _FRAME_OVERHEAD:
        raise ValueError(f"chunk limit must exceed {_FRAME_OVERHEAD} bytes, got {limit}")
    if len(message) <= limit:
        return [message]
    size = limit - _FRAME_OVERHEAD
    count = math.ceil(len(message) / size)
    transfer_id = os.urandom(TRANSFER_ID_BYTES)
    digest = hashlib.sha256(message).digest()
    return [Chunk(transfer_id, i, count, len(message), digest,
                  message[i * size:(i + 1) * size]).encode() for i in range(count)]


@dataclass
class _Transfer:
    first: Chunk
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    received: int = 0

    def matches(self, chunk: Chunk) -> bool:
        return (chunk.count, chunk.total, chunk.sha256) == (
            self.first.count, self.first.total, self.first.sha256)


@dataclass(frozen=True)
class ReassemblyLimits:
    """Memory bounds; the defaults suit an aggregator of a few thousand devices."""

    max_message_bytes: int = 16 * 1024 * 1024   # one reassembled message
    max_pending_per_sender: int = 32 * 1024 * 1024
    max_pending_total: int = 512 * 1024 * 1024
    timeout_s: float = 120.0
    remember_completed: int = 4096              # transfer ids kept to drop late duplicates


class Reassembler:
    """Collects chunk frames per sender and returns each message once it is complete.

    Not thread-safe: feed it from one thread (the MQTT network thread or a worker queue).
    A sender's budget counts the *declared* size of each open transfer, so a sender cannot
    reserve more than ``max_pending_per_sender`` however it interleaves its transfers.
    """

    def __init__(self, limits: ReassemblyLimits = ReassemblyLimits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._open: dict[tuple[str, bytes], _Transfer] = {}
        self._reserved: dict[str, int] = {}
        self._completed: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    @property
    def pending_bytes(self) -> int:
        """Bytes reserved by open transfers across all senders."""
        return sum(self._reserved.values())

    def feed(self, sender: str, frame: bytes) -> bytes | None:
        """Add one frame from ``sender``; the whole message when this frame completes it."""
        chunk = Chunk.decode(frame, self.limits.max_message_bytes)
        key = (sender, chunk.transfer_id)
        if key in self._completed:
            return None                      # a redelivered chunk of a finished transfer
        transfer = self._open.get(key) or self._start(sender, key, chunk)
        if not transfer.matches(chunk):
            self._drop(key)
            raise Rejected(RejectReason.CHUNK_MISMATCH, "chunk disagrees with its transfer")
        known = transfer.parts.get(chunk.index)
        if known is not None:
            if known != chunk.data:
                self._drop(key)
                raise Rejected(RejectReason.CHUNK_MISMATCH, "two different chunks, one index")
            return None
        if transfer.received + len(chunk.data) > chunk.total:
            self._drop(key)
            raise Rejected(RejectReason.CHUNK_OVERFLOW, "chunks exceed the declared size")
        transfer.parts[chunk.index] = chunk.data
        transfer.received += len(chunk.data)
        if len(transfer.parts) < chunk.count:
            return None
        return self._finish(key, transfer)

    def _start(self, sender: str, key: tuple[str, bytes], chunk: Chunk) -> _Transfer:
        self.expire()
        reserved = self._reserved.get(sender, 0)
        if reserved + chunk.total > self.limits.max_pending_per_sender:
            raise Rejected(RejectReason.CHUNK_OVERFLOW, "sender has too much pending data")
        if self.pending_bytes + chunk.total > self.limits.max_pending_total:
            raise Rejected(RejectReason.CHUNK_OVERFLOW, "reassembly memory is full")
        transfer = _Transfer(chunk, self._clock())
        self._open[key] = transfer
        self._reserved[sender] = reserved + chunk.total
        return transfer

    def _finish(self, key: tuple[str, bytes], transfer: _Transfer) -> bytes:
        self._drop(key)
        self._completed[key] = None
        while len(self._completed) > self.limits.remember_completed:
            self._completed.popitem(last=False)
        message = b"".join(transfer.parts[i] for i in range(transfer.first.count))
        if len(message) != transfer.first.total or \
                hashlib.sha256(message).digest() != transfer.first.sha256:
            raise Rejected(RejectReason.CHUNK_HASH_MISMATCH, "reassembled message is corrupt")
        return message

    def _drop(self, key: tuple[str, bytes]) -> None:
        transfer = self._open.pop(key, None)
        if transfer is None:
            return
        sender = key[0]
        left = self._reserved.get(sender, 0) - transfer.first.total
        if left > 0:
            self._reserved[sender] = left
        else:
            self._reserved.pop(sender, None)

    def expire(self) -> int:
        """Forget transfers older than the timeout; returns how many (count as CHUNK_TIMEOUT)."""
        deadline = self._clock() - self.limits.timeout_s
        stale = [key for key, t in self._open.items() if t.started < deadline]
        for key in stale:
            self._drop(key)
        return len(stale)
