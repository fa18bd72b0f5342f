"""Defense settings built on client-level differential privacy (``securefed.dp``).

* ``dp-central``: DP-FedAvg (McMahan et al., ICLR 2018): clients clip, the server adds
  Gaussian noise to the sum.  The server is trusted with the clipped updates; the noise
  protects the released model (against clients and outsiders).
* ``dp-local``: each client adds Gaussian noise before upload; the server sees noisy updates.
* ``secagg+dp``: distributed DP (Kairouz et al., ICML 2021): each client adds a share of
  discrete Gaussian noise in the integer domain inside secure aggregation, so only the
  noisy sum is ever revealed.

All three record epsilon per round at ``delta`` through the dp-accounting library, in the
privacy ledger the run's result carries (``RunResult.privacy_ledger``);
``securefed.dp.privacy_report(run)`` describes every epsilon (unit, neighbouring relation,
delta, accountant, trust, the patient-level epsilon, and for ``secagg+dp`` the epsilon if
hospitals collude with the server).  Noise comes from the OS CSPRNG; ``reproducible_noise =
true`` makes it reproducible from the seed, and every epsilon of such a run is marked not
private.  The defaults (clip norm 0.5, noise multiplier 1.0) are a middle setting, not a
recommendation: with three hospitals, client-level DP buys a small epsilon only with heavy
noise, and the audit's report shows the epsilon each run spent beside its accuracy.
"""

from __future__ import annotations

from typing import Any

from defenses.base import Defense, PartyView, RunContext, register_defense
from defenses.secagg import secagg_views
from securefed.dp import CentralDP, DistributedDP, LocalDP
from securefed.federated import AggregationChannel, PlainChannel, Strategy
from securefed.secagg import secagg_channel_for

__all__ = ["MECHANISM_OF_DEFENSE"]

#: The securefed.dp mechanism name (``central``, ``local``, ``distributed``) of each DP defense,
#: for ``securefed.dp.audit_one_run`` and reports.
MECHANISM_OF_DEFENSE = {"dp-central": "central", "dp-local": "local", "secagg+dp": "distributed"}


def _dp_kwargs(clip_norm: float, noise_multiplier: float | None, target_epsilon: float | None,
               delta: float, ctx: RunContext, reproducible_noise: bool) -> dict[str, Any]:
    return {"clip_norm": clip_norm, "noise_multiplier": noise_multiplier,
            "target_epsilon": target_epsilon, "delta": delta, "num_clients": ctx.num_clients,
            "clients_per_round": ctx.clients_per_round, "rounds": ctx.rounds,
            "reproducible_noise": reproducible_noise}


def _params(clip_norm: float, noise_multiplier: float | None, target_epsilon: float | None,
            delta: float, reproducible_noise: bool) -> dict[str, Any]:
    return {"clip_norm": clip_norm, "noise_multiplier": noise_multiplier,
            "target_epsilon": target_epsilon, "delta": delta,
            "reproducible_noise": reproducible_noise}


def _central(*, clip_norm: float = 0.5, noise_multiplier: float | None = 1.0,
             target_epsilon: float | None = None, delta: float = 1e-5,
             reproducible_noise: bool = False) -> Defense:
    def wrap(s: Strategy, ctx: RunContext) -> Strategy:
        return CentralDP(s, **_dp_kwargs(clip_norm, noise_multiplier, target_epsilon, delta, ctx,
                                       reproducible_noise))

    return Defense(
        name="dp-central",
        summary="Central DP (DP-FedAvg): updates clipped to clip_norm, Gaussian noise added to "
                "the sum by the server.",
        channel_factory=lambda strategy: PlainChannel(),
        wrappers=(wrap,),
        views=(
            PartyView("server", "each hospital's clipped and bounded update in the clear (the "
                      "server is trusted to add the noise)", individual_updates=True,
                      aggregate=True),
            PartyView("client", "the noisy global model of each round", individual_updates=False,
                      aggregate=True),
            PartyView("outsider", "the released (noisy) final model", individual_updates=False,
                      aggregate=False),
        ),
        params=_params(clip_norm, noise_multiplier, target_epsilon, delta, reproducible_noise),
    )


def _local(*, clip_norm: float = 0.5, noise_multiplier: float | None = 1.0,
           target_epsilon: float | None = None, delta: float = 1e-5,
           reproducible_noise: bool = False) -> Defense:
    def wrap(s: Strategy, ctx: RunContext) -> Strategy:
        return LocalDP(s, **_dp_kwargs(clip_norm, noise_multiplier, target_epsilon, delta, ctx,
                                       reproducible_noise))

    return Defense(
        name="dp-local",
        summary="Local DP: each hospital clips its update and adds Gaussian noise before upload.",
        channel_factory=lambda strategy: PlainChannel(),
        wrappers=(wrap,),
        views=(
            PartyView("server", "each hospital's clipped and noised update", individual_updates=True,
                      aggregate=True),
            PartyView("client", "the global model of each round", individual_updates=False,
                      aggregate=True),
            PartyView("outsider", "the released final model", individual_updates=False,
                      aggregate=False),
        ),
        params=_params(clip_norm, noise_multiplier, target_epsilon, delta, reproducible_noise),
    )


def _distributed(*, clip_norm: float = 0.5, noise_multiplier: float | None = 1.0,
                 target_epsilon: float | None = None, delta: float = 1e-5,
                 bits: int = 32, reproducible_noise: bool = False,
                 min_clients: int = 3) -> Defense:
    def wrap(s: Strategy, ctx: RunContext) -> Strategy:
        return DistributedDP(s, **_dp_kwargs(clip_norm, noise_multiplier, target_epsilon, delta,
                                             ctx, reproducible_noise))

    def channel(strategy: Strategy) -> AggregationChannel:
        # the channel's range is widened for the noise shares (securefed.secagg.secagg_channel_for)
        # min_clients: secure aggregation's own floor on contributors (below 3 with a warning)
        return secagg_channel_for(strategy, bits=bits,  # type: ignore[arg-type]
                                  min_clients=min_clients)

    return Defense(
        name="secagg+dp",
        summary="Distributed DP inside secure aggregation: each hospital adds a share of discrete "
                "Gaussian noise; the server sees masked vectors and the noisy sum.",
        channel_factory=channel,
        wrappers=(wrap,),
        views=secagg_views("masked vectors and the sum of the survivors' clipped updates plus "
                           "the hospitals' combined discrete Gaussian noise (a server that "
                           "colludes with k hospitals removes their k noise shares)"),
        params={**_params(clip_norm, noise_multiplier, target_epsilon, delta, reproducible_noise),
                "bits": bits, "min_clients": min_clients},
    )


register_defense("dp-central", _central)
register_defense("dp-local", _local)
register_defense("secagg+dp", _distributed)
