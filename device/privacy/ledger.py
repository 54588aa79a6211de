"""The device's persistent privacy ledger: every spend, so the budget survives restarts.

One small JSON file (mode 0600), rewritten atomically (temporary file, fsync, rename, fsync of
the directory) under an advisory lock, holding every spend: round id, ``dp_mode``, σ, q, steps
and the time. The ε spent is recomputed from that history by :class:`RdpAccountant` (the ledger
stores facts, not derived numbers, so a better accountant later re-reads the same file).

Never resets silently. A missing ledger is an error unless the caller asks to create one (do that
once, when the device is provisioned); an unreadable, malformed or tampered file (its entries
carry a SHA-256 digest) raises :class:`LedgerError`. Forgetting spends would under-report ε, and
that is a privacy bug, so the device stops instead.

Use: before training, ``refusal_reason(budget_epsilon=…, delta=…, planned_spend=…)``; if it is
``None``, ``record`` the spend *before* the update can leave the device (a crash after recording
costs budget but never under-counts); put ``spent(delta)`` in the update's metrics as
``"epsilon"``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedbeat.device.privacy.accountant import DP_MODES, RdpAccountant, accounted_step

FORMAT = "fedbeat-privacy-ledger"
VERSION = 1


class LedgerError(Exception):
    """The ledger is missing, unreadable or corrupt; the device must not train until it is fixed."""


class BudgetExhausted(Exception):  # noqa: N818 -- the name STYLE.md gives this domain
    """A spend was refused because it would take ε above the budget; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Spend:
    """One round's use of the privacy budget, as the round's ``TrainingConfig`` asked for it.

    ``mode`` is ``"dpsgd"`` (``steps`` DP-SGD steps with Poisson rate ``sample_rate``),
    ``"update"`` (one clipped, noised update: ``sample_rate`` 1, ``steps`` 1), ``"ddg"`` (one
    update in a secure sum with distributed discrete Gaussian noise, same shape) or ``"none"``
    (no DP: ε becomes infinite). ``noise_multiplier`` is σ, the noise std over the clip norm.
    """

    round_id: str
    mode: str
    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.round_id, str) or not self.round_id:
            raise ValueError("round_id must be a non-empty string")
        if self.mode not in DP_MODES:
            raise ValueError(f"mode must be one of {', '.join(DP_MODES)}, got {self.mode!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        sigma = self.noise_multiplier
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or \
                not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {sigma!r}")
        if self.mode != "dpsgd" and (self.sample_rate != 1.0 or self.steps != 1):
            raise ValueError(f"a {self.mode!r} spend is one release: sample_rate 1, steps 1")

    def charge(self, accountant: RdpAccountant) -> None:
        """Add this spend to ``accountant`` (see :func:`accounted_step` for what is charged)."""
        sigma, q = accounted_step(mode=self.mode, noise_multiplier=self.noise_multiplier,
                                  sample_rate=self.sample_rate)
        accountant.step(noise_multiplier=sigma, sample_rate=q, steps=self.steps)

    def describe(self) -> str:
        """One short human-readable line (for refusal reasons and logs)."""
        if self.mode == "dpsgd":
            return (f"round {self.round_id}: dpsgd σ={self.noise_multiplier:g} "
                    f"q={self.sample_rate:g} steps={self.steps}")
        if self.mode == "update":
            return f"round {self.round_id}: update-level σ={self.noise_multiplier:g}"
        if self.mode == "ddg":
            return (f"round {self.round_id}: distributed discrete Gaussian "
                    f"σ_eq={self.noise_multiplier:g}")
        return f"round {self.round_id}: no differential privacy"


@dataclass(frozen=True)
class LedgerEntry:
    """A recorded spend and when it was recorded (seconds since the epoch)."""

    spend: Spend
    time_s: float


def _entry_to_json(entry: LedgerEntry) -> dict[str, object]:
    s = entry.spend
    return {"round_id": s.round_id, "mode": s.mode, "noise_multiplier": s.noise_multiplier,
            "sample_rate": s.sample_rate, "steps": s.steps, "time_s": entry.time_s}


def _digest(entries: list[dict[str, object]]) -> str:
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _number(row: dict[str, object], key: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} is not a finite number")
    return float(value)


def _entry_from_json(row: object) -> LedgerEntry:
    if not isinstance(row, dict):
        raise ValueError("an entry is not an object")
    extra = set(row) - {"round_id", "mode", "noise_multiplier", "sample_rate", "steps", "time_s"}
    if extra:
        raise ValueError(f"unknown entry fields {sorted(extra)}")
    steps = row.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError("steps is not an integer")
    round_id, mode = row.get("round_id"), row.get("mode")
    if not isinstance(round_id, str) or not isinstance(mode, str):
        raise ValueError("round_id and mode must be strings")
    spend = Spend(round_id=round_id, mode=mode,
                  noise_multiplier=_number(row, "noise_multiplier"),
                  sample_rate=_number(row, "sample_rate"), steps=steps)
    return LedgerEntry(spend, _number(row, "time_s"))


class PrivacyLedger:
    """Every privacy spend of one device, persisted in ``path``; open with :meth:`open`."""

    def __init__(self, path: Path, entries: tuple[LedgerEntry, ...]) -> None:
        self._path = path
        self._entries = entries

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = False) -> PrivacyLedger:
        """Load the ledger at ``path``.

        Parameters
        ----------
        path
            The ledger file.
        create
            Start an empty ledger if the file does not exist. Pass it only when provisioning a
            device: a ledger that disappears later must stop the device, not reset its budget.

        Raises
        ------
        LedgerError
            The file is missing (and ``create`` is false), unreadable or corrupt.
        """
        target = Path(path)
        with _locked(target):
            if not target.exists():
                if not create:
                    raise LedgerError(
                        f"privacy ledger {target} does not exist; refusing to start a fresh "
                        "budget (create it only when provisioning the device)")
                _write(target, [])
                return cls(target, ())
            return cls(target, _read(target))

    # -- reading ------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every recorded spend, oldest first."""
        return self._entries

    @property
    def level(self) -> str:
        """``"user"`` if every spend was user-level (update or ddg: the ε then protects the
        patient's whole data), else ``"record"`` (it protects one beat; DP-SGD gives no
        user-level bound)."""
        user_level = ("update", "ddg")
        return "record" if any(e.spend.mode not in user_level for e in self._entries) \
            else "user"

    def accountant(self) -> RdpAccountant:
        """A fresh :class:`RdpAccountant` charged with every recorded spend."""
        acc = RdpAccountant()
        for entry in self._entries:
            entry.spend.charge(acc)
        return acc

    def spent(self, delta: float) -> float:
        """ε spent so far at ``delta`` (an upper bound; ``inf`` after a round without DP)."""
        return self.accountant().epsilon(delta)

    # -- the budget stop ---------------------------------------------------------------------

    def refusal_reason(self, *, budget_epsilon: float, delta: float,
                       planned_spend: Spend) -> str | None:
        """Why ``planned_spend`` must be refused under the budget, or ``None`` if it fits.

        It fits when ε after the spend (all recorded spends plus this one, at ``delta``) is at
        most ``budget_epsilon``.
        """
        if not (math.isfinite(budget_epsilon) and budget_epsilon >= 0):
            raise ValueError(f"budget_epsilon must be finite and >= 0, got {budget_epsilon!r}")
        acc = self.accountant()
        before = acc.epsilon(delta)
        planned_spend.charge(acc)
        after = acc.epsilon(delta)
        if after <= budget_epsilon:
            return None
        if planned_spend.mode == "none":
            return (f"privacy budget: {planned_spend.describe()} would make ε unbounded "
                    f"(budget ε={budget_epsilon:g} at δ={delta:g})")
        return (f"privacy budget: {planned_spend.describe()} would take ε from {before:.4g} to "
                f"{after:.4g} at δ={delta:g}, above the budget of {budget_epsilon:g}")

    def would_exceed(self, *, budget_epsilon: float, delta: float, planned_spend: Spend) -> bool:
        """True if ``planned_spend`` would take ε above ``budget_epsilon`` (see
        :meth:`refusal_reason` for the reason to report)."""
        return self.refusal_reason(budget_epsilon=budget_epsilon, delta=delta,
                                   planned_spend=planned_spend) is not None

    # -- writing -------------------------------------------------------------------------------

    def record(self, spend: Spend, *, now: float, budget_epsilon: float | None = None,
               delta: float | None = None) -> None:
        """Persist ``spend`` (durably, before returning).

        With ``budget_epsilon`` (and ``delta``) the check and the write happen under one lock:
        a spend that would cross the budget is not written and raises :class:`BudgetExhausted`.

        Raises
        ------
        BudgetExhausted
            The spend would exceed ``budget_epsilon``.
        LedgerError
            The file changed into something unreadable since it was opened.
        """
        if not math.isfinite(now):
            raise ValueError("now must be a finite time in seconds")
        if budget_epsilon is not None and delta is None:
            raise ValueError("a budget check needs delta")
        with _locked(self._path):
            if not self._path.exists():
                raise LedgerError(f"privacy ledger {self._path} disappeared; refusing to "
                                  "start a fresh budget")
            self._entries = _read(self._path)       # another process may have recorded too
            if budget_epsilon is not None and delta is not None:
                reason = self.refusal_reason(budget_epsilon=budget_epsilon, delta=delta,
                                             planned_spend=spend)
                if reason is not None:
                    raise BudgetExhausted(reason)
            entries = (*self._entries, LedgerEntry(spend, float(now)))
            _write(self._path, [_entry_to_json(e) for e in entries])
            self._entries = entries


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` (one writer at a time)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LedgerError(f"cannot lock privacy ledger {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: Path) -> tuple[LedgerEntry, ...]:
    corrupt = (f"privacy ledger {path} is corrupt ({{}}); refusing to continue, because "
               "resetting it would forget privacy already spent — restore it from a backup or "
               "re-provision the device")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read privacy ledger {path}: {exc.strerror}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LedgerError(corrupt.format("not valid JSON")) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LedgerError(corrupt.format(f"not a {FORMAT} file"))
    if doc.get("version") != VERSION:
        raise LedgerError(corrupt.format(f"unsupported version {doc.get('version')!r}"))
    rows = doc.get("entries")
    if not isinstance(rows, list):
        raise LedgerError(corrupt.format("no entries list"))
    if doc.get("sha256") != _digest(rows):
        raise LedgerError(corrupt.format("its checksum does not match its entries"))
    try:
        return tuple(_entry_from_json(row) for row in rows)
    except ValueError as exc:
        raise LedgerError(corrupt.format(f"bad entry: {exc}")) from None


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    doc = {"format": FORMAT, "version": VERSION, "entries": rows, "sha256": _digest(rows)}
    data = (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, 0o600)
            out.write(data)
            out.flush()
            os.fsync(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LedgerError(f"cannot write privacy ledger {path}: {exc.strerror}") from None
