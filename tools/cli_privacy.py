"""``fedbeat privacy``: what a DP setting costs in ε, and what a device has spent."""

from __future__ import annotations

import math
from typing import Any

import click

from fedbeat.device.privacy.accountant import (
    RdpAccountant,
    accounted_step,
    epsilon_from_rdp,
    epsilon_from_rdp_classic,
)
from fedbeat.device.privacy.ledger import LedgerError, PrivacyLedger
from fedbeat.tools.output import emit_json


class _OneLineGroup(click.Group):
    """Bad flags come out as one ``Error: …`` line, not usage text."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
            raise click.ClickException(" ".join(exc.format_message().split()) + where) from None


@click.group(cls=_OneLineGroup)
def privacy() -> None:
    """Differential-privacy accounting: ε for a setting, and a device's ledger.

    \b
      fedbeat privacy epsilon --mode dpsgd --q 0.01 --sigma 4 --steps 10000 --delta 1e-5
      fedbeat privacy epsilon --mode update --sigma 1 --rounds 30
      fedbeat privacy ddg --sigma 1 --rounds 20 --min-devices 11 --devices 22
      fedbeat privacy ledger /var/lib/fedbeat/privacy-ledger.json
    """


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"


@privacy.command()
@click.option("--mode", type=click.Choice(["dpsgd", "update"]), required=True,
              help="dpsgd: sample-level DP-SGD on the device (per-example clipping, Poisson "
                   "sampling, noise every step); ε protects one beat. update: the whole update "
                   "is clipped and noised once per round; ε protects the patient's data.")
@click.option("--sigma", type=float, required=True,
              help="Noise multiplier σ: the Gaussian noise std divided by the clipping norm C "
                   "(TrainingConfig.noise_multiplier). Larger σ = more privacy, noisier model.")
@click.option("--q", "sample_rate", type=float, default=None,
              help="dpsgd only: Poisson sampling rate per step, each beat joins a step with "
                   "probability q (the trainer's default is batch_size / number of beats).")
@click.option("--steps", type=int, default=None,
              help="dpsgd only: DP-SGD steps per round (the trainer runs epochs × round(1/q)).")
@click.option("--rounds", type=int, default=1, show_default=True,
              help="Rounds the device takes part in; ε composes over all of them.")
@click.option("--delta", type=float, default=1e-5, show_default=True,
              help="δ of (ε, δ)-DP: the tolerated probability that the ε bound fails. Keep it "
                   "well below 1 / (number of protected units).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def epsilon(mode: str, sigma: float, sample_rate: float | None, steps: int | None, rounds: int,
            delta: float, as_json: bool) -> None:
    """The ε of (ε, δ)-DP after ROUNDS rounds of the given mechanism (Rényi-DP accountant).

    ε bounds how much more likely any outcome becomes when one protected unit (a beat for
    dpsgd; the patient's whole data for update) is in the data rather than not: at most a factor
    e^ε, except with probability δ. It is an upper bound from the RDP accountant (Mironov et al.
    2019), converted with Balle et al. 2020; the JSON also gives the older, looser conversion
    (Mironov 2017, the one behind Abadi et al.'s ε ≈ 1.26) for comparison. See docs/privacy.md.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise click.ClickException("--sigma must be a positive number (σ = 0 means ε = ∞)")
    if not 0 < delta < 1:
        raise click.ClickException("--delta must be in (0, 1), e.g. 1e-5")
    if rounds < 1:
        raise click.ClickException("--rounds must be at least 1")
    if mode == "dpsgd":
        if sample_rate is None or steps is None:
            raise click.ClickException("--mode dpsgd needs --q (sampling rate) and --steps")
        if not 0 < sample_rate <= 1:
            raise click.ClickException("--q must be in (0, 1]")
        if steps < 1:
            raise click.ClickException("--steps must be at least 1")
    else:
        if sample_rate is not None or steps is not None:
            raise click.ClickException("--q and --steps are for --mode dpsgd; update-level DP "
                                       "releases one noised update per round (use --rounds)")
        sample_rate, steps = 1.0, 1
    charged_sigma, charged_q = accounted_step(mode=mode, noise_multiplier=sigma,
                                              sample_rate=sample_rate)
    acc = RdpAccountant()
    acc.step(noise_multiplier=charged_sigma, sample_rate=charged_q, steps=steps * rounds)
    rdp = acc.rdp()
    eps, order = epsilon_from_rdp(rdp=rdp, delta=delta)
    eps_classic, order_classic = epsilon_from_rdp_classic(rdp=rdp, delta=delta)
    result = {
        "mode": mode, "noise_multiplier": sigma, "sample_rate": sample_rate,
        "steps_per_round": steps, "rounds": rounds, "total_steps": steps * rounds,
        "delta": delta, "epsilon": _json_float(eps_classic), "optimal_order": order_classic,
        "epsilon_tight": _json_float(eps), "optimal_order_tight": order,
        "protects": "one beat (record-level)" if mode == "dpsgd" else
                    "the patient's data (user-level)",
        "charged_noise_multiplier": charged_sigma,
        "accountant": "rdp (Poisson-subsampled Gaussian, add/remove adjacency)",
    }
    if as_json:
        emit_json(result)
        return
    click.echo(f"ε = {eps_classic:.4g} at δ = {delta:g}  (protects {result['protects']})")
    click.echo(f"  RDP order {order_classic:g}, classic conversion (what budgets use); the "
               f"improved conversion (Balle et al. 2020) gives ε = {eps:.4g}")
    if mode == "update":
        click.echo(f"  update-level: any two datasets of the patient differ by up to 2C, "
                   f"so σ = {sigma:g} is charged as {charged_sigma:g}")


@privacy.command()
@click.option("--sigma", type=float, required=True,
              help="Noise multiplier z: the secure sum carries N(0, (z·C)²) once --min-devices "
                   "devices contribute (each adds a discrete Gaussian share).")
@click.option("--rounds", type=click.IntRange(1), default=1, show_default=True,
              help="Rounds the device takes part in.")
@click.option("--min-devices", type=click.IntRange(2), required=True,
              help="The round's min_participants: the noise is split as if only this many "
                   "contribute, and the aggregator aborts below it.")
@click.option("--devices", type=click.IntRange(2), default=None,
              help="Devices in each sum [default: --min-devices]; more means more noise, a "
                   "smaller ε. Also the target the ring must hold.")
@click.option("--clip", "clip_norm", type=float, default=1.0, show_default=True,
              help="Clipping norm C of each device's update.")
@click.option("--bits", type=click.IntRange(2, 20), default=20, show_default=True,
              help="Ring bits per value: fewer bits mean coarser rounding and a little more ε.")
@click.option("--model", default="ecg-cnn-s", show_default=True,
              help="Model whose parameter count sets the vector length.")
@click.option("--delta", type=float, default=1e-5, show_default=True,
              help="δ of (ε, δ)-DP.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def ddg(sigma: float, rounds: int, min_devices: int, devices: int | None, clip_norm: float,
        bits: int, model: str, delta: float, as_json: bool) -> None:
    """ε of distributed DP: discrete Gaussian shares summed under secure aggregation.

    Protects a device's whole contribution (user-level, add/remove of the device) against
    anyone who sees only the sum — the aggregator included, under secure aggregation's threat
    model (docs/protocol.md §10.5). Shown beside the central Gaussian mechanism with the same
    σ, which a trusted aggregator would get, and the charge a device's ledger records per
    round. The math: docs/privacy.md.

    With more than --min-devices in the sum, each device's share still has the variance
    planned for --min-devices, so the sum carries more noise than z·C and ε is smaller.
    """
    from fedbeat.device.privacy.accountant import rdp_gaussian
    from fedbeat.device.privacy.ddg import DdgParams
    from fedbeat.device.privacy.ddg_accounting import ddg_epsilon, equivalent_noise_multiplier
    from fedbeat.models.zoo import UnknownModelError, create_architecture

    if not (math.isfinite(sigma) and sigma > 0):
        raise click.ClickException("--sigma must be a positive number")
    if not 0 < delta < 1:
        raise click.ClickException("--delta must be in (0, 1), e.g. 1e-5")
    contributors = devices or min_devices
    if contributors < min_devices:
        raise click.ClickException("--devices must be at least --min-devices (the aggregator "
                                   "aborts a smaller sum)")
    try:
        dim = create_architecture(model).num_params()
        params = DdgParams(dim=dim, clip_norm=clip_norm, noise_multiplier=sigma,
                           min_devices=min_devices, max_devices=contributors, bits=bits)
    except (UnknownModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    distributed = ddg_epsilon(params, [contributors] * rounds, delta)
    total_sigma = sigma * math.sqrt(contributors / min_devices)     # the sum's actual noise
    central = epsilon_from_rdp(rdp=rdp_gaussian(noise_multiplier=total_sigma) * rounds,
                               delta=delta)[0]
    charged = equivalent_noise_multiplier(params, min_devices)
    result = {"noise_multiplier": sigma, "rounds": rounds, "min_devices": min_devices,
              "devices": contributors, "clip_norm": clip_norm, "bits": bits, "model": model,
              "dim": dim, "delta": delta, "epsilon": _json_float(distributed),
              "epsilon_central_gaussian": _json_float(central),
              "sum_noise_multiplier": total_sigma,
              "granularity": params.granularity,
              "ledger_noise_multiplier": charged,
              "protects": "the device's whole contribution (user-level)"}
    if as_json:
        emit_json(result)
        return
    click.echo(f"ε = {distributed:.4g} at δ = {delta:g} after {rounds} round(s) of "
               f"{contributors} devices  (protects {result['protects']})")
    click.echo(f"  a trusted aggregator adding the same noise, N(0, ({total_sigma:.3g}·C)²), "
               f"itself: ε = {central:.4g}; {bits}-bit ring, step γ = {params.granularity:.3g}")
    click.echo(f"  each device's ledger charges σ_eq = {charged:.4g} per round, at twice the "
               f"sensitivity (any change of the patient's data, as for update-level DP; it "
               f"assumes only {min_devices} contribute)")


@privacy.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--delta", type=float, default=1e-5, show_default=True,
              help="δ at which to report ε (use the device's configured δ).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def ledger(path: str, delta: float, as_json: bool) -> None:
    """Show a device's privacy ledger (PATH): every spend and the ε spent so far."""
    if not 0 < delta < 1:
        raise click.ClickException("--delta must be in (0, 1), e.g. 1e-5")
    try:
        book = PrivacyLedger.open(path)
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None
    spent = book.spent(delta)
    rows = [{"round_id": e.spend.round_id, "mode": e.spend.mode,
             "noise_multiplier": e.spend.noise_multiplier, "sample_rate": e.spend.sample_rate,
             "steps": e.spend.steps, "time_s": e.time_s} for e in book.entries]
    if as_json:
        emit_json({"path": str(book.path), "delta": delta, "epsilon": _json_float(spent),
                   "level": book.level, "spends": rows})
        return
    for entry in book.entries:
        click.echo(entry.spend.describe())
    click.echo(f"{len(rows)} spends; ε = {spent:.4g} at δ = {delta:g} ({book.level}-level)")
