"""Names of the DP mechanisms, for the command line and configuration files."""

from __future__ import annotations

from typing import Any

from securefed.dp.distributed import DistributedDP
from securefed.dp.mechanisms import CentralDP, ClientLevelDP, LocalDP
from securefed.errors import ConfigurationError
from securefed.federated.strategy import Strategy

__all__ = ["DP_MECHANISMS", "make_dp_strategy"]

DP_MECHANISMS: dict[str, type[ClientLevelDP]] = {
    "central": CentralDP,
    "local": LocalDP,
    "distributed": DistributedDP,
}


def make_dp_strategy(mechanism: str, inner: Strategy, **kwargs: Any) -> ClientLevelDP:
    """Wrap ``inner`` with the named client-level mechanism (keyword arguments as the class)."""
    try:
        cls = DP_MECHANISMS[mechanism]
    except KeyError:
        raise ConfigurationError(
            f"unknown DP mechanism {mechanism!r}; valid: {sorted(DP_MECHANISMS)}") from None
    return cls(inner, **kwargs)
