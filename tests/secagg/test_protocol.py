"""SecAgg end to end in one process: exact sums under dropout, safe aborts, the invariant."""

from __future__ import annotations

import numpy as np
import pytest

from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.secagg import ring, shamir, wire
from fedbeat.broker.secagg.coordinator import Coordinator, Phase, SecAggAborted
from fedbeat.broker.secagg.loopback import run_round
from fedbeat.broker.secagg.params import (
    DEFAULT_GRAPH,
    GraphParams,
    RoundContext,
    neighbour_graph,
)
from fedbeat.broker.secagg.participant import Participant
from fedbeat.broker.secagg.wire import NeighbourKeys, RelayedShares, UnmaskRequest

BITS = 20
CONTEXT = RoundContext("ward-7", 4, 257, BITS)


def _inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"dev-{i:03d}": rng.integers(0, 1 << BITS, CONTEXT.dim, dtype=np.uint32)
            for i in range(n)}


def _plain_sum(inputs: dict[str, np.ndarray], devices: tuple[str, ...]) -> np.ndarray:
    total = np.zeros(CONTEXT.dim, dtype=np.uint32)
    for device in devices:
        ring.add(total, inputs[device], BITS)
    return total


def _drop_plan(devices: list[str], fraction: float, stage_split: dict[str, float],
               seed: int) -> dict[str, set[str]]:
    """``fraction`` of the devices, spread over the stages in ``stage_split``'s proportions."""
    rng = np.random.default_rng(seed)
    chosen = list(rng.permutation(devices)[:round(fraction * len(devices))])
    plan: dict[str, set[str]] = {}
    start = 0
    for stage, share in stage_split.items():
        count = round(share * len(chosen))
        plan[stage] = set(chosen[start:start + count])
        start += count
    plan.setdefault("unmask", set()).update(chosen[start:])
    return plan


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("stage_split", [
    {"advertise": 1.0}, {"share": 1.0}, {"mask": 1.0}, {"unmask": 1.0},
    {"advertise": 0.25, "share": 0.25, "mask": 0.25, "unmask": 0.25},
], ids=["advertise", "share", "mask", "unmask", "every-stage"])
def test_unmasked_sum_equals_plain_sum_of_the_contributors(fraction: float,
                                                           stage_split: dict[str, float]) -> None:
    inputs = _inputs(40)
    drop = _drop_plan(sorted(inputs), fraction, stage_split, seed=int(fraction * 100))
    result = run_round(inputs, CONTEXT, min_participants=20, drop=drop,
                       graph=GraphParams(dropout_tolerance=0.3), graph_seed=b"round-4")
    late = drop.get("unmask", set())       # masked their input, then went silent
    expected = tuple(sorted(set(inputs) - set().union(
        *(drop.get(s, set()) for s in ("advertise", "share", "mask")))))
    assert result.contributors == expected
    assert late <= set(result.contributors)
    np.testing.assert_array_equal(result.vector, _plain_sum(inputs, result.contributors))
    assert len(result.contributors) == 40 - round(40 * fraction) + len(late)


def test_sparse_secagg_plus_graph_still_sums_exactly_with_30_percent_dropout() -> None:
    inputs = _inputs(120, seed=3)
    params = GraphParams(degree=60)           # sparse: every device masks with half the fleet
    drop = _drop_plan(sorted(inputs), 0.3, {"share": 0.3, "mask": 0.4, "unmask": 0.3}, seed=5)
    result = run_round(inputs, CONTEXT, min_participants=50, graph=params, drop=drop,
                       graph_seed=b"sparse")
    np.testing.assert_array_equal(result.vector, _plain_sum(inputs, result.contributors))


def test_neighbour_graph_is_regular_symmetric_and_seeded() -> None:
    devices = sorted(f"d{i}" for i in range(50))
    graph = neighbour_graph(devices, 10, b"a")
    assert all(len(neighbours) == 10 for neighbours in graph.values())
    assert all(u in graph[v] for u in graph for v in graph[u])
    assert all(u not in graph[u] for u in graph)
    assert graph == neighbour_graph(devices, 10, b"a")
    assert graph != neighbour_graph(devices, 10, b"b")


def test_degree_grows_slowly_and_covers_the_tolerated_dropout() -> None:
    params = GraphParams(dropout_tolerance=0.1)
    degrees = [params.degree_for(n) for n in (100, 1_000, 10_000)]
    assert degrees == sorted(degrees)
    assert degrees[-1] < 2 * degrees[0]
    assert GraphParams(dropout_tolerance=0.3).degree_for(50) == 49      # complete when small


def test_too_many_dropouts_abort_before_anything_is_revealed() -> None:
    inputs = _inputs(20)
    drop = {"mask": set(sorted(inputs)[:12])}        # 60 % drop after sharing keys
    with pytest.raises(SecAggAborted) as aborted:
        run_round(inputs, CONTEXT, min_participants=10, drop=drop)
    assert "fewer than the minimum" in aborted.value.reason
    assert set(aborted.value.notify) == set(sorted(inputs)[12:])
    assert all(isinstance(m, wire.Abort) for m in aborted.value.notify.values())


def test_threshold_shortfall_aborts_at_unmask_stage_without_revealing() -> None:
    """Enough devices for the minimum, but a neighbourhood that cannot reach its threshold."""
    inputs = _inputs(30)
    coordinator, participants = _start(inputs, min_participants=5, graph=GraphParams(degree=6))
    survivors = sorted(inputs)[::3]             # two of every three drop after sharing
    outgoing = coordinator.advance()
    for device in survivors:
        message = outgoing[device]
        assert isinstance(message, RelayedShares)
        coordinator.receive(device, participants[device].mask(message, inputs[device]))
    with pytest.raises(SecAggAborted, match="needed to unmask"):
        coordinator.advance()
    assert coordinator.phase is Phase.ABORTED
    assert coordinator.revealed_share_owners() == {}


def _start(inputs: dict[str, np.ndarray], *, min_participants: int,
           graph: GraphParams = DEFAULT_GRAPH) -> tuple[Coordinator, dict[str, Participant]]:
    """A coordinator and its participants driven through advertise and share-keys."""
    coordinator = Coordinator(CONTEXT, min_participants=min_participants, graph=graph)
    participants = {d: Participant(d, CONTEXT) for d in sorted(inputs)}
    for device, participant in participants.items():
        coordinator.receive(device, participant.advertise())
    for device, message in coordinator.advance().items():
        assert isinstance(message, NeighbourKeys)
        coordinator.receive(device, participants[device].share_keys(message))
    return coordinator, participants


def test_aggregator_never_holds_a_threshold_of_both_secrets_of_any_device() -> None:
    inputs = _inputs(30, seed=9)
    coordinator, participants = _start(inputs, min_participants=10)
    relayed = coordinator.advance()
    dropped_after_sharing = set(sorted(inputs)[:6])
    for device, message in relayed.items():
        if device not in dropped_after_sharing:
            assert isinstance(message, RelayedShares)
            coordinator.receive(device, participants[device].mask(message, inputs[device]))
    for device, message in coordinator.advance().items():
        assert isinstance(message, UnmaskRequest)
        coordinator.receive(device, participants[device].unmask(message))
    result = coordinator.result()
    held = coordinator.revealed_share_owners()
    for owner, (self_shares, key_shares) in held.items():
        assert not (self_shares >= coordinator.threshold and key_shares >= coordinator.threshold)
        if owner in result.contributors:
            assert key_shares == 0          # a contributor's key is never even partly revealed
        else:
            assert self_shares == 0
    assert set(held) == set(inputs)


def test_device_refuses_to_reveal_both_secrets_of_a_neighbour() -> None:
    inputs = _inputs(6)
    coordinator, participants = _start(inputs, min_participants=3)
    device = sorted(inputs)[0]
    message = coordinator.advance()[device]
    assert isinstance(message, RelayedShares)
    participants[device].mask(message, inputs[device])
    neighbour = sorted(inputs)[1]
    with pytest.raises(Rejected) as refused:
        participants[device].unmask(UnmaskRequest((neighbour,), (neighbour,)))
    assert refused.value.reason is RejectReason.SECAGG_VIOLATION
    honest = participants[device].unmask(UnmaskRequest((neighbour,), ()))
    assert [owner for owner, _ in honest.self_mask] == [neighbour]
    with pytest.raises(Rejected, match="unmask message at stage done"):
        participants[device].unmask(UnmaskRequest((), (neighbour,)))


@pytest.mark.parametrize("request_", [
    UnmaskRequest(("dev-000",), ()),          # names the device itself
    UnmaskRequest(("nobody",), ()),           # not a neighbour it masked with
])
def test_device_refuses_unmask_requests_outside_its_neighbourhood(
        request_: UnmaskRequest) -> None:
    inputs = _inputs(4)
    coordinator, participants = _start(inputs, min_participants=3)
    message = coordinator.advance()["dev-000"]
    assert isinstance(message, RelayedShares)
    participants["dev-000"].mask(message, inputs["dev-000"])
    with pytest.raises(Rejected, match="secagg_violation"):
        participants["dev-000"].unmask(request_)


def test_masked_input_alone_reveals_nothing_recognisable() -> None:
    """The masked vector is indistinguishable from uniform: no correlation with the input."""
    inputs = {d: np.full(CONTEXT.dim, 7, dtype=np.uint32) for d in ("a1", "b2", "c3")}
    coordinator, participants = _start(inputs, min_participants=3)
    message = coordinator.advance()["a1"]
    assert isinstance(message, RelayedShares)
    masked = ring.unpack(participants["a1"].mask(message, inputs["a1"]).vector, CONTEXT.dim,
                         BITS)
    assert np.count_nonzero(masked == 7) <= 2
    assert abs(float(masked.mean()) / (1 << BITS) - 0.5) < 0.1


def test_coordinator_refuses_out_of_order_duplicate_and_stranger_messages() -> None:
    inputs = _inputs(5)
    coordinator, participants = _start(inputs, min_participants=3)
    with pytest.raises(Rejected) as late:
        coordinator.receive("dev-000", wire.AdvertiseKeys(bytes(32), bytes(32)))
    assert late.value.reason is RejectReason.NOT_OPEN
    with pytest.raises(Rejected) as out_of_order:
        coordinator.receive("dev-000", wire.RevealedShares((), ()))
    assert out_of_order.value.reason is RejectReason.SECAGG_VIOLATION
    relayed = coordinator.advance()
    message = relayed["dev-001"]
    assert isinstance(message, RelayedShares)
    masked = participants["dev-001"].mask(message, inputs["dev-001"])
    coordinator.receive("dev-001", masked)
    with pytest.raises(Rejected) as duplicate:
        coordinator.receive("dev-001", masked)
    assert duplicate.value.reason is RejectReason.DUPLICATE
    with pytest.raises(Rejected) as stranger:
        coordinator.receive("intruder", masked)
    assert stranger.value.reason is RejectReason.NOT_SELECTED


def test_tampered_share_ciphertext_is_refused_by_the_recipient() -> None:
    inputs = _inputs(4)
    coordinator, participants = _start(inputs, min_participants=3)
    message = coordinator.advance()["dev-002"]
    assert isinstance(message, RelayedShares)
    sender, ciphertext = message.ciphertexts[0]
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(Rejected) as refused:
        participants["dev-002"].mask(RelayedShares(((sender, flipped),)), inputs["dev-002"])
    assert refused.value.reason is RejectReason.DECRYPT_FAILED


def test_inconsistent_key_shares_abort_instead_of_a_wrong_sum() -> None:
    inputs = _inputs(8)
    coordinator, participants = _start(inputs, min_participants=4)
    relayed = coordinator.advance()
    for device, message in relayed.items():
        if device != "dev-000":
            assert isinstance(message, RelayedShares)
            coordinator.receive(device, participants[device].mask(message, inputs[device]))
    for device, message in coordinator.advance().items():
        assert isinstance(message, UnmaskRequest)
        revealed = participants[device].unmask(message)
        corrupted = tuple((owner, shamir.share_to_bytes(7)) for owner, _ in revealed.mask_key)
        coordinator.receive(device, wire.RevealedShares(revealed.self_mask, corrupted))
    with pytest.raises(SecAggAborted, match="inconsistent"):
        coordinator.result()


def test_shamir_threshold_reconstructs_and_one_fewer_does_not() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, list(range(1, 11)), 6)
    assert shamir.reconstruct(dict(list(shares.items())[4:]), 6) == secret
    with pytest.raises(shamir.ShareError):
        shamir.reconstruct(dict(list(shares.items())[:5]), 6)


def test_key_advertisements_beyond_what_the_ring_holds_are_refused() -> None:
    coordinator = Coordinator(CONTEXT, min_participants=2, max_participants=3)
    for device in ("a1", "b2", "c3"):
        coordinator.receive(device, Participant(device, CONTEXT).advertise())
    with pytest.raises(Rejected) as full:
        coordinator.receive("d4", Participant("d4", CONTEXT).advertise())
    assert full.value.reason is RejectReason.NOT_OPEN
    assert coordinator.stage_sizes["advertised"] == 3


def test_a_wrong_self_mask_share_aborts_instead_of_a_wrong_sum() -> None:
    inputs = _inputs(6)
    coordinator, participants = _start(inputs, min_participants=4)
    for device, message in coordinator.advance().items():
        assert isinstance(message, RelayedShares)
        coordinator.receive(device, participants[device].mask(message, inputs[device]))
    for device, message in coordinator.advance().items():
        assert isinstance(message, UnmaskRequest)
        revealed = participants[device].unmask(message)
        if device == "dev-001":                          # one faulty holder
            revealed = wire.RevealedShares(
                tuple((owner, shamir.share_to_bytes(12345)) for owner, _ in revealed.self_mask),
                revealed.mask_key)
        coordinator.receive(device, revealed)
    coordinator.advance()
    with pytest.raises(SecAggAborted, match="self-mask shares are inconsistent"):
        coordinator.result()


def test_a_low_order_key_is_refused_at_the_advertisement() -> None:
    coordinator = Coordinator(CONTEXT, min_participants=2)
    honest = Participant("a1", CONTEXT).advertise()
    with pytest.raises(Rejected) as refused:
        coordinator.receive("a1", wire.AdvertiseKeys(bytes(32), honest.mask_public,
                                                     seed_digest=honest.seed_digest))
    assert refused.value.reason is RejectReason.MALFORMED
    with pytest.raises(Rejected, match="digest"):
        coordinator.receive("a1", wire.AdvertiseKeys(honest.cipher_public, honest.mask_public))
    coordinator.receive("a1", honest)
