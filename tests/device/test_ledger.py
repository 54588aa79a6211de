"""The privacy ledger: persisted spends, the budget stop, and refusing a corrupt file."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedbeat.device.privacy.accountant import RdpAccountant
from fedbeat.device.privacy.ledger import (
    BudgetExhausted,
    LedgerError,
    PrivacyLedger,
    Spend,
)
from fedbeat.tools.cli import cli

DELTA = 1e-5
DPSGD = Spend(round_id="r1", mode="dpsgd", noise_multiplier=1.1, sample_rate=0.02, steps=250)


def _eps(*spends: Spend) -> float:
    acc = RdpAccountant()
    for spend in spends:
        spend.charge(acc)
    return acc.epsilon(DELTA)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.json"


def test_records_survive_reopening_and_file_is_private(path: Path) -> None:
    book = PrivacyLedger.open(path, create=True)
    assert book.spent(DELTA) == 0.0
    update = Spend(round_id="r2", mode="update", noise_multiplier=8.0)
    book.record(DPSGD, now=1000.0)
    book.record(update, now=2000.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = PrivacyLedger.open(path)
    assert [e.spend for e in again.entries] == [DPSGD, update]
    assert [e.time_s for e in again.entries] == [1000.0, 2000.0]
    assert again.spent(DELTA) == pytest.approx(_eps(DPSGD, update))
    assert again.spent(DELTA) == book.spent(DELTA)
    assert again.level == "record"                    # DP-SGD bounds one beat, not the patient
    assert not list(path.parent.glob("*.tmp"))


def test_update_only_ledger_is_user_level(path: Path) -> None:
    book = PrivacyLedger.open(path, create=True)
    book.record(Spend(round_id="r1", mode="update", noise_multiplier=10.0), now=1.0)
    assert book.level == "user"
    acc = RdpAccountant()
    acc.step(noise_multiplier=5.0, sample_rate=1.0)          # charged at σ/2
    assert book.spent(DELTA) == pytest.approx(acc.epsilon(DELTA))


def test_budget_stop_refuses_before_spending(path: Path) -> None:
    book = PrivacyLedger.open(path, create=True)
    one = _eps(DPSGD)
    budget = (_eps(DPSGD, DPSGD) + _eps(DPSGD, DPSGD, DPSGD)) / 2   # fits two rounds, not three
    for n in (1, 2):
        spend = Spend(round_id=f"r{n}", mode="dpsgd", noise_multiplier=1.1, sample_rate=0.02,
                      steps=250)
        assert not book.would_exceed(budget_epsilon=budget, delta=DELTA, planned_spend=spend)
        book.record(spend, now=float(n), budget_epsilon=budget, delta=DELTA)
    third = Spend(round_id="r3", mode="dpsgd", noise_multiplier=1.1, sample_rate=0.02, steps=250)
    assert book.would_exceed(budget_epsilon=budget, delta=DELTA, planned_spend=third)
    reason = book.refusal_reason(budget_epsilon=budget, delta=DELTA, planned_spend=third)
    assert reason is not None
    assert "round r3" in reason
    assert "above the budget" in reason
    with pytest.raises(BudgetExhausted, match="above the budget") as info:
        book.record(third, now=3.0, budget_epsilon=budget, delta=DELTA)
    assert info.value.reason == reason
    reopened = PrivacyLedger.open(path)
    assert len(reopened.entries) == 2                      # the refused spend was not written
    assert reopened.spent(DELTA) <= budget
    assert reopened.spent(DELTA) > one
    # the stop is still there after a restart
    assert reopened.would_exceed(budget_epsilon=budget, delta=DELTA, planned_spend=third)


def test_a_round_without_dp_never_fits_a_budget(path: Path) -> None:
    book = PrivacyLedger.open(path, create=True)
    plain = Spend(round_id="r1", mode="none", noise_multiplier=0.0)
    reason = book.refusal_reason(budget_epsilon=100.0, delta=DELTA, planned_spend=plain)
    assert reason is not None
    assert "unbounded" in reason
    book.record(plain, now=1.0)                       # recorded without a budget: ε is now ∞
    assert book.spent(DELTA) == math.inf


def test_missing_ledger_is_not_silently_recreated(path: Path) -> None:
    with pytest.raises(LedgerError, match="does not exist"):
        PrivacyLedger.open(path)
    book = PrivacyLedger.open(path, create=True)
    book.record(DPSGD, now=1.0)
    path.unlink()
    with pytest.raises(LedgerError, match="disappeared"):
        book.record(DPSGD, now=2.0)


def _corrupt_variants(path: Path) -> list[bytes]:
    good = json.loads(path.read_text())
    tampered = json.loads(path.read_text())
    tampered["entries"][0]["noise_multiplier"] = 100.0     # a smaller ε, without the digest
    bad_entry = dict(good, entries=[{"round_id": "r1"}])
    bad_entry["sha256"] = __import__("hashlib").sha256(json.dumps(
        bad_entry["entries"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return [b"", path.read_bytes()[:40], b"\xff\xfe", b"[]",
            json.dumps(dict(good, version=99)).encode(),
            json.dumps(dict(good, format="other")).encode(),
            json.dumps(tampered).encode(), json.dumps(bad_entry).encode()]


def test_corrupt_ledger_is_refused_with_a_clear_error(path: Path) -> None:
    PrivacyLedger.open(path, create=True).record(DPSGD, now=1.0)
    for content in _corrupt_variants(path):
        broken = path.with_name("broken.json")
        broken.write_bytes(content)
        with pytest.raises(LedgerError, match="corrupt") as info:
            PrivacyLedger.open(broken, create=True)        # even create never resets it
        assert "refusing" in str(info.value)
        assert broken.read_bytes() == content              # left as it was, for forensics


def test_spend_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        Spend(round_id="r", mode="central", noise_multiplier=1.0)
    with pytest.raises(ValueError, match="one release"):
        Spend(round_id="r", mode="update", noise_multiplier=1.0, steps=5)
    with pytest.raises(ValueError, match="sample_rate"):
        Spend(round_id="r", mode="dpsgd", noise_multiplier=1.0, sample_rate=0.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        Spend(round_id="r", mode="dpsgd", noise_multiplier=math.nan, sample_rate=0.1)
    with pytest.raises(ValueError, match="round_id"):
        Spend(round_id="", mode="update", noise_multiplier=1.0)


def test_cli_shows_the_ledger(path: Path) -> None:
    book = PrivacyLedger.open(path, create=True)
    book.record(DPSGD, now=5.0)
    result = CliRunner().invoke(cli, ["privacy", "ledger", str(path), "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["epsilon"] == pytest.approx(book.spent(DELTA))
    assert doc["spends"][0]["round_id"] == "r1"
    path.write_text("{}")
    result = CliRunner().invoke(cli, ["privacy", "ledger", str(path)])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "corrupt" in result.stderr
