"""The secure-aggregation weight bound, checked before training starts.

Secure aggregation sums fixed-point encodings of ``[weight * update, weight]``; the weight
coordinate must lie in ``[0, max_weight]`` (:class:`~securefed.secagg.channel.SecAggChannel`),
and a larger weight is refused when the hospital uploads it.  Found then, in the middle of
a run, it wastes the rounds already trained and names no setting.  Each strategy's weight is
bounded by what the hospital holds (FedAvg: its number of training patients; FedMedHeter:
that number over ``reference_examples`` times the upper weight bound ``rho_max``), so the
bound can be checked for every hospital before round 0.
"""

from __future__ import annotations

import math
from typing import Any

from securefed.arrays import FederatedArrays
from securefed.errors import ConfigurationError
from securefed.federated.fedmedheter import FedMedHeter
from securefed.federated.strategy import Strategy, StrategyWrapper

__all__ = ["max_client_weight", "check_weight_bound"]


def max_client_weight(strategy: Strategy, num_examples: int) -> float | None:
    """The largest weight ``strategy`` can give a hospital with ``num_examples`` training
    patients, or ``None`` when it cannot be known in advance.

    A strategy may declare its own bound with a ``max_client_weight(num_examples)`` method;
    a wrapper that changes the weight without declaring one (a DP mechanism's uniform
    weight) has an unknown bound.
    """
    declared = getattr(type(strategy), "max_client_weight", None)
    if declared is not None:
        return float(declared(strategy, num_examples))
    weight_fn = type(strategy).client_weight
    if isinstance(strategy, StrategyWrapper):
        if weight_fn is StrategyWrapper.client_weight:
            return max_client_weight(strategy.inner, num_examples)
        return None
    if isinstance(strategy, FedMedHeter):
        if strategy.client_weighting == "samples":
            return float(num_examples)
        return float(num_examples) / strategy.reference_examples * float(strategy.weight_bounds[1])
    if weight_fn is Strategy.client_weight:
        return float(num_examples)
    return None


def check_weight_bound(strategy: Strategy, channel: Any, data: FederatedArrays) -> None:
    """Raise :class:`ConfigurationError` naming every hospital whose weight can exceed the
    channel's ``max_weight`` (channels without one are not checked)."""
    bound = getattr(channel, "max_weight", None)
    if bound is None:
        return
    over = []
    for client in data.clients:
        w = max_client_weight(strategy, client.num_examples)
        if w is not None and w > bound:
            over.append((client.name, client.num_examples, w))
    if not over:
        return
    need = max(w for _, _, w in over)
    who = "; ".join(f"hospital {name!r} ({n} training patients) up to {w:g}" for name, n, w in over)
    raise ConfigurationError(
        f"secure aggregation refuses client weights above max_weight={bound:g}, and "
        f"{strategy.name} would weight {who}; raise the bound to at least {math.ceil(need)} "
        f"(SecAggChannel(max_weight=...); securefed train: --secagg-max-weight {math.ceil(need)})")
