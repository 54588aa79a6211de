"""``fedbeat simulate --compare``: variants of one scenario on the same data and seeds.

A variant is a base and modifiers, e.g. ``fedavg``, ``fedavg+dp=1.1``, ``krum+attack``:

- bases: ``centralized`` (one model on the union of the devices' beats, one epoch per round
  times the local epochs: the yardstick) or an aggregation strategy;
- ``+dp[=SIGMA]`` DP-SGD on the devices (sample-level), ``+ldp[=SIGMA]`` clip and noise the
  whole update (user-level), ``+secagg`` (secure aggregation), ``+ddg[=SIGMA]`` (secure
  aggregation with distributed discrete Gaussian noise: user-level, central-DP utility),
  ``+fedprox[=MU]``, ``+fedavgm[=SERVER_LR]`` (server momentum
  0.9), ``+normbound``, ``+lr=LR`` and ``+epochs=E``
  (local, or the centralized run's), and ``+attack``: only variants marked so get the
  scenario's attackers, so one comparison shows a clean FedAvg beside a poisoned one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbeat.tools.errors import UsageError
from fedbeat.tools.sim_scenario import STRATEGIES, Scenario

BASES = ("centralized", *STRATEGIES)
_MODIFIER = re.compile(
    r"^(dp|ldp|ddg|secagg|fedprox|fedavgm|normbound|attack|lr|epochs)(?:=([0-9.eE+-]+))?$")
DEFAULT_SIGMA = 1.0
DEFAULT_MU = 0.01
DEFAULT_SERVER_LR = 1.0


@dataclass(frozen=True)
class Variant:
    """One column of the comparison: a name and the scenario it runs."""

    name: str
    scenario: Scenario

    @property
    def centralized(self) -> bool:
        return self.name.split("+")[0] == "centralized"


def parse_variants(spec: str, base: Scenario) -> list[Variant]:
    """The variants of ``spec`` (comma-separated), each ``base`` changed as its name says.
    Raises :class:`UsageError` naming the part that cannot be read."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise UsageError("--compare needs at least one variant, e.g. centralized,fedavg")
    if len(set(names)) != len(names):
        raise UsageError(f"--compare lists a variant twice: {spec}")
    return [Variant(name, _scenario_of(name, base)) for name in names]


def _scenario_of(name: str, base: Scenario) -> Scenario:
    head, *modifiers = name.split("+")
    if head not in BASES:
        raise UsageError(f"--compare: unknown variant {head!r} in {name!r} (bases: "
                         f"{', '.join(BASES)})")
    overrides: dict[str, Any] = {"faults.malicious": 0.0, "privacy.dp": "none",
                                 "aggregation.norm_bound": False, "training.fedprox_mu": 0.0,
                                 "aggregation.server_optimizer": "sgd",
                                 "aggregation.server_lr": 1.0, "aggregation.secagg": False}
    if head != "centralized":
        overrides["aggregation.strategy"] = head
    for modifier in modifiers:
        match = _MODIFIER.match(modifier)
        if match is None:
            raise UsageError(f"--compare: unknown modifier {modifier!r} in {name!r} (dp, ldp, "
                             "ddg, secagg, fedprox, fedavgm, normbound, attack, lr, epochs)")
        kind, value = match.group(1), match.group(2)
        if value is not None and kind in ("normbound", "attack", "secagg"):
            raise UsageError(f"--compare: +{kind} takes no value (in {name!r})")
        if value is None and kind in ("lr", "epochs"):
            raise UsageError(f"--compare: +{kind} needs a value, e.g. +{kind}=0.01 (in {name!r})")
        if head == "centralized" and kind not in ("lr", "epochs"):
            raise UsageError(f"--compare: {name!r}: the centralized yardstick takes only +lr "
                             "and +epochs")
        overrides.update(_modifier(kind, value, base, name))
    return base.replace(overrides)


def _modifier(kind: str, value: str | None, base: Scenario, name: str) -> dict[str, Any]:
    number = None if value is None else float(value)
    if kind in ("dp", "ldp", "ddg"):
        sigma = number if number is not None else (base.privacy.noise_multiplier
                                                   or DEFAULT_SIGMA)
        secure = {"aggregation.secagg": True} if kind == "ddg" else {}
        return {"privacy.dp": {"dp": "dpsgd", "ldp": "update", "ddg": "ddg"}[kind],
                "privacy.noise_multiplier": sigma, **secure}
    if kind == "secagg":
        return {"aggregation.secagg": True}
    if kind == "fedprox":
        return {"training.fedprox_mu": number if number is not None else DEFAULT_MU}
    if kind == "fedavgm":
        return {"aggregation.server_optimizer": "fedavgm",
                "aggregation.server_lr": number if number is not None else DEFAULT_SERVER_LR}
    if kind == "normbound":
        return {"aggregation.norm_bound": True}
    if kind == "lr":
        return {"training.learning_rate": number}
    if kind == "epochs":
        return {"training.epochs": int(number or 1)}
    if base.faults.malicious <= 0:
        raise UsageError(f"--compare: {name!r} has +attack but the scenario has no attackers: "
                         "set --malicious (and --attack)")
    return {"faults.malicious": base.faults.malicious}


Progress = Any
"""A rich Progress (the CLI's bar); each variant gets a task."""


def run_comparison(base: Scenario, out: Path, spec: str, progress: Progress) -> dict[str, Any]:
    """Run every variant of ``spec`` into ``out/<variant>/`` and write the side-by-side report
    in ``out``. Returns the final metrics of each variant and the report's path."""
    from fedbeat.tools.sim_compare import write_comparison
    from fedbeat.tools.sim_results import final_metrics

    variants = parse_variants(spec, base)
    out.mkdir(parents=True, exist_ok=False)
    results: dict[str, Any] = {}
    with progress as bar:
        for variant in variants:
            run_dir = out / variant.name
            task = bar.add_task(variant.name, total=variant.scenario.fleet.rounds)

            def advance(line: dict[str, Any], task: Any = task) -> None:
                bar.advance(task)

            _run_variant(variant, base, run_dir, advance)
            results[variant.name] = final_metrics(run_dir)
    report = write_comparison([(v.name, out / v.name) for v in variants], out)
    return {"report": str(report), "variants": results}


def _run_variant(variant: Variant, base: Scenario, run_dir: Path,
                 on_round: Callable[[dict[str, Any]], None]) -> None:
    if not variant.centralized:
        from fedbeat.tools.simulate import run_simulation

        run_simulation(variant.scenario, run_dir, on_round)
        return
    from fedbeat.models.graph.export import build_model_dir
    from fedbeat.tools.sim_compare import train_centralized
    from fedbeat.tools.sim_fleet import fleet_beats

    s = variant.scenario
    windows, rr, labels = fleet_beats(s)
    run_dir.mkdir(parents=True)
    build_model_dir(s.fleet.model, run_dir / "model", seed=s.fleet.seed)
    train_centralized(windows, rr, labels, model_dir=run_dir / "model",
                      evaluation_data="synthetic" if s.synthetic else s.fleet.data,
                      evaluation_split="ds2", epochs=s.fleet.rounds * s.training.epochs,
                      batch_size=s.training.batch_size, learning_rate=s.training.learning_rate,
                      seed=s.fleet.seed, out=run_dir, on_epoch=on_round)
