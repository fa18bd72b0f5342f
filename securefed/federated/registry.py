"""The strategies by name, for the command line, configuration files and deployment."""

from __future__ import annotations

from typing import Any

from securefed.federated.fedmedheter import FedMedHeter
from securefed.federated.personal import Ditto
from securefed.federated.strategy import FedAvg, FedProx, Strategy
from securefed.registry import Registry

__all__ = ["STRATEGIES", "register_strategy", "strategy_names", "get_strategy"]

STRATEGIES: Registry[Any] = Registry("strategy")


def register_strategy(name: str, factory: Any = None, *, replace: bool = False) -> Any:
    """Add a strategy class (or factory returning a :class:`Strategy`) under ``name``."""
    return STRATEGIES.register(name, factory, replace=replace)


def strategy_names() -> tuple[str, ...]:
    return STRATEGIES.names()


def get_strategy(name: str, **params: Any) -> Strategy:
    """A strategy instance by name; unknown names and parameters list the valid ones."""
    return STRATEGIES.build(name, **params)


register_strategy("fedavg", FedAvg)
register_strategy("fedprox", FedProx)
register_strategy("fedmedheter", FedMedHeter)
register_strategy("ditto", Ditto)
