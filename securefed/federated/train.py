"""One entry point for every training algorithm, federated or centralised.

``run_algorithm(data, name, ...)`` trains with a strategy of the registry
(:mod:`securefed.federated.registry`) or, for ``"centralized"``, with the pooled baseline
(:func:`~securefed.federated.centralized.run_centralized`): the command line's
``--algorithm`` and a program reach both the same way.  :func:`algorithm_names` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from securefed.arrays import FederatedArrays
from securefed.channel import AggregationChannel
from securefed.errors import ConfigurationError
from securefed.federated.centralized import run_centralized
from securefed.federated.engine import ProgressCallback, run_federated
from securefed.federated.registry import get_strategy, strategy_names
from securefed.federated.strategy import Strategy
from securefed.federated.types import RunResult
from securefed.models import ModelSpec

__all__ = ["CENTRALIZED", "algorithm_names", "run_algorithm"]

#: The name of the centralised baseline among the algorithms.
CENTRALIZED = "centralized"

_CENTRALIZED_PARAMS = ("learning_rate", "local_epochs", "batch_size")


def algorithm_names() -> tuple[str, ...]:
    """Every algorithm ``run_algorithm`` accepts: the registered strategies, then ``"centralized"``."""
    return (*strategy_names(), CENTRALIZED)


def run_algorithm(
    data: FederatedArrays,
    algorithm: str | Strategy,
    *,
    model: ModelSpec,
    rounds: int,
    seed: int = 0,
    channel: AggregationChannel | None = None,
    progress: bool | ProgressCallback = False,
    record_transcript: bool = False,
    initial_params: np.ndarray | None = None,
    privacy_ledger: Mapping[str, Any] | None = None,
    **params: Any,
) -> RunResult:
    """Train ``model`` on ``data`` with ``algorithm`` and return the run's result.

    ``algorithm``: a registered strategy name (built with ``params``, its hyper-parameters;
    those not given keep the strategy's library defaults), a :class:`Strategy` instance (a
    strategy already wrapped by a DP mechanism, say), or ``"centralized"`` (the pooled
    baseline: no channel; ``params`` among ``learning_rate``, ``local_epochs``,
    ``batch_size``).  Unknown names and parameters raise :class:`ConfigurationError` naming
    the valid ones.  ``initial_params`` and ``privacy_ledger`` continue a federated run
    (:func:`~securefed.federated.engine.run_federated`).
    """
    if isinstance(algorithm, str) and algorithm == CENTRALIZED:
        if initial_params is not None or privacy_ledger is not None:
            raise ConfigurationError(
                "initial_params and privacy_ledger continue federated training; got "
                "algorithm 'centralized'")
        if channel is not None:
            raise ConfigurationError(
                f"centralized training pools the rows at one server and uses no aggregation "
                f"channel; got channel {getattr(channel, 'name', channel)!r}")
        extra = sorted(set(params) - set(_CENTRALIZED_PARAMS))
        if extra:
            raise ConfigurationError(
                f"centralized training takes {list(_CENTRALIZED_PARAMS)}, got also {extra}")
        return run_centralized(data, model=model, rounds=rounds, seed=seed, progress=progress,
                               **params)
    if isinstance(algorithm, str):
        if algorithm not in strategy_names():
            raise ConfigurationError(
                f"unknown algorithm {algorithm!r}; valid: {list(algorithm_names())}")
        strategy = get_strategy(algorithm, **params)
    elif isinstance(algorithm, Strategy):
        if params:
            raise ConfigurationError(
                f"hyper-parameters {sorted(params)} apply when the algorithm is given by name; "
                "a Strategy instance carries its own")
        strategy = algorithm
    else:
        raise ConfigurationError(
            f"algorithm must be a name {list(algorithm_names())} or a Strategy, got {algorithm!r}")
    return run_federated(data, strategy=strategy, model=model, rounds=rounds, seed=seed,
                         channel=channel, progress=progress, record_transcript=record_transcript,
                         initial_params=initial_params, privacy_ledger=privacy_ledger)
