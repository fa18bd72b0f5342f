"""The DP mechanisms by name, for the command line, configuration files and deployment.

The names are the DP modes used everywhere: ``central``, ``local`` and ``distributed``.
"""

from __future__ import annotations

from typing import Any

from securefed.dp.distributed import DistributedDP
from securefed.dp.mechanisms import CentralDP, ClientLevelDP, LocalDP
from securefed.federated.strategy import Strategy
from securefed.registry import Registry

__all__ = [
    "DP_MECHANISMS",
    "register_dp_mechanism",
    "dp_mechanism_names",
    "get_dp_mechanism",
    "make_dp_strategy",
]

DP_MECHANISMS: Registry[type[ClientLevelDP]] = Registry("DP mechanism")


def register_dp_mechanism(name: str, cls: type[ClientLevelDP] | None = None, *,
                          replace: bool = False) -> Any:
    """Add a client-level DP wrapper class under ``name``; a decorator without ``cls``."""
    return DP_MECHANISMS.register(name, cls, replace=replace)


def dp_mechanism_names() -> tuple[str, ...]:
    return DP_MECHANISMS.names()


def get_dp_mechanism(name: str) -> type[ClientLevelDP]:
    return DP_MECHANISMS.get(name)


register_dp_mechanism("central", CentralDP)
register_dp_mechanism("local", LocalDP)
register_dp_mechanism("distributed", DistributedDP)


def make_dp_strategy(mechanism: str, inner: Strategy, **kwargs: Any) -> ClientLevelDP:
    """Wrap ``inner`` with the named client-level mechanism (keyword arguments as the class)."""
    return DP_MECHANISMS.build(mechanism, inner, **kwargs)
