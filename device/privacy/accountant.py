"""Rényi-DP accounting for the Gaussian and the Poisson-subsampled Gaussian mechanism.

The math (module-level pure functions, numpy and scipy only) is kept apart from the bookkeeping
(:class:`RdpAccountant`, a run-length history of steps), as in Opacus ``accountants/analysis``.

Sources
-------
- Rényi DP and its composition (RDP adds over steps), and the basic (ε, δ) conversion:
  Mironov, "Rényi Differential Privacy", CSF 2017 (Prop. 1 and Prop. 3).
- RDP of the Poisson-subsampled Gaussian mechanism: Mironov, Talwar & Zhang, "Rényi Differential
  Privacy of the Sampled Gaussian Mechanism", arXiv:1908.10530 (2019): exact for integer orders by
  the binomial expansion (Sec. 3.2), and for fractional orders the two-series computation of
  Sec. 3.3 — implemented here as in TF Privacy / Google ``dp-accounting``
  (``rdp/rdp_privacy_accountant.py``) and Opacus (``accountants/analysis/rdp.py``).
- The improved conversion to (ε, δ):
  ε = rdp(α) − (log δ + log α)/(α − 1) + log((α − 1)/α), minimised over α — Balle, Barthe,
  Gaboardi, Hsu & Sato, "Hypothesis Testing Interpretations and Renyi Differential Privacy",
  AISTATS 2020 (Theorem 21); Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
  Privacy", NeurIPS 2020 (Prop. 12 / Eq. 20). Also: if δ > sqrt(1 − exp(−rdp(α))) the pair is
  (0, δ)-DP (Rényi divergence is non-decreasing in α, so rdp(α) ≥ KL, and the
  Bretagnolle–Huber inequality bounds the total variation by sqrt(1 − exp(−KL))).

Adjacency: add/remove one element of the input (one training example for DP-SGD), as in Abadi et
al. 2016, Opacus and ``dp-accounting``. :func:`accounted_step` maps a round's ``dp_mode`` onto
that (see its docstring for update-level DP, which is charged at half the noise multiplier).

Conservative by design: an order whose fractional series fails to converge counts as ε = ∞ at
that order (it is dropped from the minimum, never guessed); σ = 0 means ε = ∞.

>>> acc = RdpAccountant()
>>> acc.step(noise_multiplier=4.0, sample_rate=0.01, steps=10_000)
>>> round(acc.epsilon(1e-5), 3)                # classic conversion, as Abadi et al. report
1.259
>>> round(acc.epsilon(1e-5, tight=True), 3)    # improved conversion, as dp-accounting reports
1.035
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
from scipy import special

DEFAULT_ORDERS: tuple[float, ...] = (
    tuple(round(1 + x / 10, 1) for x in range(1, 100))      # 1.1, 1.2, …, 10.9
    + tuple(float(a) for a in range(11, 64))                 # 11, …, 63
    + (128.0, 256.0, 512.0, 1024.0)
)
"""Rényi orders α: ``dp-accounting``'s ``RdpAccountant`` grid (Opacus's default stops at 63)."""

DP_MODES = ("none", "update", "dpsgd", "ddg")
"""A round's ``dp_mode`` (``fedbeat.broker.rounds.TrainingConfig``)."""

_MAX_FRAC_TERMS = 1000
_STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# the math: pure functions
# ---------------------------------------------------------------------------------------------

def _check_orders(orders: Sequence[float]) -> np.ndarray:
    alphas = np.asarray(orders, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(alphas > 1) or \
            not np.all(np.isfinite(alphas)):
        raise ValueError("orders must be a non-empty sequence of finite numbers above 1")
    return alphas


def _check_mechanism(noise_multiplier: float, sample_rate: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if not 0 <= sample_rate <= 1:
        raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate!r}")


def _log_a_int(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_α for integer orders: the binomial expansion (Mironov et al. 2019, Sec. 3.2).

    A_α = Σ_{i=0..α} C(α, i) (1 − q)^(α−i) q^i exp((i² − i) / (2σ²)), summed in log space.
    """
    lengths = alphas.astype(np.int64) + 1
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    a = np.repeat(alphas, lengths)                          # all (α, i) pairs, one flat array
    i = (np.arange(lengths.sum()) - np.repeat(starts, lengths)).astype(np.float64)
    log_binom = special.gammaln(a + 1) - special.gammaln(i + 1) - special.gammaln(a - i + 1)
    terms = log_binom + i * math.log(q) + (a - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
    peak = np.maximum.reduceat(terms, starts)               # log-sum-exp per order
    return np.asarray(peak + np.log(np.add.reduceat(np.exp(terms - np.repeat(peak, lengths)),
                                                    starts)))


def _log_a_frac(q: float, sigma: float, alphas: np.ndarray, terms: int = 64) -> np.ndarray:
    """log A_α for fractional orders: the two series of Mironov et al. 2019, Sec. 3.3.

    Term by term this is TF Privacy's / dp-accounting's ``_compute_log_a_frac``, evaluated for
    all orders at once: each series is summed up to the first term at which both series are
    decreasing and 30 nats below the running total. An order that has not converged after 1000
    terms gets +∞ (conservative: it is then ignored by the conversion), as upstream.
    """
    out = np.full(alphas.shape, math.inf)
    pending = np.arange(alphas.size)
    while pending.size:
        a = alphas[pending][:, None]
        i = np.arange(terms, dtype=np.float64)[None, :]
        j = a - i
        z0 = sigma**2 * math.log(1 / q - 1) + 0.5
        # gammaln is log|Γ|: for i > α + 1 these are the binomial coefficients' magnitudes
        log_coef = special.gammaln(a + 1) - special.gammaln(i + 1) - special.gammaln(j + 1)
        log_t0 = log_coef + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coef + j * math.log(q) + i * math.log1p(-q)
        log_e0 = special.log_ndtr(-(i - z0) / sigma)      # log(erfc((i − z0)/(√2σ)) / 2)
        log_e1 = special.log_ndtr(-(z0 - j) / sigma)
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        total = np.logaddexp(np.logaddexp.accumulate(log_s0, axis=1),
                             np.logaddexp.accumulate(log_s1, axis=1))
        done = np.zeros_like(log_s0, dtype=bool)
        done[:, 1:] = ((log_s0[:, 1:] < log_s0[:, :-1]) & (log_s1[:, 1:] < log_s1[:, :-1])
                       & (np.maximum(log_s0, log_s1)[:, 1:] < total[:, 1:] - 30))
        found = done.any(axis=1)
        first = done.argmax(axis=1)
        rows = np.flatnonzero(found)
        out[pending[rows]] = total[rows, first[rows]]
        if terms >= _MAX_FRAC_TERMS:
            break
        pending, terms = pending[~found], _MAX_FRAC_TERMS
    return out


def rdp_gaussian(*, noise_multiplier: float, orders: Sequence[float] = DEFAULT_ORDERS
                 ) -> np.ndarray:
    """RDP of one Gaussian mechanism with sensitivity 1 and noise σ: α / (2σ²).

    Parameters
    ----------
    noise_multiplier
        σ, the noise standard deviation in units of the L2 sensitivity.
    orders
        Rényi orders α > 1.

    Returns
    -------
    numpy.ndarray
        RDP at each order (``inf`` everywhere when σ = 0). Mironov 2017, Prop. 7.
    """
    alphas = _check_orders(orders)
    _check_mechanism(noise_multiplier, 1.0)
    if noise_multiplier == 0:
        return np.full(alphas.shape, math.inf)
    return alphas / (2 * noise_multiplier**2)


@functools.lru_cache(maxsize=2048)        # ~1.3 KB per (q, σ): a device's whole history fits
def _rdp_per_step(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    """Per-step RDP of the sampled Gaussian at ``orders`` (cached, read-only)."""
    alphas = np.asarray(orders)
    if q == 0:
        out = np.zeros(alphas.shape)
    elif sigma == 0:
        out = np.full(alphas.shape, math.inf)
    elif q == 1:
        out = alphas / (2 * sigma**2)
    else:
        log_a = np.empty(alphas.shape)
        integer = alphas == np.floor(alphas)
        if integer.any():
            log_a[integer] = _log_a_int(q, sigma, alphas[integer])
        if not integer.all():
            log_a[~integer] = _log_a_frac(q, sigma, alphas[~integer])
        out = log_a / (alphas - 1)
    out.setflags(write=False)
    return out


def rdp_sampled_gaussian(*, sample_rate: float, noise_multiplier: float, steps: int = 1,
                         orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP of ``steps`` compositions of the Poisson-subsampled Gaussian mechanism.

    Each step includes every example independently with probability ``sample_rate`` (Poisson
    sampling — what ``fedbeat.device.trainer`` does under DP-SGD), sums their gradients clipped
    to L2 norm C, and adds N(0, σ²C²) per coordinate. Mironov, Talwar & Zhang 2019.

    Parameters
    ----------
    sample_rate
        q in [0, 1]; q = 1 is the plain Gaussian mechanism (:func:`rdp_gaussian`).
    noise_multiplier
        σ ≥ 0, noise standard deviation over the clipping norm.
    steps
        Number of steps composed (RDP adds: Mironov 2017, Prop. 1).
    orders
        Rényi orders α > 1.

    Returns
    -------
    numpy.ndarray
        RDP at each order; ``inf`` where it is unbounded or could not be bounded.
    """
    alphas = _check_orders(orders)
    _check_mechanism(noise_multiplier, sample_rate)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    per_step = _rdp_per_step(float(sample_rate), float(noise_multiplier),
                             tuple(float(a) for a in alphas))
    return per_step * steps if steps else np.zeros_like(per_step)


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def epsilon_from_rdp(*, rdp: Sequence[float] | np.ndarray, delta: float,
                     orders: Sequence[float] = DEFAULT_ORDERS) -> tuple[float, float]:
    """The smallest ε over the orders for which RDP implies (ε, δ)-DP (improved conversion).

    ε(α) = rdp(α) + log((α − 1)/α) − (log δ + log α)/(α − 1)  (Balle et al. 2020, Thm. 21;
    Canonne, Kamath & Steinke 2020), or 0 when δ > sqrt(1 − exp(−rdp(α))). Orders at or below
    1.01, where the bound is numerically unstable, are skipped.

    Parameters
    ----------
    rdp
        RDP at each order (from :func:`rdp_sampled_gaussian`, summed over mechanisms).
    delta
        Target δ in (0, 1).
    orders
        The orders ``rdp`` was computed at.

    Returns
    -------
    tuple of float
        ``(epsilon, optimal_order)``; ``(inf, nan)`` when no order gives a finite bound.
    """
    _check_delta(delta)
    alphas = _check_orders(orders)
    values = np.asarray(rdp, dtype=np.float64)
    if values.shape != alphas.shape:
        raise ValueError("rdp and orders must have the same length")
    best, best_order = math.inf, math.nan
    for alpha, r in zip(alphas.tolist(), values.tolist(), strict=True):
        r = max(r, 0.0)                      # RDP is non-negative; never round below zero
        if delta**2 + math.expm1(-r) > 0:
            eps = 0.0
        elif alpha > 1.01 and math.isfinite(r):
            eps = r + math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1)
        else:
            continue
        if eps < best:
            best, best_order = eps, alpha
    return max(0.0, best), best_order


def epsilon_from_rdp_classic(*, rdp: Sequence[float] | np.ndarray, delta: float,
                             orders: Sequence[float] = DEFAULT_ORDERS) -> tuple[float, float]:
    """ε = min over α of rdp(α) − log δ / (α − 1): Mironov 2017, Prop. 3.

    A valid but looser bound than :func:`epsilon_from_rdp`. It is the conversion behind the
    numbers in older papers and tools (Abadi et al.'s ε ≈ 1.26 for q = 0.01, σ = 4, 10,000 steps,
    δ = 1e-5). fedbeat reports and budgets with it (the conservative choice) and shows the
    improved bound beside it.
    """
    _check_delta(delta)
    alphas = _check_orders(orders)
    values = np.maximum(np.asarray(rdp, dtype=np.float64), 0.0)
    if values.shape != alphas.shape:
        raise ValueError("rdp and orders must have the same length")
    eps = values - math.log(delta) / (alphas - 1)
    if not np.any(np.isfinite(eps)):
        return math.inf, math.nan
    i = int(np.argmin(eps))
    return max(0.0, float(eps[i])), float(alphas[i])


def accounted_step(*, mode: str, noise_multiplier: float, sample_rate: float = 1.0
                   ) -> tuple[float, float]:
    """What the RDP accountant charges per step for a round run with ``dp_mode`` = ``mode``.

    Returns ``(noise_multiplier, sample_rate)`` for :meth:`RdpAccountant.step`, in units of the
    add/remove-one sensitivity the accountant assumes.

    - ``"dpsgd"``: per-example clipping to C, Poisson sampling with rate q, N(0, σ²C²) on the sum.
      Adding or removing one example moves the sum by at most C: charged as (σ, q). A
      record-level guarantee (one beat and its label).
    - ``"update"``: the whole update is clipped to C and N(0, σ²C²) is added once. The receiver
      sees this device's update by itself (local DP), so the neighbouring inputs are *any* two
      datasets of this patient, whose clipped updates can differ by up to 2C (the diameter of
      the clipping ball). Charged as (σ/2, 1): a user-level (patient-level) guarantee, which
      implies the record-level one.
    - ``"ddg"``: the device's clipped update enters a secure sum that carries the distributed
      discrete Gaussian's noise; ``noise_multiplier`` is the Gaussian-equivalent multiplier
      ``ddg_accounting.equivalent_noise_multiplier`` derives (an upper bound on the sum's RDP
      at every order, Kairouz et al. Theorem 1, for adding or removing the device). As for
      ``"update"``, the ledger protects any change of the patient's data, which moves the
      rounded update by up to twice its bound: charged as (σ_eq/2, 1), user-level.
    - ``"none"``: no noise: charged as (0, 1), i.e. ε = ∞.
    """
    if mode == "dpsgd":
        _check_mechanism(noise_multiplier, sample_rate)
        return noise_multiplier, sample_rate
    if mode == "update":
        _check_mechanism(noise_multiplier, 1.0)
        return noise_multiplier / 2.0, 1.0
    if mode == "ddg":
        _check_mechanism(noise_multiplier, 1.0)
        return noise_multiplier / 2.0, 1.0
    if mode == "none":
        return 0.0, 1.0
    raise ValueError(f"mode must be one of {', '.join(DP_MODES)}, got {mode!r}")


# ---------------------------------------------------------------------------------------------
# the bookkeeping
# ---------------------------------------------------------------------------------------------

class RdpAccountant:
    """Composes (sub)sampled Gaussian steps in Rényi DP; the state is a run-length history.

    Parameters
    ----------
    orders
        Rényi orders to track (default :data:`DEFAULT_ORDERS`).
    """

    mechanism: ClassVar[str] = "rdp"

    def __init__(self, *, orders: Sequence[float] = DEFAULT_ORDERS) -> None:
        self._orders = tuple(float(a) for a in _check_orders(orders))
        self._history: list[tuple[float, float, int]] = []

    @property
    def history(self) -> tuple[tuple[float, float, int], ...]:
        """``(noise_multiplier, sample_rate, steps)`` runs, oldest first."""
        return tuple(self._history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` steps of the Gaussian mechanism with noise σ, Poisson rate q.

        ``sample_rate`` 1.0 is the plain (update-level) Gaussian mechanism; σ = 0 makes ε
        infinite from then on.

        Raises
        ------
        ValueError
            σ negative or not finite, q outside [0, 1], or ``steps`` not a positive integer.
        """
        _check_mechanism(noise_multiplier, sample_rate)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        sigma, q = float(noise_multiplier), float(sample_rate)
        if self._history and self._history[-1][:2] == (sigma, q):
            self._history[-1] = (sigma, q, self._history[-1][2] + steps)
        else:
            self._history.append((sigma, q, steps))

    def rdp(self) -> np.ndarray:
        """The composed RDP at each of the accountant's orders."""
        total = np.zeros(len(self._orders))
        for sigma, q, steps in self._history:
            total = total + rdp_sampled_gaussian(sample_rate=q, noise_multiplier=sigma,
                                                 steps=steps, orders=self._orders)
        return total

    def epsilon(self, delta: float, *, tight: bool = False) -> float:
        """The ε of (ε, δ)-DP for everything recorded so far (an upper bound; ∞ if unbounded).

        By default the classic conversion (Mironov 2017), the looser of two valid bounds: it is
        what Abadi et al. reported and what budgets are charged against (conservative, as
        Opacus puts it: "we want guarantee, not just estimate"). ``tight=True`` gives the
        improved conversion (Balle et al. 2020), which ``dp-accounting`` reports.
        """
        _check_delta(delta)
        if not self._history:
            return 0.0                       # nothing released: no privacy spent
        convert = epsilon_from_rdp if tight else epsilon_from_rdp_classic
        eps, _ = convert(rdp=self.rdp(), delta=delta, orders=self._orders)
        return eps

    def state_dict(self) -> dict[str, object]:
        """A JSON-ready summary: the mechanism, a version and the history."""
        return {"mechanism": self.mechanism, "version": _STATE_VERSION,
                "history": [[sigma, q, steps] for sigma, q, steps in self._history]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Replace the history with ``state``'s; refuses another mechanism or a malformed one."""
        if state.get("mechanism") != self.mechanism:
            raise ValueError(f"state is for mechanism {state.get('mechanism')!r}, "
                             f"not {self.mechanism!r}")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported accountant state version {state.get('version')!r}")
        runs = state.get("history")
        if not isinstance(runs, list):
            raise ValueError("accountant state has no history list")
        fresh = RdpAccountant(orders=self._orders)
        for run in runs:
            if not (isinstance(run, list | tuple) and len(run) == 3):
                raise ValueError(f"malformed history entry {run!r}")
            sigma, q, steps = run
            if not (isinstance(sigma, int | float) and isinstance(q, int | float)) or \
                    isinstance(sigma, bool) or isinstance(q, bool):
                raise ValueError(f"malformed history entry {run!r}")
            fresh.step(noise_multiplier=float(sigma), sample_rate=float(q), steps=steps)
        self._history = fresh._history
