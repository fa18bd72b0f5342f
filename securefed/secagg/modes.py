"""The two threat models secure aggregation runs under, and the minimum number of contributors.

``MALICIOUS`` (the default): the server may deviate from the protocol in any way (lie about
who survived, substitute keys, send different clients different thresholds, directories or
models); hospitals hold pinned identity keys and the consistency round runs.
``HONEST_BUT_CURIOUS``: the server follows the protocol and only looks; faster, and the only
mode in which a threshold of at most half of a client's share holders is accepted.

``DEFAULT_MIN_CLIENTS``: no round releases the sum of fewer than 3 hospitals (with two, each
learns the other's input from the sum and its own).
"""

from __future__ import annotations

import numpy as np

from securefed.errors import ConfigurationError

__all__ = ["MALICIOUS", "HONEST_BUT_CURIOUS", "MODES", "DEFAULT_MIN_CLIENTS", "check_mode",
           "check_min_clients", "is_majority"]

MALICIOUS = "malicious"
HONEST_BUT_CURIOUS = "honest-but-curious"
MODES = (MALICIOUS, HONEST_BUT_CURIOUS)
DEFAULT_MIN_CLIENTS = 3


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def check_min_clients(min_clients: int) -> int:
    if isinstance(min_clients, bool) or not isinstance(min_clients, (int, np.integer)) or min_clients < 1:
        raise ConfigurationError(f"min_clients must be an integer >= 1, got {min_clients!r}")
    return int(min_clients)


def is_majority(threshold: int, holders: int) -> bool:
    """``2 t > holders``: no two disjoint sets of ``t`` share holders exist."""
    return 2 * threshold > holders
