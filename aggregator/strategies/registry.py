"""Config names to strategies and server optimizers: ``create_strategy("krum", ...)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .base import ServerOptimizer, Strategy
from .fedavg import FedAvg
from .fedbuff import FedBuff
from .krum import MultiKrum
from .median import Median
from .norm_bound import NormBounded
from .server_opt import FedAdagrad, FedAdam, FedYogi, ServerMomentum, ServerSgd
from .trimmed_mean import TrimmedMean

_STRATEGIES: dict[str, Callable[..., Strategy]] = {
    cls.name: cls for cls in (FedAvg, TrimmedMean, Median, MultiKrum, FedBuff)
}
_OPTIMIZERS: dict[str, Callable[..., ServerOptimizer]] = {
    cls.name: cls for cls in (ServerSgd, ServerMomentum, FedAdagrad, FedAdam, FedYogi)
}
T = TypeVar("T")


def _options(factory: Callable[..., object]) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(factory).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _create(kind: str, table: dict[str, Callable[..., T]], name: str, options: dict[str, Any],
            extra: tuple[str, ...] = ()) -> T:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    accepted = _options(table[name])
    unknown = sorted(set(options) - set(accepted) - set(extra))
    if unknown:
        listed = sorted([*accepted, *extra])
        raise ValueError(f"{kind} {name!r} has no option(s) {unknown}; its options are "
                         f"{listed or 'none'}")
    required = sorted(k for k, p in accepted.items()
                      if p.default is inspect.Parameter.empty and k not in options)
    if required:
        raise ValueError(f"{kind} {name!r} needs option(s) {required}")
    return table[name](**{k: v for k, v in options.items() if k not in extra})


def create_strategy(name: str, **options: Any) -> Strategy:
    """Build a strategy from its config name and options.

    Names: ``fedavg``; ``trimmed-mean`` (``trim_fraction``); ``median``; ``krum`` (Multi-Krum:
    ``num_byzantine``, ``num_selected``); ``fedbuff`` (``buffer_size``, ``max_staleness``,
    ``sample_weighted``). Every strategy also takes ``max_norm``, which wraps it in
    :class:`~.norm_bound.NormBounded`.

    Raises
    ------
    ValueError
        Unknown name or option, a missing required option, or a bad value; the message lists
        what is accepted.
    """
    strategy = _create("strategy", _STRATEGIES, name, options, extra=("max_norm",))
    if "max_norm" in options:
        return NormBounded(strategy, options["max_norm"])
    return strategy


def create_server_optimizer(name: str, **options: Any) -> ServerOptimizer:
    """Build a server optimizer: ``sgd`` (``lr``, default 1.0 = FedAvg), ``fedavgm`` (``lr``,
    ``momentum``), ``fedadagrad``, ``fedadam``, ``fedyogi`` (``lr``, ``beta1``, ``beta2``,
    ``tau``).

    Raises
    ------
    ValueError
        Unknown name or option, or a bad value.
    """
    return _create("server optimizer", _OPTIMIZERS, name, options)


def strategy_names() -> tuple[str, ...]:
    """The registered strategy names."""
    return tuple(sorted(_STRATEGIES))


def server_optimizer_names() -> tuple[str, ...]:
    """The registered server optimizer names."""
    return tuple(sorted(_OPTIMIZERS))
