"""The device's side of one SecAgg round: a state machine that refuses to be misused.

A device answers each stage at most once and in order, and checks what the aggregator asks of it
before it answers, because the aggregator's requests are exactly what a curious aggregator would
use to unmask it or a neighbour:

* its neighbourhood must be large enough that the threshold means something;
* it masks only with neighbours whose shares it actually holds (those that reached stage 2);
* in the unmasking stage it reveals, for each neighbour, **either** the self-mask share (the
  neighbour survived) **or** the mask-key share (it dropped) — never both, and never for itself
  or for a neighbour it did not mask with. A device that reveals a neighbour's key share and the
  neighbour's self-mask share would let the aggregator strip every mask from that neighbour's
  input (Bonawitz et al. 2017, §4).

Secrets are dropped as soon as the round ends or aborts.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import Enum

import numpy as np

from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.secagg import ring, shamir
from fedbeat.broker.secagg.credentials import Credentials, Trust, advertisement
from fedbeat.broker.secagg.keys import RoundKeys, ShareChannel, pair_seed
from fedbeat.broker.secagg.params import RoundContext
from fedbeat.broker.secagg.wire import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    NeighbourKeys,
    Peer,
    RelayedShares,
    RevealedShares,
    UnmaskRequest,
)

MIN_NEIGHBOURS = 1


class Stage(Enum):
    ADVERTISE = 0
    SHARE = 1
    MASK = 2
    UNMASK = 3
    DONE = 4


def _refuse(detail: str) -> Rejected:
    return Rejected(RejectReason.SECAGG_VIOLATION, detail)


class Participant:
    """One device in one round; feed it the aggregator's messages in order."""

    def __init__(self, device_id: str, context: RoundContext, *,
                 credentials: Credentials | None = None, trust: Trust | None = None) -> None:
        """``credentials`` sign this device's advertisement; with ``trust`` every neighbour's
        must verify against the fleet CA (credentials.py), so the aggregator cannot make up
        neighbours. Either way the round is secure against an honest-but-curious aggregator,
        not an actively malicious one (docs/protocol.md §10.5)."""
        self.device_id = device_id
        self.context = context
        self.credentials = credentials
        self.trust = trust
        self.stage = Stage.ADVERTISE
        self._keys: RoundKeys | None = RoundKeys.generate()
        self._self_seed: bytes | None = secrets.token_bytes(ring.SEED_BYTES)
        self._peers: dict[str, Peer] = {}
        self._channels: dict[str, ShareChannel] = {}
        self._received: dict[str, tuple[int, int]] = {}    # neighbour → (self share, key share)
        self._masked_with: frozenset[str] = frozenset()

    def _expect(self, stage: Stage) -> RoundKeys:
        if self.stage is not stage or self._keys is None:
            raise _refuse(f"{stage.name.lower()} message at stage {self.stage.name.lower()}")
        return self._keys

    def advertise(self) -> AdvertiseKeys:
        keys = self._expect(Stage.ADVERTISE)
        self.stage = Stage.SHARE
        cipher_public, mask_public = keys.public()
        assert self._self_seed is not None
        seed_digest = hashlib.sha256(self._self_seed).digest()
        if self.credentials is None:
            return AdvertiseKeys(cipher_public, mask_public, seed_digest=seed_digest)
        signed = advertisement(self.context, self.device_id, cipher_public, mask_public,
                               seed_digest)
        return AdvertiseKeys(cipher_public, mask_public, self.credentials.certificate,
                             self.credentials.sign(signed),
                             self.trust.cache_id if self.trust is not None else b"",
                             seed_digest)

    def share_keys(self, message: NeighbourKeys) -> EncryptedShares:
        """Split the self-mask seed and the mask key among the neighbours, sealed to each."""
        keys = self._expect(Stage.SHARE)
        peers = {peer.device_id: peer for peer in message.peers}
        if self.device_id in peers or message.index in {p.index for p in message.peers}:
            raise _refuse("the neighbour list contains this device")
        if len(peers) < max(MIN_NEIGHBOURS, message.threshold) or message.threshold < 1:
            raise _refuse("neighbourhood smaller than the threshold")
        if 2 * message.threshold <= len(peers):
            raise _refuse("threshold is not a strict majority of the neighbourhood")
        if self.trust is not None:
            for peer in peers.values():
                self._verify(self.trust, peer)
        assert self._self_seed is not None
        xs = [peer.index for peer in peers.values()]
        seed_shares = shamir.split(self._self_seed, xs, message.threshold)
        key_shares = shamir.split(keys.mask.private_bytes_raw(), xs, message.threshold)
        sealed = []
        for peer in peers.values():
            plaintext = (shamir.share_to_bytes(seed_shares[peer.index])
                         + shamir.share_to_bytes(key_shares[peer.index]))
            channel = ShareChannel(keys.cipher, peer.cipher_public, self.context, self.device_id,
                                   peer.device_id)
            self._channels[peer.device_id] = channel
            sealed.append((peer.device_id, channel.seal(plaintext)))
        self._peers = peers
        self.stage = Stage.MASK
        return EncryptedShares(tuple(sealed))

    def _verify(self, trust: Trust, peer: Peer) -> None:
        certificate = peer.certificate
        if not certificate and peer.digest:
            certificate = trust.resolve(peer.device_id, peer.digest) or b""
            if not certificate:         # out of step with the aggregator: start afresh
                trust.forget()
                raise _refuse(f"{peer.device_id}: certificate sent by a digest this device "
                              "does not know")
        trust.verify(peer.device_id, certificate, peer.signature, advertisement(
            self.context, peer.device_id, peer.cipher_public, peer.mask_public,
            peer.seed_digest))

    def mask(self, message: RelayedShares, vector: np.ndarray) -> MaskedInput:
        """``vector`` (ring elements) plus the self-mask and the pairwise masks, packed."""
        keys = self._expect(Stage.MASK)
        if vector.shape != (self.context.dim,) or vector.dtype != np.uint32:
            raise ValueError(f"input must be {self.context.dim} uint32 ring elements")
        bits = self.context.bits
        if np.any(vector > ring.modulus_mask(bits)):
            raise ValueError(f"input outside Z_(2^{bits})")
        for sender, ciphertext in message.ciphertexts:
            channel = self._channels.get(sender)
            if channel is None:
                raise _refuse("shares relayed from a device that is not a neighbour")
            plaintext = channel.open(ciphertext)
            self._received[sender] = (
                shamir.share_from_bytes(plaintext[:shamir.SHARE_BYTES]),
                shamir.share_from_bytes(plaintext[shamir.SHARE_BYTES:]))
        assert self._self_seed is not None
        masked = vector.copy()
        ring.add(masked, ring.expand(self._self_seed, self.context.dim, bits), bits)
        for neighbour in self._received:
            pair = ring.expand(pair_seed(keys.mask, self._peers[neighbour].mask_public,
                                         self.context), self.context.dim, bits)
            ring.add_pair_mask(masked, pair, self.device_id, neighbour, bits)
        self._masked_with = frozenset(self._received)
        self.stage = Stage.UNMASK
        return MaskedInput(ring.pack(masked, bits))

    def unmask(self, message: UnmaskRequest) -> RevealedShares:
        """Reveal survivors' self-mask shares and dropped neighbours' key shares, once."""
        self._expect(Stage.UNMASK)
        survivors, dropped = set(message.survivors), set(message.dropped)
        if survivors & dropped:
            raise _refuse("a neighbour is listed as both survivor and dropped")
        if self.device_id in survivors | dropped:
            raise _refuse("the request names this device")
        if not (survivors | dropped) <= self._masked_with:
            raise _refuse("the request names devices this one did not mask with")
        revealed = RevealedShares(
            tuple((v, shamir.share_to_bytes(self._received[v][0])) for v in sorted(survivors)),
            tuple((v, shamir.share_to_bytes(self._received[v][1])) for v in sorted(dropped)))
        self.forget()
        return revealed

    def forget(self) -> None:
        """End the round here (done or aborted): drop every secret it held."""
        self.stage = Stage.DONE
        self._keys = None
        self._self_seed = None
        self._received.clear()
        self._channels.clear()
