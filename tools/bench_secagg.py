"""``fedbeat bench secagg``: what secure aggregation with DDG noise costs a device and the
aggregator, in compute and in bytes.

For each fleet size in ``--devices`` one whole round runs in this process
(:func:`~fedbeat.broker.secagg.loopback.run_round`: every message encoded to its wire bytes,
counted and decoded, exactly as it would cross MQTT):

* **Encode** — every device turns a synthetic float update (correlated random vectors of L2
  norm 0.8–1.0, under the clip) into ring elements with the distributed discrete Gaussian
  (:class:`~fedbeat.device.privacy.ddg.DdgEncoder`, noise from the product's
  :class:`~fedbeat.device.privacy.noise.SecureRandom`), timed one device at a time.
* **Round** — SecAgg+ over the neighbour graph :class:`GraphParams(dropout_tolerance=...)
  <fedbeat.broker.secagg.params.GraphParams>` derives; ``--dropout`` of the devices go silent,
  spread evenly over the share, mask and unmask stages. ``Traffic`` counts bytes up and down
  and compute seconds per device, and the aggregator's compute seconds.
* **Check** — the unmasked sum must equal the plain ring sum of the contributors' encodings
  (and the contributors must be exactly the devices that sent their masked input); otherwise
  the command fails. The decoded sum is compared with the true sum of the contributors'
  updates, beside the DDG noise it should carry.
* **Cost model** — the protocol's primitives timed on their own (share sealing and opening,
  pairwise seed agreement, Shamir split and reconstruction, mask expansion) and multiplied by
  how often a device calls them, so the per-device seconds can be attributed.

Per-device figures are medians over the devices that took part to the end (none of their
stages dropped). The expansion factor is Bonawitz et al.'s (CCS 2017, §7): what a device sends
with SecAgg over what it would send in the clear — both the float32 update (4 bytes per
parameter, the plain path) and the same quantised ring vector unmasked.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from fedbeat.broker.identity import DeviceIdentity
from fedbeat.broker.secagg import ring, shamir, wire
from fedbeat.broker.secagg.coordinator import SecAggAborted
from fedbeat.broker.secagg.credentials import Credentials, Trust
from fedbeat.broker.secagg.keys import RoundKeys, ShareChannel, pair_seed
from fedbeat.broker.secagg.loopback import Traffic, run_round
from fedbeat.broker.secagg.params import GraphParams, RoundContext
from fedbeat.device.privacy.ddg import MAX_BITS, DdgEncoder, DdgParams
from fedbeat.device.privacy.noise import SecureRandom
from fedbeat.models.zoo import create_architecture
from fedbeat.tools import pki
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, progress_bar, stderr, stdout
from fedbeat.tools.process_memory import peak_rss_mb

FLEET = "bench"
ROUND_ID = 1
CLIP_NORM = 1.0
CORRELATION = 0.5
"""Share of each update's variance along a direction common to the whole fleet."""
DROP_STAGES = ("share", "mask", "unmask")
MAX_DEVICES = 10_000
KB = 1e3


def parse_devices(text: str) -> tuple[int, ...]:
    """``"100,500"`` -> ``(100, 500)``; a usage error for anything but fleet sizes ≥ 3."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--devices must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 3 or max(sizes) > MAX_DEVICES:
        raise UsageError(f"--devices must be between 3 and {MAX_DEVICES:,}, got {text!r}")
    return sizes


def drop_plan(devices: Sequence[str], fraction: float,
              rng: np.random.Generator) -> dict[str, set[str]]:
    """``round(fraction · n)`` random devices, split evenly over :data:`DROP_STAGES`."""
    chosen = [str(d) for d in rng.permutation(list(devices))[:round(fraction * len(devices))]]
    parts = np.array_split(np.arange(len(chosen)), len(DROP_STAGES))
    return {stage: {chosen[i] for i in part} for stage, part in zip(DROP_STAGES, parts,
                                                                    strict=True)}


def synthetic_update(shared: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random update correlated with ``shared`` (a unit direction), of L2 norm in [0.8, 1]."""
    own = rng.standard_normal(shared.size)
    mixed = math.sqrt(CORRELATION) * shared + math.sqrt(1 - CORRELATION) * own / np.linalg.norm(own)
    scaled: np.ndarray = mixed * (rng.uniform(0.8, 1.0) / np.linalg.norm(mixed))
    return scaled


def _per_call_s(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean seconds of one call, ``calls`` calls in a row."""
    fn()                                                       # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def cost_model(context: RoundContext, degree: int, threshold: int, *, contributors: int,
               dropped_after_sharing: int, devices: int) -> dict[str, Any]:
    """Unit costs of the protocol's primitives, and the calls a complete device and the
    aggregator make to them.

    A device that stays to the end opens a share channel with each of ``degree`` neighbours
    (one X25519 agreement), seals and opens one share pair on each (HKDF and
    ChaCha20-Poly1305), agrees ``degree`` pairwise mask seeds, splits two
    secrets into ``degree`` Shamir shares with threshold ``threshold``, and expands and adds
    ``degree + 1`` masks of ``context.dim`` ring elements. The aggregator reconstructs the
    self-mask seed of every contributor and the mask key of every device that shared its keys
    but sent no masked input, then agrees and expands that device's pair mask with each of its
    contributing neighbours (estimated as ``degree · contributors / devices``).
    """
    mine, peer = RoundKeys.generate(), RoundKeys.generate()
    peer_cipher, peer_mask = peer.public()
    plaintext = bytes(wire.SHARES_PLAINTEXT_BYTES)
    channel = ShareChannel(mine.cipher, peer_cipher, context, "dev-a", "dev-b")
    peer_channel = ShareChannel(peer.cipher, mine.public()[0], context, "dev-b", "dev-a")
    sealed = channel.seal(plaintext)
    secret = bytes(range(shamir.SECRET_BYTES))
    xs = list(range(1, degree + 1))
    shares = shamir.split(secret, xs, threshold)
    seed = bytes(ring.SEED_BYTES)
    total = np.zeros(context.dim, dtype=np.uint32)
    unit = {
        "open_channel": _per_call_s(lambda: ShareChannel(mine.cipher, peer_cipher, context,
                                                         "dev-a", "dev-b"), 50),
        "seal_shares": _per_call_s(lambda: channel.seal(plaintext), 50),
        "open_shares": _per_call_s(lambda: peer_channel.open(sealed), 50),
        "pair_seed": _per_call_s(lambda: pair_seed(mine.mask, peer_mask, context), 50),
        "shamir_split": _per_call_s(lambda: shamir.split(secret, xs, threshold), 3),
        "shamir_reconstruct": _per_call_s(lambda: shamir.reconstruct(shares, threshold), 3),
        "mask_expand_add": _per_call_s(
            lambda: ring.add(total, ring.expand(seed, context.dim, context.bits), context.bits),
            20),
    }
    device = {
        "key_agreement_and_aead": degree * (unit["open_channel"] + unit["seal_shares"]
                                            + unit["open_shares"] + unit["pair_seed"]),
        "shamir_split": 2 * unit["shamir_split"],
        "mask_expansion": (degree + 1) * unit["mask_expand_add"],
    }
    neighbours = degree * contributors / devices
    aggregator = {
        "shamir_reconstruct": (contributors + dropped_after_sharing) * unit["shamir_reconstruct"],
        "self_mask_expansion": contributors * unit["mask_expand_add"],
        "dropped_pair_masks": dropped_after_sharing * neighbours * (unit["pair_seed"]
                                                                    + unit["mask_expand_add"]),
    }
    return {"unit_s": unit, "device_s": device, "device_total_s": sum(device.values()),
            "aggregator_s": aggregator, "aggregator_total_s": sum(aggregator.values())}


def fleet_credentials(work: Path, ids: list[str]) -> tuple[dict[str, Credentials],
                                                          Callable[[], Trust]]:
    """A throw-away fleet CA and one certificate per device, for authenticated rounds."""
    keys = work / "keys"
    pki.init_fleet(keys, FLEET)
    credentials = {}
    for device in ids:
        identity = DeviceIdentity.load(pki.add_device(keys, device))
        credentials[device] = Credentials.load(identity.client_cert, identity.client_key)
    ca = DeviceIdentity.load(keys / "devices" / ids[0]).ca_cert
    return credentials, lambda: Trust.load(ca, FLEET)


def measure_round(devices: int, *, dim: int, bits: int, dropout: float,
                  graph: GraphParams, noise_multiplier: float, seed: int,
                  authenticated: bool = False) -> dict[str, Any]:
    """Encode, run and check one round of ``devices`` devices; the figures of one table row.

    Raises
    ------
    click.ClickException
        If the round aborts (too many dropouts for the graph or the minimum of devices).
    RuntimeError
        If the unmasked sum or its contributors differ from the plain computation.
    """
    rng = np.random.default_rng([seed, devices])
    round_seed = f"fedbeat-bench-secagg/{seed}/{devices}".encode()
    min_devices = math.ceil(devices / 2)
    try:
        params = DdgParams(dim=dim, clip_norm=CLIP_NORM, noise_multiplier=noise_multiplier,
                           min_devices=min_devices, max_devices=devices, bits=bits)
    except ValueError as error:
        raise UsageError(f"{devices} devices: {error}") from None
    encoder = DdgEncoder(params, round_seed)
    context = RoundContext(FLEET, ROUND_ID, params.padded_dim, bits)
    ids = [f"dev-{i:05d}" for i in range(devices)]
    drop = drop_plan(ids, dropout, rng)
    expected = tuple(d for d in ids if d not in drop["share"] | drop["mask"])
    contributing = set(expected)
    complete = [d for d in ids if not any(d in gone for gone in drop.values())]
    degree = graph.degree_for(devices)
    threshold = graph.threshold_for(degree)

    shared = rng.standard_normal(dim)
    shared /= np.linalg.norm(shared)
    source = SecureRandom()
    inputs: dict[str, np.ndarray] = {}
    encode_s: list[float] = []
    true_sum = np.zeros(dim)
    with progress_bar(f"{devices} devices: DDG encode", devices) as advance:
        for i, device in enumerate(ids):
            update = synthetic_update(shared, rng)
            start = time.perf_counter()
            inputs[device] = encoder.encode(update, source)
            encode_s.append(time.perf_counter() - start)
            if device in contributing:
                true_sum += update
            advance(i + 1, devices)

    traffic = Traffic()
    with tempfile.TemporaryDirectory(prefix="fedbeat-bench-secagg-") as scratch, \
            stderr.status(f"{devices} devices: SecAgg+ round, degree {degree}, threshold "
                          f"{threshold}{', authenticated' if authenticated else ''} ..."):
        signing, trust = fleet_credentials(Path(scratch), ids) if authenticated else ({}, None)
        start = time.perf_counter()
        try:
            result = run_round(inputs, context, min_participants=min_devices, graph=graph,
                               graph_seed=round_seed, drop=drop, traffic=traffic,
                               credentials=signing, trust=trust)
        except SecAggAborted as aborted:
            raise click.ClickException(f"{devices} devices: the round aborted: "
                                       f"{aborted.reason}") from None
        round_wall_s = time.perf_counter() - start
    plain = np.zeros(context.dim, dtype=np.uint32)
    for device in result.contributors:
        ring.add(plain, inputs[device], bits)
    if result.contributors != expected:
        raise RuntimeError(f"{devices} devices: {len(result.contributors)} contributors in the "
                           f"sum, {len(expected)} devices sent their masked input")
    if not np.array_equal(result.vector, plain):
        wrong = int(np.count_nonzero(result.vector != plain))
        raise RuntimeError(f"{devices} devices: the SecAgg sum differs from the plain ring sum "
                           f"of the contributors' encodings in {wrong} of {context.dim} values")
    decode_error_rms = float(np.sqrt(np.mean((encoder.decode_sum(result.vector) - true_sum)**2)))
    stderr.print(f"{devices} devices: round of {round_wall_s:.1f} s, the sum of "
                 f"{len(result.contributors)} contributors is exact")

    stderr.print(f"{devices} devices: timing the primitives for the cost model ...")
    model = cost_model(context, degree, threshold, contributors=len(result.contributors),
                       dropped_after_sharing=len(drop["mask"]), devices=devices)
    width = ring.bytes_per_value(bits)
    masked_input_bytes = len(wire.encode(wire.MaskedInput(bytes(context.dim * width))))

    def median(values: Mapping[str, float] | Mapping[str, int]) -> float:
        return statistics.median(values[d] for d in complete)

    device_encode_s = statistics.median(encode_s)
    device_protocol_s = median(traffic.device_seconds)
    bytes_up, bytes_down = median(traffic.device_bytes_up), median(traffic.device_bytes_down)
    float32_bytes, quantised_bytes = 4 * dim, context.dim * width
    return {
        "devices": devices, "degree": degree, "threshold": threshold,
        "min_devices": min_devices, "padded_dim": context.dim,
        "dropped": {stage: len(drop[stage]) for stage in DROP_STAGES},
        "contributors": len(result.contributors), "complete_devices": len(complete),
        "sum_exact": True,
        "decode_error_rms": decode_error_rms,
        "noise_stddev_of_sum": params.local_stddev * math.sqrt(len(result.contributors)),
        "device_encode_s": device_encode_s,
        "device_protocol_s": device_protocol_s,
        "device_compute_s": device_encode_s + device_protocol_s,
        "device_bytes_up": bytes_up,
        "device_bytes_down": bytes_down,
        "masked_input_bytes": masked_input_bytes,
        "overhead_bytes_up_per_neighbour": (bytes_up - masked_input_bytes) / degree,
        "aggregator_compute_s": traffic.aggregator_seconds,
        "aggregator_bytes_in": sum(traffic.device_bytes_up.values()),
        "aggregator_bytes_out": sum(traffic.device_bytes_down.values()),
        "round_wall_s": round_wall_s,
        "plain_float32_bytes": float32_bytes,
        "plain_quantised_bytes": quantised_bytes,
        "expansion_vs_float32": bytes_up / float32_bytes,
        "expansion_vs_quantised": bytes_up / quantised_bytes,
        "expansion_up_down_vs_float32": (bytes_up + bytes_down) / float32_bytes,
        "expansion_up_down_vs_quantised": (bytes_up + bytes_down) / quantised_bytes,
        "cost_model": {
            **model,
            "device_total_over_measured": model["device_total_s"] / device_protocol_s,
            "aggregator_total_over_measured":
                model["aggregator_total_s"] / traffic.aggregator_seconds,
        },
        "peak_rss_mb": peak_rss_mb(),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def _kb(count: float) -> str:
    return f"{count / KB:,.1f}"


def _tables(doc: dict[str, Any]) -> tuple[Table, Table]:
    costs = Table("devices", "degree / t", "in sum", "encode", "protocol", "up KB", "down KB",
                  "× f32", "× quant.", "aggr. s", "aggr. in / out MB",
                  title=(f"SecAgg+ with DDG, {doc['model']} ({doc['params']:,} parameters, "
                         f"{doc['padded_dim']:,} ring values of {doc['bits']} bits), "
                         f"{doc['dropout']:.0%} dropout; device figures are medians; "
                         "× = bytes up over the update in the clear"))
    for run in doc["runs"]:
        costs.add_row(
            f"{run['devices']:,}", f"{run['degree']} / {run['threshold']}",
            f"{run['contributors']:,}", _ms(run["device_encode_s"]),
            _ms(run["device_protocol_s"]), _kb(run["device_bytes_up"]),
            _kb(run["device_bytes_down"]), f"{run['expansion_vs_float32']:.2f}",
            f"{run['expansion_vs_quantised']:.2f}", f"{run['aggregator_compute_s']:,.2f}",
            f"{run['aggregator_bytes_in'] / 1e6:,.1f} / {run['aggregator_bytes_out'] / 1e6:,.1f}")
    model = Table("devices", "party", "measured", "X25519 + AEAD", "Shamir", "masks",
                  "model / measured",
                  title="where the protocol's seconds go (primitives timed alone × their calls)")
    for run in doc["runs"]:
        cost = run["cost_model"]
        device, aggregator = cost["device_s"], cost["aggregator_s"]
        model.add_row(f"{run['devices']:,}", "device (median)", _ms(run["device_protocol_s"]),
                      _ms(device["key_agreement_and_aead"]), _ms(device["shamir_split"]),
                      _ms(device["mask_expansion"]),
                      f"{cost['device_total_over_measured']:.2f}")
        model.add_row("", "aggregator", _ms(run["aggregator_compute_s"]), "",
                      _ms(aggregator["shamir_reconstruct"]),
                      _ms(aggregator["self_mask_expansion"] + aggregator["dropped_pair_masks"]),
                      f"{cost['aggregator_total_over_measured']:.2f}")
    return costs, model


@click.command()
@click.option("--devices", "devices_text", default="100,500", show_default=True,
              help="Comma-separated fleet sizes; one round each.")
@click.option("--model", default="ecg-cnn-s", show_default=True,
              help="Model whose parameter count sets the vector length.")
@click.option("--bits", default=20, show_default=True, type=click.IntRange(2, MAX_BITS),
              help="Ring Z_(2^bits) of the SecAgg sum.")
@click.option("--dropout", default=0.1, show_default=True, type=click.FloatRange(0, 1,
                                                                                 max_open=True),
              help="Fraction of devices that go silent, spread over the share, mask and "
                   "unmask stages.")
@click.option("--dropout-tolerance", default=0.3, show_default=True,
              type=click.FloatRange(0, 0.5, max_open=True),
              help="Dropout rate the neighbour graph's degree is sized for.")
@click.option("--noise-multiplier", default=1.0, show_default=True, type=click.FloatRange(0),
              help="DDG central noise stddev over the clip norm (1.0).")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the updates, the dropouts and the round (not of the DP noise).")
@click.option("--authenticated", is_flag=True,
              help="Sign advertisements with device certificates from a throw-away fleet CA "
                   "and verify them, as the device runtime does (credentials.py).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def secagg(devices_text: str, model: str, bits: int, dropout: float, dropout_tolerance: float,
           noise_multiplier: float, seed: int, authenticated: bool, as_json: bool) -> None:
    """Secure aggregation (SecAgg+) with distributed discrete Gaussian noise: compute and bytes
    per device and for the aggregator, one in-process round per fleet size.

    Every message goes through its wire encoding; the unmasked sum is checked against the
    plain sum. JSON keys per entry of "runs" include degree, threshold, contributors,
    device_compute_s, device_bytes_up, device_bytes_down, aggregator_compute_s,
    expansion_vs_float32 and expansion_vs_quantised (SecAgg bytes up over the update in the
    clear).
    """
    sizes = parse_devices(devices_text)
    params = create_architecture(model).num_params()
    graph = GraphParams(dropout_tolerance=dropout_tolerance)
    runs = [measure_round(n, dim=params, bits=bits, dropout=dropout, graph=graph,
                          noise_multiplier=noise_multiplier, seed=seed,
                          authenticated=authenticated) for n in sizes]
    doc = {
        "model": model, "params": params,
        "padded_dim": runs[0]["padded_dim"],
        "bits": bits, "bytes_per_value": ring.bytes_per_value(bits), "clip_norm": CLIP_NORM,
        "noise_multiplier": noise_multiplier, "dropout": dropout,
        "dropout_tolerance": dropout_tolerance, "seed": seed, "authenticated": authenticated,
        "runs": runs,
    }
    if as_json:
        emit_json(doc)
    else:
        for table in _tables(doc):
            stdout.print(table)
