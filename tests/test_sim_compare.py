"""Comparing variants: the page and comparison.json from run directories, and the centralized
yardstick trained for real (onnxruntime) and scored by the aggregator's evaluator."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sim_run_testing import CONFIG, evaluation, make_run, record
from test_sim_report import assert_self_contained, parse

from fedbeat.tools.sim_compare import (
    COMPARISON_NAME,
    train_centralized,
    write_comparison,
)
from fedbeat.tools.sim_report import (
    PALETTE,
    SYNTHETIC_BANNER,
    ReportDataError,
    esc,
    write_report,
)

ROUND_KEYS = {"round", "state", "model_version", "participants", "dropouts", "rejections",
              "bytes", "loss", "epsilon", "seconds", "evaluation"}
"""The keys of a ``metrics.jsonl`` line (``RoundRecorder._line`` in tools/simulate.py)."""


def variant_run(tmp_path: Path, name: str, records: list[dict[str, Any]],
                config: dict[str, Any]) -> Path:
    """``tmp_path/<name>/run`` with its own report, as the comparison finds it."""
    parent = tmp_path / name
    parent.mkdir()
    run = make_run(parent, records, config)
    write_report(run)
    return run


def centralized_records(rounds: int) -> list[dict[str, Any]]:
    """A yardstick: one participant, no traffic, no ε, a little better than FedAvg."""
    return [{**record(r, epsilon=False), "participants": 1, "dropouts": 0, "rejections": {},
             "bytes": 0, "evaluation": evaluation(1.1 * r / rounds)}
            for r in range(1, rounds + 1)]


def three_variants(tmp_path: Path, *, synthetic: bool = True) -> list[tuple[str, Path]]:
    config = {**CONFIG, "synthetic": synthetic}
    return [
        ("centralized", variant_run(tmp_path, "centralized", centralized_records(3),
                                    {**config, "variant": "centralized", "devices": 1})),
        ("fedavg", variant_run(tmp_path, "fedavg", [record(r) for r in (1, 2, 3)], config)),
        ("fedavg+dp", variant_run(tmp_path, "fedavg+dp",
                                  [record(r, rounds=3) for r in (1, 2)],
                                  {**config, "dp": {"mode": "sample", "epsilon": 4.0}})),
    ]


def chart(page: str, title: str) -> str:
    match = re.search(rf'<svg [^>]*aria-label="{re.escape(esc(title))}".*?</svg>', page)
    assert match, f"no chart {title!r}"
    return match.group(0)


def test_table_and_json_match_the_runs(tmp_path: Path) -> None:
    variants = three_variants(tmp_path)
    out = tmp_path / "compare"
    path = write_comparison(variants, out)
    assert path == out / "report.html"
    data = json.loads((out / COMPARISON_NAME).read_text())
    assert [v["name"] for v in data["variants"]] == ["centralized", "fedavg", "fedavg+dp"]
    assert data["reference"] == "centralized"
    central, fedavg, dp = data["variants"]
    for summary, final, rounds in ((central, evaluation(1.1), 3), (fedavg, evaluation(1.0), 3),
                                   (dp, evaluation(2 / 3), 2)):
        assert summary["rounds"] == rounds
        assert summary["evaluated_round"] == rounds
        for key in ("macro_f1_nsvf", "macro_f1_nsv", "accuracy"):
            assert summary[key] == pytest.approx(final[key])
        for name in ("N", "S", "V", "F"):
            for key in ("sensitivity", "positive_predictivity", "f1"):
                assert summary["per_class"][name][key] == pytest.approx(
                    final["per_class"][name][key])
        assert summary["per_class"]["Q"]["f1"] is None
        assert summary["curve"]["round"] == list(range(1, rounds + 1))
    assert central["epsilon_max"] is None
    assert fedavg["epsilon_max"] == pytest.approx(3.5)     # dev-2 after round 3: 0.5·3 + 2
    assert dp["epsilon_max"] == pytest.approx(3.0)
    assert (central["bytes_total"], fedavg["bytes_total"], dp["bytes_total"]) == (
        0, 1_080_000, 540_000)
    assert fedavg["macro_f1_nsvf_vs_centralized"] == pytest.approx(0.6 - 0.66)
    assert central["config"]["variant"] == "centralized"
    assert dp["report"] == "../fedavg+dp/run/report.html"

    page = path.read_text(encoding="utf-8")
    parse(page)
    row = re.search(r"<tr><th><a [^>]*>fedavg</a></th>(.*?)</tr>", page)
    assert row
    cells = re.findall(r"<td>(.*?)</td>", row.group(1))
    assert cells == ["3", "0.600", "-0.060", "0.700", "0.900", "3.50",
                     "1.08 MB", "3"]
    assert "<strong>0.660</strong>" in page                 # the best macro-F1
    assert 'href="../fedavg%2Bdp/run/report.html"' in page  # relative, URL-quoted
    assert "540.00 kB" in page
    assert "dp.epsilon" in page
    assert "<mark>4.0</mark>" in page                       # dp.epsilon differs
    assert "<mark>centralized</mark>" in page               # and so does the variant


def test_every_variant_is_a_line_in_the_plots(tmp_path: Path) -> None:
    variants = three_variants(tmp_path)
    page = write_comparison(variants, tmp_path / "compare").read_text(encoding="utf-8")
    main = chart(page, "Macro-F1 (N, S, V, F) per round, by variant")
    for i, (name, _) in enumerate(variants):
        assert f">{esc(name)}</text>" in main                # legend entry
        assert re.search(rf'<polyline [^>]*stroke="{PALETTE[i]}"', main), name
    for name in ("N", "S", "V", "F"):                       # small multiples, one per class
        chart(page, f"F1 of class {name} per round")
    assert "F1 of class Q per round: nothing recorded." in page   # Q's F1 is undefined
    assert page.count("<svg") == 6                          # + macro-F1 (N, S, V)
    assert "round (epoch, for centralized)" in page


def test_page_is_self_contained_and_escapes_run_text(tmp_path: Path) -> None:
    page = write_comparison(three_variants(tmp_path), tmp_path / "compare").read_text()
    assert_self_contained(page)
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert page.index(SYNTHETIC_BANNER) < page.index("<h1")
    real = tmp_path / "real"
    real.mkdir()
    page = write_comparison(three_variants(real, synthetic=False), real / "compare").read_text()
    assert SYNTHETIC_BANNER not in page


def test_a_variant_without_evaluation(tmp_path: Path) -> None:
    variants = [("fedavg", variant_run(tmp_path, "fedavg", [record(r) for r in (1, 2)], CONFIG)),
                ("silent", variant_run(tmp_path, "silent",
                                       [record(r, evaluated=False) for r in (1, 2)], CONFIG))]
    page = write_comparison(variants, tmp_path / "compare").read_text()
    parse(page)
    silent = json.loads((tmp_path / "compare" / COMPARISON_NAME).read_text())["variants"][1]
    assert silent["macro_f1_nsvf"] is None
    assert silent["per_class"] == {}
    assert silent["rounds"] == 2
    assert silent["epsilon_max"] == pytest.approx(3.0)
    assert ">silent</text>" in chart(page, "Macro-F1 (N, S, V, F) per round, by variant")
    assert "Not evaluated: silent." in page


def test_nothing_evaluated_still_renders(tmp_path: Path) -> None:
    run = variant_run(tmp_path, "a", [record(1, evaluated=False)], {})
    page = write_comparison([("a", run)], tmp_path / "compare").read_text()
    parse(page)
    assert "nothing recorded" in page
    assert "No variant was evaluated" in page
    assert "No configuration recorded" in page


def test_different_evaluation_data_is_flagged(tmp_path: Path) -> None:
    other = [{**record(r), "evaluation": {**evaluation(r / 3), "data": "MIT-BIH DS2"}}
             for r in (1, 2, 3)]
    variants = [("a", variant_run(tmp_path, "a", [record(r) for r in (1, 2, 3)], CONFIG)),
                ("b", variant_run(tmp_path, "b", other, CONFIG))]
    page = write_comparison(variants, tmp_path / "compare").read_text()
    assert "evaluated on different data" in page


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    run = variant_run(tmp_path, "fedavg", [record(1)], CONFIG)
    missing = tmp_path / "never-ran"
    missing.mkdir()
    with pytest.raises(ReportDataError, match=r"never-ran/metrics.jsonl: no such file"):
        write_comparison([("fedavg", run), ("dp", missing)], tmp_path / "compare")
    (missing / "metrics.jsonl").write_text("{oops\n" + json.dumps(record(1)) + "\n")
    with pytest.raises(ReportDataError, match=r"metrics.jsonl:1"):
        write_comparison([("fedavg", run), ("dp", missing)], tmp_path / "compare")
    with pytest.raises(ValueError, match="distinct"):
        write_comparison([("fedavg", run), ("fedavg", run)], tmp_path / "compare")
    with pytest.raises(ValueError, match="no variants"):
        write_comparison([], tmp_path / "compare")


# --- the centralized yardstick, for real ----------------------------------------------------

def test_train_centralized_on_synthetic_patients(tmp_path: Path) -> None:
    from fedbeat.aggregator.evaluation import Evaluator
    from fedbeat.models.graph.export import build_model_dir
    from fedbeat.models.manifest import load_model_dir
    from fedbeat.tools.datasets import load_dataset, stack

    model_dir = tmp_path / "model"
    build_model_dir("ecg-cnn-s", model_dir, seed=0, optimizers=("sgd",))
    windows, rr, labels = stack(load_dataset(None, synthetic_patients=4).train)
    seen: list[dict[str, Any]] = []
    out = train_centralized(windows, rr, labels, model_dir=model_dir,
                            evaluation_data="synthetic", evaluation_split="ds2", epochs=2,
                            batch_size=32, learning_rate=0.01, seed=0,
                            out=tmp_path / "centralized", on_epoch=seen.append)
    assert out == tmp_path / "centralized"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == seen
    assert [line["round"] for line in lines] == [1, 2]
    for line in lines:
        assert set(line) == ROUND_KEYS
        assert (line["state"], line["participants"], line["bytes"], line["epsilon"]) == (
            "closed", 1, 0, {})
        assert math.isfinite(line["loss"])
        assert 0.0 <= line["evaluation"]["macro_f1_nsvf"] <= 1.0
        assert line["evaluation"]["data"].startswith("SYNTHETIC held-out patients")
    config = json.loads((out / "config.json").read_text())
    assert (config["variant"], config["synthetic"], config["rounds"]) == ("centralized", True, 2)
    assert config["train_beats"] == len(labels)
    assert (out / "report.html").is_file()

    # The final model scores exactly as the last line says, with a fresh evaluator like the
    # aggregator's; and training beat the untrained model (on this data every seed tried
    # reaches ≥ 0.46 in one of two epochs, from 0.04).
    evaluator = Evaluator(model_dir, Path("synthetic"), "ds2", seed=0)
    final = np.frombuffer((out / "final-model" / "params.bin").read_bytes(), dtype="<f4")
    assert evaluator.evaluate(final) == lines[-1]["evaluation"]
    untrained = evaluator.evaluate(load_model_dir(model_dir).initial_params().to_flat())
    best = max(line["evaluation"]["macro_f1_nsvf"] for line in lines)
    assert best > untrained["macro_f1_nsvf"] + 0.2

    page = write_comparison([("centralized", out)], tmp_path / "compare").read_text()
    assert ">centralized</a>" in page
    with pytest.raises(FileExistsError):
        train_centralized(windows, rr, labels, model_dir=model_dir,
                          evaluation_data="synthetic", evaluation_split="ds2", epochs=1,
                          batch_size=32, learning_rate=0.01, seed=0, out=out)
