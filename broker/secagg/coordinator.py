"""The aggregator's side of one SecAgg round: relay, collect, and unmask only the sum.

Four stages, each closed by :meth:`Coordinator.advance` when the caller decides (target reached
or deadline passed); the device sets shrink as devices drop out:

====================  ==========================================  =========================
stage                 the aggregator receives                     and sends on ``advance``
====================  ==========================================  =========================
0 advertise (U1)      two public keys per device                  neighbours' keys (U1)
1 share keys (U2)     sealed shares for each neighbour            each device's sealed shares
2 masked input (U3)   y_u = x_u + PRG(b_u) ± PRG(s_uv) mod 2^b    survivors / dropped lists
3 unmask (U4)         b_v shares (survivors), s_v shares (dropped)  —
====================  ==========================================  =========================

Masked inputs are summed as they arrive (O(vector) memory, never one vector per device). At
every stage the coordinator aborts — before asking anyone to reveal anything — when fewer than
``min_participants`` remain or when some secret it will need has fewer than ``threshold``
living holders. It asks for a device's self-mask shares only if the device's masked input
arrived and for its key shares only if it did not, so it never holds both for one device; the
devices enforce the same rule on their side (:mod:`~fedbeat.broker.secagg.participant`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.secagg import ring, shamir
from fedbeat.broker.secagg.credentials import (
    DIGEST_BYTES,
    CertificateMemo,
    Trust,
    advertisement,
    certificate_digest,
)
from fedbeat.broker.secagg.keys import check_not_low_order, pair_seed
from fedbeat.broker.secagg.params import DEFAULT_GRAPH, GraphParams, RoundContext, neighbour_graph
from fedbeat.broker.secagg.wire import (
    Abort,
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    Message,
    NeighbourKeys,
    Peer,
    RelayedShares,
    RevealedShares,
    UnmaskRequest,
)


class Phase(Enum):
    ADVERTISE = 0
    SHARE = 1
    MASK = 2
    UNMASK = 3
    DONE = 4
    ABORTED = 5


class SecAggAborted(Exception):  # noqa: N818 - an outcome, not a bug
    """The round ends without a sum; ``notify`` maps each device still in it to an Abort."""

    def __init__(self, reason: str, notify: Mapping[str, Abort]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = dict(notify)


@dataclass(frozen=True)
class SecAggSum:
    """The unmasked sum in Z_(2^bits) and who is in it."""

    vector: np.ndarray
    contributors: tuple[str, ...]
    dropped: tuple[str, ...]         # devices that advertised keys but are not in the sum


class Coordinator:
    """One round; :meth:`receive` each device message, :meth:`advance` to close a stage."""

    def __init__(self, context: RoundContext, *, min_participants: int,
                 max_participants: int | None = None,
                 graph: GraphParams = DEFAULT_GRAPH, graph_seed: bytes = b"",
                 trust: Trust | None = None, memo: CertificateMemo | None = None) -> None:
        """With ``trust``, key advertisements must be signed by a certificate of the fleet CA
        (credentials.py); a bad one is refused on arrival, before any neighbour sees it.
        ``memo`` (kept across rounds) lets certificates a device already checked travel as
        digests. ``max_participants`` caps key advertisements: the ring is sized for that many
        inputs (DDG's ``max_devices``), and more could wrap the sum around."""
        if min_participants < 2:
            raise ValueError("secure aggregation needs at least 2 participants")
        self.context = context
        self.min_participants = min_participants
        self.max_participants = max_participants
        self.graph_params = graph
        self.graph_seed = graph_seed
        self.trust = trust
        self.memo = memo
        self.phase = Phase.ADVERTISE
        self.threshold = 0
        self._adverts: dict[str, AdvertiseKeys] = {}
        self._certificate_digests: dict[str, bytes] = {}
        self._index: dict[str, int] = {}
        self._neighbours: dict[str, list[str]] = {}
        self._relay: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        self._shared: set[str] = set()                       # U2
        self._masked_with: dict[str, frozenset[str]] = {}
        self._total = np.zeros(context.dim, dtype=np.uint32)
        self._masked: set[str] = set()                       # U3
        self._requests: dict[str, UnmaskRequest] = {}
        self._self_shares: dict[str, dict[int, int]] = defaultdict(dict)
        self._key_shares: dict[str, dict[int, int]] = defaultdict(dict)
        self._revealed: set[str] = set()                     # U4

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, device_id: str, message: Message) -> None:
        """Take one device message for the current stage; ``Rejected`` if it does not belong."""
        match self.phase, message:
            case Phase.ADVERTISE, AdvertiseKeys():
                self._once(device_id, self._adverts)
                if self.max_participants is not None and \
                        len(self._adverts) >= self.max_participants:
                    raise Rejected(RejectReason.NOT_OPEN, "the round has all the devices its "
                                                          "ring can hold")
                if self.trust is not None:
                    self.trust.verify(device_id, message.certificate, message.signature,
                                      advertisement(self.context, device_id,
                                                    message.cipher_public, message.mask_public,
                                                    message.seed_digest))
                if len(message.seed_digest) != DIGEST_BYTES:
                    raise Rejected(RejectReason.SECAGG_VIOLATION, "advertisement without the "
                                                                  "self-mask seed's digest")
                check_not_low_order(message.cipher_public, message.mask_public)
                self._adverts[device_id] = message
                if message.certificate:
                    self._certificate_digests[device_id] = certificate_digest(
                        message.certificate)
            case Phase.SHARE, EncryptedShares():
                self._take_shares(device_id, message)
            case Phase.MASK, MaskedInput():
                self._take_masked(device_id, message)
            case Phase.UNMASK, RevealedShares():
                self._take_revealed(device_id, message)
            case _, AdvertiseKeys():
                raise Rejected(RejectReason.NOT_OPEN, "key advertisement has closed; this "
                                                      "round goes on without the device")
            case _:
                raise Rejected(RejectReason.SECAGG_VIOLATION,
                               f"{type(message).__name__} during {self.phase.name.lower()}")

    @staticmethod
    def _once(device_id: str, seen: Mapping[str, object] | set[str]) -> None:
        if device_id in seen:
            raise Rejected(RejectReason.DUPLICATE, "this stage already has the device's message")

    def _member(self, device_id: str, stage_set: Mapping[str, object] | set[str]) -> None:
        if device_id not in stage_set:
            raise Rejected(RejectReason.NOT_SELECTED, "device is not in this stage of the round")

    def _take_shares(self, device_id: str, message: EncryptedShares) -> None:
        self._member(device_id, self._neighbours)
        self._once(device_id, self._shared)
        recipients = [recipient for recipient, _ in message.ciphertexts]
        if sorted(recipients) != self._neighbours[device_id]:
            raise Rejected(RejectReason.SECAGG_VIOLATION, "shares must go to exactly the "
                                                          "device's neighbours")
        for recipient, ciphertext in message.ciphertexts:
            self._relay[recipient].append((device_id, ciphertext))
        self._shared.add(device_id)
        if self.memo is not None:       # it checked every neighbour's certificate to get here
            self.memo.learned(device_id, self._adverts[device_id].cache_id, (
                self._certificate_digests[v] for v in self._neighbours[device_id]
                if v in self._certificate_digests))

    def _take_masked(self, device_id: str, message: MaskedInput) -> None:
        self._member(device_id, self._masked_with)
        self._once(device_id, self._masked)
        try:
            vector = ring.unpack(message.vector, self.context.dim, self.context.bits)
        except ValueError as error:
            raise Rejected(RejectReason.MALFORMED, str(error)) from None
        ring.add(self._total, vector, self.context.bits)
        self._masked.add(device_id)

    def _take_revealed(self, device_id: str, message: RevealedShares) -> None:
        self._member(device_id, self._requests)
        self._once(device_id, self._revealed)
        request = self._requests[device_id]
        if ([owner for owner, _ in message.self_mask] != sorted(request.survivors)
                or [owner for owner, _ in message.mask_key] != sorted(request.dropped)):
            raise Rejected(RejectReason.SECAGG_VIOLATION, "revealed shares do not answer the "
                                                          "request")
        try:
            decoded = ([(o, shamir.share_from_bytes(s)) for o, s in message.self_mask],
                       [(o, shamir.share_from_bytes(s)) for o, s in message.mask_key])
        except shamir.ShareError as error:
            raise Rejected(RejectReason.MALFORMED, str(error)) from None
        x = self._index[device_id]
        for owner, share in decoded[0]:
            self._self_shares[owner][x] = share
        for owner, share in decoded[1]:
            self._key_shares[owner][x] = share
        self._revealed.add(device_id)

    # -- advancing ---------------------------------------------------------------------------

    def advance(self) -> dict[str, Message]:
        """Close the current stage: the messages to send, or ``SecAggAborted``.

        After the unmasking stage there is nothing to send: call :meth:`result`.
        """
        try:
            match self.phase:
                case Phase.ADVERTISE:
                    return self._close_advertise()
                case Phase.SHARE:
                    return self._close_share()
                case Phase.MASK:
                    return self._close_mask()
                case Phase.UNMASK:
                    self.phase = Phase.DONE
                    return {}
                case _:
                    raise RuntimeError(f"nothing to advance in phase {self.phase.name}")
        except SecAggAborted:
            self.phase = Phase.ABORTED
            raise

    def _abort(self, reason: str, devices: set[str] | Mapping[str, object]) -> SecAggAborted:
        return SecAggAborted(reason, {device: Abort(reason) for device in sorted(devices)})

    def _enough(self, devices: set[str] | Mapping[str, object], stage: str) -> None:
        if len(devices) < self.min_participants:
            raise self._abort(f"{len(devices)} devices {stage}, fewer than the minimum of "
                              f"{self.min_participants}", devices)

    def _close_advertise(self) -> dict[str, Message]:
        self._enough(self._adverts, "advertised keys")
        devices = sorted(self._adverts)
        degree = self.graph_params.degree_for(len(devices))
        self._neighbours = neighbour_graph(devices, degree, self.graph_seed)
        self.threshold = self.graph_params.threshold_for(degree)
        self._index = {device: i + 1 for i, device in enumerate(devices)}
        self.phase = Phase.SHARE
        return {device: NeighbourKeys(self._index[device], self.threshold, tuple(
            self._peer(device, v) for v in self._neighbours[device])) for device in devices}

    def _peer(self, device: str, neighbour: str) -> Peer:
        """``neighbour``'s advertisement for ``device``: its certificate by digest if the memo
        says ``device`` has already checked it."""
        advert = self._adverts[neighbour]
        certificate, digest = advert.certificate, b""
        known = self._certificate_digests.get(neighbour)
        if self.memo is not None and known is not None and \
                self.memo.knows(device, self._adverts[device].cache_id, known):
            certificate, digest = b"", known
        return Peer(neighbour, self._index[neighbour], advert.cipher_public, advert.mask_public,
                    certificate, advert.signature, digest, advert.seed_digest)

    def _close_share(self) -> dict[str, Message]:
        self._enough(self._shared, "shared their keys")
        outgoing: dict[str, Message] = {}
        for device in sorted(self._shared):
            relayed = tuple(pair for pair in self._relay[device] if pair[0] in self._shared)
            self._masked_with[device] = frozenset(sender for sender, _ in relayed)
            outgoing[device] = RelayedShares(relayed)
        self._relay.clear()
        self.phase = Phase.MASK
        return outgoing

    def _close_mask(self) -> dict[str, Message]:
        self._enough(self._masked, "sent masked input")
        survivors = self._masked
        for owner in sorted(self._shared):
            holders = self._masked_with[owner] & survivors
            needed = owner in survivors or bool(holders)
            if needed and len(holders) < self.threshold:
                raise self._abort(f"only {len(holders)} of {owner}'s neighbours survive, "
                                  f"{self.threshold} needed to unmask", survivors)
        for device in sorted(survivors):
            neighbours = self._masked_with[device]
            self._requests[device] = UnmaskRequest(tuple(sorted(neighbours & survivors)),
                                                   tuple(sorted(neighbours - survivors)))
        self.phase = Phase.UNMASK
        return dict(self._requests)

    # -- the result --------------------------------------------------------------------------

    def result(self) -> SecAggSum:
        """Strip every remaining mask from the running total, or ``SecAggAborted``."""
        if self.phase is Phase.UNMASK:
            self.phase = Phase.DONE
        if self.phase is not Phase.DONE:
            raise RuntimeError("the unmasking stage has not run")
        bits, dim = self.context.bits, self.context.dim
        total = self._total.copy()
        try:
            for owner in sorted(self._masked):
                seed = shamir.reconstruct(self._self_shares[owner], self.threshold)
                if hashlib.sha256(seed).digest() != self._adverts[owner].seed_digest:
                    raise shamir.ShareError(f"{owner}'s self-mask shares are inconsistent")
                ring.subtract(total, ring.expand(seed, dim, bits), bits)
            for owner in sorted(self._shared - self._masked):
                holders = self._masked_with[owner] & self._masked
                if holders:
                    self._cancel_pair_masks(total, owner, holders)
        except shamir.ShareError as error:
            self.phase = Phase.ABORTED
            raise self._abort(f"cannot unmask: {error}", self._masked) from None
        return SecAggSum(total, tuple(sorted(self._masked)),
                         tuple(sorted(set(self._adverts) - self._masked)))

    def _cancel_pair_masks(self, total: np.ndarray, owner: str, holders: frozenset[str]) -> None:
        raw = shamir.reconstruct(self._key_shares[owner], self.threshold)
        mask_key = X25519PrivateKey.from_private_bytes(raw)
        if mask_key.public_key().public_bytes_raw() != self._adverts[owner].mask_public:
            raise shamir.ShareError(f"{owner}'s mask key shares are inconsistent")
        bits, dim = self.context.bits, self.context.dim
        for survivor in sorted(holders):
            pair = ring.expand(pair_seed(mask_key, self._adverts[survivor].mask_public,
                                         self.context), dim, bits)
            ring.add_pair_mask(total, pair, survivor, owner, bits, remove=True)

    def revealed_share_owners(self) -> dict[str, tuple[int, int]]:
        """For each device, how many (self-mask, mask-key) shares the aggregator holds.

        The privacy invariant, exposed so tests can check it: no device has both counts at or
        above the threshold.
        """
        owners = set(self._self_shares) | set(self._key_shares)
        return {o: (len(self._self_shares.get(o, {})), len(self._key_shares.get(o, {})))
                for o in sorted(owners)}

    @property
    def stage_sizes(self) -> dict[str, int]:
        """|U1|..|U4| so far, for logs and reports."""
        return {"advertised": len(self._adverts), "shared": len(self._shared),
                "masked": len(self._masked), "revealed": len(self._revealed)}
