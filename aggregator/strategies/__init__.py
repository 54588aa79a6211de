"""Aggregation strategies and server optimizers (pure library: numpy only).

``create_strategy(name, **options).begin(layout, version)`` starts a round's
:class:`Aggregation`; ``add`` each accepted :class:`ClientUpdate`; ``result()`` gives the
:class:`AggregateResult`, independent of the order of ``add``; a :class:`ServerOptimizer` from
``create_server_optimizer`` applies it. Kernels are plain functions in :mod:`.aggregate`.
"""

from .base import AggregateResult, Aggregation, ClientUpdate, ServerOptimizer, Strategy
from .fedavg import FedAvg
from .fedbuff import FedBuff
from .krum import MultiKrum
from .median import Median
from .norm_bound import NormBounded
from .registry import (
    create_server_optimizer,
    create_strategy,
    server_optimizer_names,
    strategy_names,
)
from .server_opt import FedAdagrad, FedAdam, FedYogi, ServerMomentum, ServerSgd
from .trimmed_mean import TrimmedMean

__all__ = [
    "AggregateResult",
    "Aggregation",
    "ClientUpdate",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedBuff",
    "FedYogi",
    "Median",
    "MultiKrum",
    "NormBounded",
    "ServerMomentum",
    "ServerOptimizer",
    "ServerSgd",
    "Strategy",
    "TrimmedMean",
    "create_server_optimizer",
    "create_strategy",
    "server_optimizer_names",
    "strategy_names",
]
