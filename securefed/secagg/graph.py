"""Communication graphs: the complete graph (Bonawitz et al., CCS 2017) and the SecAgg+
random Harary graph (Bell et al., CCS 2020), with the choice of degree ``k`` and threshold ``t``.

In SecAgg+ each client masks with, and shares its secrets among, only its ``k`` neighbours
in a random ``k``-regular graph, so its cost grows with ``k = O(log n)`` instead of ``n``.
The graph is the Harary graph ``H_{k,n}`` (a ring where each node is joined to the ``k/2``
nearest nodes on either side) with the node labels permuted uniformly at random by the
server, using the OS CSPRNG (the graph is public; only its randomness matters).

Choosing ``k`` and ``t`` (after the conditions of Bell et al.; the bounds below are ours).  Let ``gamma`` be the
largest fraction of clients the adversary may corrupt (they collude with the server),
``delta`` the largest fraction that drops out during a round, ``sigma`` the statistical
security parameter and ``eta`` the correctness parameter.  We require, for a random
labelling of the ring:

1. *No honest client has ``t`` or more corrupt share holders*, else the coalition rebuilds
   both of its secrets.  The number of corrupt neighbours of a fixed client is
   hypergeometric, dominated by ``Binomial(k, gamma)`` (Hoeffding 1963, Thm. 4), so with a
   union bound over clients:  ``n * P[Bin(k, gamma) >= t] <= 2^-sigma``.
2. *The honest, surviving clients stay connected*, else the server learns the partial sum of
   a component.  In ``H_{k,n}`` the remaining nodes are connected unless at least two
   disjoint runs of ``k/2`` consecutive ring positions are all removed (corrupt or dropped);
   each such pair of runs has probability at most ``q^k`` with ``q = gamma + delta``, so we
   require ``(n^2 / 2) * q^k <= 2^-sigma``.
3. *Every client keeps ``t`` live share holders*, so that its seed or key can be rebuilt:
   ``n * P[Bin(k, 1 - delta) < t] <= 2^-eta``.

:func:`choose_degree_and_threshold` returns the smallest even ``k`` for which a ``t``
meets all three.  In malicious mode (the default) ``t`` must be a majority of the ``k + 1``
share holders (``2 t > k + 1``), so a server that lies about who dropped cannot collect both
shares of one client: the finder takes ``t = max(t_secure, floor((k + 1) / 2) + 1)``, tries
larger ``k`` (up to the complete graph ``k = n - 1``) until that ``t`` also meets the
correctness bound, and otherwise raises :class:`ConfigurationError` naming the
sub-majority ``(k, t)`` it would have needed.  Only in honest-but-curious mode does it fall
back to the smallest secure ``t`` below the majority, with a warning naming it.

>>> choose_degree_and_threshold(1000, corrupt_fraction=0.05, dropout_fraction=0.1)
(38, 20)
>>> choose_degree_and_threshold(500, corrupt_fraction=0.05, dropout_fraction=0.3)
(204, 103)
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Mapping, Sequence

from securefed.errors import ConfigurationError
from securefed.secagg.modes import HONEST_BUT_CURIOUS, MALICIOUS, check_mode

__all__ = ["complete_graph", "harary_graph", "choose_degree_and_threshold"]

Graph = Mapping[int, frozenset[int]]


def complete_graph(ids: Sequence[int]) -> dict[int, frozenset[int]]:
    """Every client is a neighbour of every other (the original protocol)."""
    everyone = frozenset(int(i) for i in ids)
    return {int(i): everyone - {int(i)} for i in ids}


def harary_graph(ids: Sequence[int], *, degree: int) -> dict[int, frozenset[int]]:
    """A ``degree``-regular Harary graph on ``ids`` with a uniformly random labelling.

    ``degree`` must be even (each node joins ``degree / 2`` nodes on each side of the ring)
    and smaller than ``len(ids)``; ``degree >= len(ids) - 1`` gives the complete graph.
    """
    n = len(ids)
    if degree < 2 or degree % 2:
        raise ConfigurationError(f"degree must be an even integer >= 2, got {degree}")
    if degree >= n - 1:
        return complete_graph(ids)
    order = [int(i) for i in ids]
    secrets.SystemRandom().shuffle(order)  # public graph, but the server must not pick it
    half = degree // 2
    graph: dict[int, frozenset[int]] = {}
    for pos, node in enumerate(order):
        graph[node] = frozenset(order[(pos + s) % n] for s in range(-half, half + 1) if s != 0)
    return graph


def _log2_union_tail(n: int, log_tail: float) -> float:
    return math.log2(n) + log_tail / math.log(2)


def choose_degree_and_threshold(
    n: int,
    *,
    corrupt_fraction: float,
    dropout_fraction: float,
    sigma: float = 40.0,
    eta: float = 20.0,
    mode: str = MALICIOUS,
) -> tuple[int, int]:
    """Smallest even degree ``k`` and a threshold ``t`` meeting the three bounds above.

    Returns ``(n - 1, t)`` (the complete graph) when no sparser graph qualifies; raises
    :class:`ConfigurationError` when not even the complete graph can meet them with a
    majority threshold (malicious mode) or at all (honest-but-curious mode).
    """
    check_mode(mode)
    if n < 2:
        raise ConfigurationError(f"n must be >= 2, got {n}")
    if not 0 <= corrupt_fraction < 1 or not 0 <= dropout_fraction < 1:
        raise ConfigurationError(
            f"corrupt_fraction and dropout_fraction must be in [0, 1), got "
            f"{corrupt_fraction} and {dropout_fraction}"
        )
    from scipy.stats import binom  # imported here: scipy.stats is slow to import

    q = corrupt_fraction + dropout_fraction
    if q >= 1:
        raise ConfigurationError(f"corrupt_fraction + dropout_fraction must be < 1, got {q}")

    def completes(k: int, t: int) -> bool:
        # P[Bin(k, 1 - delta) < t] = P[Bin(k, 1 - delta) <= t - 1]
        log_fail = binom.logcdf(t - 1, k, 1 - dropout_fraction) if dropout_fraction > 0 else -math.inf
        return t <= k and _log2_union_tail(n, log_fail) <= -eta

    fallback: tuple[int, int] | None = None
    for k in list(range(2, n - 1, 2)) + [n - 1]:
        if k < n - 1:  # the complete graph is always connected
            if q > 0 and math.log2(n * n / 2) + k * math.log2(q) > -sigma:
                continue
        t_secure = _smallest_secure_t(n, k, corrupt_fraction, sigma)
        if t_secure is None:
            continue
        t_major = max(t_secure, (k + 1) // 2 + 1)
        if completes(k, t_major):
            return k, t_major
        if fallback is None and completes(k, t_secure):
            fallback = (k, t_secure)
            if mode == HONEST_BUT_CURIOUS:
                warnings.warn(
                    f"secagg+: at degree k = {k} no majority threshold completes with "
                    f"dropout_fraction={dropout_fraction} (eta={eta}); using the sub-majority "
                    f"t = {t_secure} of {k + 1} share holders, secure only against a server that "
                    "follows the protocol", stacklevel=2)
                return fallback
    if fallback is not None:
        raise ConfigurationError(
            f"no degree k <= {n - 1} has a majority threshold (2 t > k + 1) that meets sigma={sigma}, "
            f"eta={eta} for n={n}, corrupt_fraction={corrupt_fraction}, dropout_fraction="
            f"{dropout_fraction}; it would need the sub-majority (k, t) = {fallback}, which a "
            "server that lies about dropouts can exploit. Lower eta or dropout_fraction, or "
            "pass mode='honest-but-curious' explicitly")
    raise ConfigurationError(
        f"no degree k <= {n - 1} and threshold t meet sigma={sigma}, eta={eta} for n={n}, "
        f"corrupt_fraction={corrupt_fraction}, dropout_fraction={dropout_fraction}; "
        "lower sigma or eta, or assume smaller fractions"
    )


def _smallest_secure_t(n: int, k: int, gamma: float, sigma: float) -> int | None:
    from scipy.stats import binom

    if gamma == 0:
        return 1
    for t in range(1, k + 1):
        # P[Bin(k, gamma) >= t] = sf(t - 1)
        if _log2_union_tail(n, binom.logsf(t - 1, k, gamma)) <= -sigma:
            return t
    return None
