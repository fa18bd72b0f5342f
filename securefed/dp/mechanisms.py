"""Client-level differential privacy as strategy wrappers: central and local Gaussian noise.

Both wrappers clip each client's raw update to L2 norm ``clip_norm`` (``C``) *before* it is
weighted, and replace the wrapped strategy's client weight by the uniform weight 1, so that
one client can move the sum of weighted updates by at most ``C``: with example-count weights
a hospital with many patients would have a larger, data-dependent influence and the noise
scale would no longer match the sensitivity.  This is the uniform special case of the
bounded weights ``w_k = min(n_k / w_hat, 1)`` of McMahan et al. (ICLR 2018, Algorithm 1).

:class:`CentralDP` (DP-FedAvg, McMahan et al. 2018, Algorithm 1 with the fixed-denominator
estimator ``f_f``): the server adds ``N(0, (z C)^2 I)`` to the sum of clipped updates and
divides by the *expected* number of clients ``m = q K`` rather than the realised count,
so that the denominator does not itself depend on who took part.  Privacy holds against
anyone who sees the model after aggregation, not against the server (which sees every
update in the clear unless the channel hides them; see :mod:`securefed.dp.distributed`).

:class:`LocalDP`: each client adds ``N(0, (z C)^2 I)`` to its own clipped update before
upload, so even the server sees only noisy updates.  Any two updates in the ball differ by
up to ``2 C``, so one round is a Gaussian mechanism with multiplier ``z / 2`` under the
replace-one relation; there is no amplification by sampling (the server knows who was
sampled), and the reported epsilon is that of a client that took part in every round.

Budget enforcement: with ``target_epsilon`` set, :meth:`before_round` raises
:class:`~securefed.errors.PrivacyBudgetExceeded` before a round whose release would push
epsilon past the target; the engine attaches the result trained so far, which
:func:`save_partial_result` writes to disk.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import NeighboringRelation
from dp_accounting.dp_event import DpEvent

from securefed.channel import ChannelResult
from securefed.dp.accounting import (
    ACCOUNTANTS,
    SAMPLINGS,
    RoundAccountant,
    calibrate_noise_multiplier,
    sampled_gaussian_event,
)
from securefed.dp.clipping import check_clip_norm, check_delta, check_noise_multiplier, clip_l2
from securefed.dp.noise import GaussianNoise
from securefed.errors import ConfigurationError, PrivacyBudgetExceeded
from securefed.federated.strategy import Strategy, StrategyWrapper
from securefed.federated.types import LocalResult

__all__ = ["ClientLevelDP", "CentralDP", "LocalDP", "save_partial_result"]


class ClientLevelDP(StrategyWrapper):
    """Shared floor of the client-level DP wrappers: clipping, uniform weights, the ledger,
    calibration and budget enforcement.  Subclasses say where the noise goes and what one
    round is as a library event (:meth:`round_event`).

    Parameters
    ----------
    inner:
        The strategy to protect (FedAvg, FedProx, FedMedHeter...).
    clip_norm:
        ``C``, the L2 bound on each client's update.
    noise_multiplier:
        ``z = sigma / C``.  Leave ``None`` to calibrate it from ``target_epsilon`` and
        ``rounds``.
    target_epsilon, delta:
        The privacy budget.  With ``target_epsilon`` set, a round that would exceed it is
        refused.  ``delta`` is also the delta at which every round's epsilon is reported.
    num_clients, clients_per_round:
        ``K`` and ``m`` of the engine (``m`` defaults to ``K``); ``q = m / K``.
    rounds:
        Planned number of rounds (needed only for calibration).
    accountant, sampling:
        See :mod:`securefed.dp.accounting`.
    secure, seed:
        See :mod:`securefed.dp.noise`.
    """

    mechanism = "client-level"

    def __init__(
        self,
        inner: Strategy,
        *,
        clip_norm: float,
        noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
        delta: float = 1e-5,
        num_clients: int,
        clients_per_round: int | None = None,
        rounds: int | None = None,
        accountant: str = "rdp",
        sampling: str = "poisson",
        secure: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(inner)
        self.clip_norm = check_clip_norm(clip_norm)
        self.delta = check_delta(delta)
        if not (isinstance(num_clients, int) and num_clients >= 1):
            raise ConfigurationError(f"num_clients must be an integer >= 1, got {num_clients!r}")
        m = num_clients if clients_per_round is None else clients_per_round
        if not (isinstance(m, int) and 1 <= m):
            raise ConfigurationError(f"clients_per_round must be an integer >= 1, got {m!r}")
        self.num_clients = num_clients
        self.clients_per_round = min(m, num_clients)
        if accountant not in ACCOUNTANTS:
            raise ConfigurationError(f"unknown accountant {accountant!r}; valid: {list(ACCOUNTANTS)}")
        if sampling not in SAMPLINGS:
            raise ConfigurationError(f"unknown sampling {sampling!r}; valid: {list(SAMPLINGS)}")
        self.accountant_name = accountant
        self.sampling = sampling
        if target_epsilon is not None and not (
                isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon)
                and target_epsilon > 0):
            raise ConfigurationError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.rounds = rounds
        if noise_multiplier is None:
            if self.target_epsilon is None or rounds is None:
                raise ConfigurationError(
                    "give noise_multiplier, or target_epsilon and rounds to calibrate it; "
                    f"got noise_multiplier=None, target_epsilon={target_epsilon!r}, rounds={rounds!r}")
            self.noise_multiplier = self._calibrate(rounds)
            self.calibrated = True
        else:
            self.noise_multiplier = check_noise_multiplier(noise_multiplier)
            self.calibrated = False
        self.noise = GaussianNoise(secure=secure, seed=seed)
        self.ledger = RoundAccountant(accountant=accountant,
                                      neighboring_relation=self.neighboring_relation())
        if self.target_epsilon is not None:
            first = self.ledger.epsilon_if(self.round_event(), delta=self.delta)
            if first > self.target_epsilon:
                raise ConfigurationError(
                    f"noise_multiplier={self.noise_multiplier} cannot reach the target: one round "
                    f"already costs epsilon={first:.4g} at delta={self.delta}, above "
                    f"target_epsilon={self.target_epsilon}; expected a larger noise_multiplier "
                    f"or target")

    # ------------------------------------------------------------------ accounting
    @property
    def sampling_rate(self) -> float:
        return self.clients_per_round / self.num_clients

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Gaussian noise, ``z * C``."""
        return self.noise_multiplier * self.clip_norm

    def neighboring_relation(self) -> NeighboringRelation:
        _, rel = sampled_gaussian_event(noise_multiplier=1.0, sampling_rate=self.sampling_rate,
                                        sampling=self.sampling, population=self.num_clients)
        return rel

    def round_event(self) -> DpEvent:
        """One round as a ``dp_accounting`` event."""
        event, _ = sampled_gaussian_event(noise_multiplier=self.noise_multiplier,
                                          sampling_rate=self.sampling_rate,
                                          sampling=self.sampling, population=self.num_clients)
        return event

    def _calibrate(self, rounds: int) -> float:
        return calibrate_noise_multiplier(
            target_epsilon=self.target_epsilon, delta=self.delta, rounds=rounds,
            sampling_rate=self.sampling_rate, sampling=self.sampling,
            population=self.num_clients, accountant=self.accountant_name)

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta``."""
        return self.ledger.epsilon(delta=self.delta)

    # ------------------------------------------------------------------ client side
    def client_weight(self, result: LocalResult, *, client_state: dict[str, Any]) -> float:
        """Uniform weight 1: the sensitivity of the sum is then exactly ``C``."""
        return 1.0

    def clip(self, update: np.ndarray, *, client_state: dict[str, Any]) -> np.ndarray:
        clipped, norm = clip_l2(update, clip_norm=self.clip_norm)
        client_state["dp_last_norm"] = norm
        client_state["dp_clipped"] = norm > self.clip_norm
        return clipped

    def client_process(self, update, weight, *, client_state, rng):  # type: ignore[override]
        clipped = self.clip(update, client_state=client_state)
        return self.inner.client_process(clipped, weight, client_state=client_state, rng=rng)

    # ------------------------------------------------------------------ server side
    def before_round(self, round_index: int) -> None:
        """Refuse a round that would exceed the budget; a run restarting at round 0 starts
        a fresh ledger."""
        if round_index == 0:
            self.ledger.reset()
        if self.target_epsilon is not None:
            spent = self.ledger.epsilon(delta=self.delta)
            after = self.ledger.epsilon_if(self.round_event(), delta=self.delta)
            if after > self.target_epsilon:
                raise PrivacyBudgetExceeded(
                    f"round {round_index} would raise epsilon from {spent:.4g} to {after:.4g} at "
                    f"delta={self.delta}, above target_epsilon={self.target_epsilon}; stopped "
                    f"after {self.ledger.rounds} rounds")
        self.inner.before_round(round_index)

    def check_participation(self, result: ChannelResult) -> None:
        """Refuse a round with more contributors than the sampling rate was accounted for."""
        if len(result.contributors) > self.clients_per_round:
            raise ConfigurationError(
                f"{len(result.contributors)} clients contributed this round but the DP wrapper "
                f"accounts for clients_per_round={self.clients_per_round} of num_clients="
                f"{self.num_clients}; pass the engine's clients_per_round to the wrapper too")

    def record_round(self) -> None:
        self.ledger.compose(self.round_event())

    def round_metrics(self, round_index: int) -> Mapping[str, float]:
        return {**self.inner.round_metrics(round_index), "epsilon": self.epsilon(),
                "delta": self.delta, "noise_multiplier": self.noise_multiplier}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "dp": {
                "mechanism": self.mechanism,
                "clip_norm": self.clip_norm,
                "noise_multiplier": self.noise_multiplier,
                "calibrated": self.calibrated,
                "target_epsilon": self.target_epsilon,
                "delta": self.delta,
                "num_clients": self.num_clients,
                "clients_per_round": self.clients_per_round,
                "accountant": self.accountant_name,
                "sampling": self.sampling,
                **self.noise.describe(),
            },
        }


class CentralDP(ClientLevelDP):
    """DP-FedAvg: clipped updates, Gaussian noise added by the server to their sum.

    McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent Language
    Models", ICLR 2018, Algorithm 1.  The noisy mean is
    ``(sum_k clip(Delta_k) + N(0, (z C)^2 I)) / m`` with ``m`` the expected number of
    clients per round.
    """

    mechanism = "central"

    def server_aggregate(self, result: ChannelResult, *, rng: np.random.Generator) -> np.ndarray:
        self.check_participation(result)
        total = np.asarray(result.weighted_sum, dtype=np.float64)
        noisy = total + self.noise.sample(total.shape[0], std=self.noise_std, rng=rng)
        self.record_round()
        fixed = dataclasses.replace(result, weighted_sum=noisy,
                                    weight_sum=float(self.clients_per_round))
        return self.inner.server_aggregate(fixed, rng=rng)


class LocalDP(ClientLevelDP):
    """Each client clips its update and adds ``N(0, (z C)^2 I)`` before upload.

    The server (and anyone on the wire) sees only noisy updates.  Accounting: replace-one
    relation, sensitivity ``2 C``, one Gaussian release per round for a client that takes
    part in every round (a worst case when ``clients_per_round < num_clients``).
    """

    mechanism = "local"

    def neighboring_relation(self) -> NeighboringRelation:
        return NeighboringRelation.REPLACE_ONE

    def round_event(self) -> DpEvent:
        return dp_accounting.GaussianDpEvent(self.noise_multiplier / 2.0)

    def _calibrate(self, rounds: int) -> float:
        # A client's view is an unsampled Gaussian with multiplier z / 2 per round.
        half = calibrate_noise_multiplier(
            target_epsilon=self.target_epsilon, delta=self.delta, rounds=rounds,
            sampling_rate=1.0, sampling="poisson", accountant=self.accountant_name)
        return 2.0 * half

    def client_process(self, update, weight, *, client_state, rng):  # type: ignore[override]
        clipped = self.clip(update, client_state=client_state)
        noisy = clipped + self.noise.sample(clipped.shape[0], std=self.noise_std, rng=rng)
        return self.inner.client_process(noisy, weight, client_state=client_state, rng=rng)

    def server_aggregate(self, result: ChannelResult, *, rng: np.random.Generator) -> np.ndarray:
        self.record_round()
        return self.inner.server_aggregate(result, rng=rng)


def save_partial_result(error: PrivacyBudgetExceeded, path: str | Path) -> Path:
    """Write what a run trained before the privacy budget stopped it, as JSON.

    The file holds the usual ``RunResult.to_dict()`` summary (history with epsilon per
    round, final parameters) plus ``"stopped": {"reason": ..., "rounds_completed": ...}``.
    """
    partial = getattr(error, "partial", None)
    if partial is None or not hasattr(partial, "to_dict"):
        raise ConfigurationError(
            f"the error carries no partial run result (partial={partial!r}); expected the "
            "RunResult that the engine attaches")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = partial.to_dict()
    body["stopped"] = {"reason": str(error), "rounds_completed": len(partial.history)}
    path.write_text(json.dumps(body, indent=2))
    return path
