"""Defense settings built on pairwise-masking secure aggregation (``securefed.secagg``).

``secagg``: Bonawitz et al. (CCS 2017) double masking; the server learns only the sum of
the surviving hospitals' (weighted, fixed-point) updates.  With ``secagg_plus = true`` the
masks follow a random Harary graph (Bell et al., CCS 2020).  The default mode is secure
against a server that deviates from the protocol (``mode = "malicious"``: identity keys,
consistency round, client-side checks); ``mode = "honest-but-curious"`` is the faster
option.  No round releases the sum of fewer than ``min_clients`` hospitals (default 3).
"""

from __future__ import annotations

from defenses.base import Defense, PartyView, register_defense
from securefed.secagg import SecAggChannel

__all__: list[str] = []

_SERVER_SECAGG = ("public keys and signatures, encrypted key shares, each hospital's masked "
                  "vector (uniformly random on its own) and, at the end of each round, the sum "
                  "of the survivors' updates (at least min_clients of them)")


def secagg_views(server: str = _SERVER_SECAGG) -> tuple[PartyView, ...]:
    return (
        PartyView("server", server, individual_updates=False, aggregate=True),
        PartyView("client", "its peers' public keys, shares addressed to it, the global model",
                  individual_updates=False, aggregate=True),
        PartyView("outsider", "the released final model", individual_updates=False,
                  aggregate=False),
    )


def _secagg(*, clip_range: float = 100.0, bits: int = 32, threshold: int | None = None,
            secagg_plus: bool = False, mode: str = "malicious", min_clients: int = 3) -> Defense:
    params = {"clip_range": clip_range, "bits": bits, "threshold": threshold,
              "secagg_plus": secagg_plus, "mode": mode, "min_clients": min_clients}
    return Defense(
        name="secagg",
        summary="Pairwise-masking secure aggregation (Bonawitz et al. 2017): the server sees "
                "only masked vectors and the sum.",
        channel_factory=lambda strategy: SecAggChannel(clip_range=clip_range, bits=bits,
                                                       threshold=threshold,
                                                       secagg_plus=secagg_plus, mode=mode,
                                                       min_clients=min_clients),
        views=secagg_views(),
        params=params,
    )


register_defense("secagg", _secagg)
