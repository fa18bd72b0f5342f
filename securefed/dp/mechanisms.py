"""Client-level differential privacy as strategy wrappers: central and local Gaussian noise.

Both wrappers clip each client's raw update to L2 norm ``clip_norm`` (``C``) *before* it is
weighted, and replace the wrapped strategy's client weight by the uniform weight 1, so that
one client can move the sum of weighted updates by at most ``C``: with example-count weights
a hospital with many patients would have a larger, data-dependent influence and the noise
scale would no longer match the sensitivity.  This is the uniform special case of the
bounded weights ``w_k = min(n_k / w_hat, 1)`` of McMahan et al. (ICLR 2018, Algorithm 1).

What leaves the client is bounded, not just what enters the wrapped strategy.  The wrapped
strategy may compress the clipped update (stochastic quantisation, top-k), add an
error-feedback residual or round it to float32; :class:`CentralDP` and
:class:`~securefed.dp.distributed.DistributedDP` then rescale the *encoded message* back into
the ``C``-ball (:func:`~securefed.dp.clipping.bound_release`), so the sensitivity is ``C`` for
every strategy and codec.  :class:`LocalDP` adds its noise to the clipped update before the
wrapped strategy sees it; everything after the noise is post-processing.

:class:`CentralDP` (DP-FedAvg, McMahan et al. 2018, Algorithm 1 with the fixed-denominator
estimator ``f_f``): the server adds ``N(0, (z C)^2 I)`` to the sum of bounded updates and
divides by the *expected* number of clients ``m`` rather than the realised count.  Threat
model: the server is trusted (it sees each update and the exact sum); epsilon holds against
everyone who sees only the released models.

:class:`LocalDP`: each client adds ``N(0, (z C)^2 I)`` to its own clipped update before
upload.  Any two updates in the ball differ by up to ``2 C``, so one round is a Gaussian
mechanism with multiplier ``z / 2`` under the replace-one relation; the server knows who
uploaded, so there is no amplification by sampling.  Threat model: nobody is trusted.

Accounting is tied to the federation that really runs (:meth:`ClientLevelDP.start_run`):
the number of clients comes from the data (a declared ``num_clients`` that disagrees is an
error), and amplification by sampling is applied only when the runner reports a Poisson
sample drawn from a secret CSPRNG and never published.  The engine and the Flower ServerApp
draw a fixed-size sample from the seeded server generator and record it, so each round is
accounted as an unsampled Gaussian (exact for a client that takes part, the worst case).

The ledger (:class:`~securefed.dp.ledger.PrivacyLedger`) belongs to the model: it is handed
in by the runner with the parameters training continues from and is never reset by a new
round 0.  With ``target_epsilon`` set, :meth:`ClientLevelDP.before_round` raises
:class:`~securefed.errors.PrivacyBudgetExceeded`, saying how many rounds ran and what
epsilon was spent, before a round whose release would push the hospital-level epsilon past
the target; the engine attaches the result trained so far, which :func:`save_partial_result`
writes to disk.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.dp_event import DpEvent

from securefed.channel import ChannelResult
from securefed.dp.accounting import ACCOUNTANTS, calibrate_noise_multiplier
from securefed.dp.clipping import (
    bound_release,
    check_clip_norm,
    check_codec_scalable,
    check_delta,
    check_noise_multiplier,
    clip_l2,
)
from securefed.dp.ledger import (
    TRACK_HOSPITAL,
    TRACK_HOSPITAL_REPLACE,
    PrivacyLedger,
    PrivacyReport,
)
from securefed.dp.noise import NOT_PRIVATE, GaussianNoise
from securefed.errors import ConfigurationError, PrivacyBudgetExceeded
from securefed.federated.strategy import Strategy, StrategyWrapper
from securefed.federated.types import FederationFacts, LocalResult

__all__ = ["ClientLevelDP", "CentralDP", "LocalDP", "save_partial_result", "adopt_ledger"]


def adopt_ledger(facts: FederationFacts, *, accountant: str, delta: float) -> PrivacyLedger:
    """The ledger a run continues: the one handed in (saved dict or shared object), or a new
    one for a fresh model.  A saved ledger accounted with another accountant is refused."""
    given = facts.privacy_ledger
    if given is None:
        if facts.continuing:
            raise ConfigurationError(
                "training continues from saved parameters but no privacy ledger was handed "
                "in; expected the ledger saved with them")
        led = PrivacyLedger(accountant=accountant, delta=delta)
        return led
    led = given if isinstance(given, PrivacyLedger) else PrivacyLedger.from_dict(given)
    if led.accountant != accountant:
        raise ConfigurationError(
            f"the saved privacy ledger was accounted with accountant={led.accountant!r}; "
            f"continue with the same accountant, got accountant={accountant!r}")
    if led.delta is None:
        led.set_delta(delta)
    return led


class ClientLevelDP(StrategyWrapper):
    """Shared floor of the client-level DP wrappers: clipping, uniform weights, the ledger,
    calibration and budget enforcement.  Subclasses say where the noise goes and what one
    round costs (:meth:`round_charges`).

    Parameters
    ----------
    inner:
        The strategy to protect (FedAvg, FedProx, FedMedHeter...).
    clip_norm:
        ``C``, the L2 bound on what each client sends.
    noise_multiplier:
        ``z = sigma / C``.  Leave ``None`` to calibrate it from ``target_epsilon`` and
        ``rounds`` (for a fresh model, without amplification by sampling).
    target_epsilon, delta:
        The privacy budget, a hard stop on the hospital-level epsilon.  ``delta`` is also
        the delta at which every epsilon is reported.
    num_clients, clients_per_round:
        Optional declarations.  The runner reports the real federation before round 0
        (:meth:`start_run`); a declaration that disagrees with it is an error.  Without a
        runner (direct calls), the declared values are used.
    rounds:
        Planned number of rounds (needed only for calibration).
    accountant:
        ``"rdp"`` or ``"pld"`` (both from ``dp-accounting``).
    reproducible_noise, seed:
        Noise from a seeded stream instead of the OS CSPRNG: reproducible and **not
        private**; every epsilon is then marked so.  See :mod:`securefed.dp.noise`.
    secure, sampling:
        Deprecated.  ``secure=False`` is ``reproducible_noise=True``; ``sampling`` is ignored
        (accounting follows the sampling the runner reports).
    """

    mechanism = "client-level"
    bounds_release = False  # True: rescale the encoded message into the C-ball

    def __init__(
        self,
        inner: Strategy,
        *,
        clip_norm: float,
        noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
        delta: float = 1e-5,
        num_clients: int | None = None,
        clients_per_round: int | None = None,
        rounds: int | None = None,
        accountant: str = "rdp",
        reproducible_noise: bool = False,
        seed: int | None = None,
        secure: bool | None = None,
        sampling: str | None = None,
    ) -> None:
        super().__init__(inner)
        self.clip_norm = check_clip_norm(clip_norm)
        self.delta = check_delta(delta)
        if num_clients is not None and not (
                isinstance(num_clients, int) and not isinstance(num_clients, bool)
                and num_clients >= 1):
            raise ConfigurationError(f"num_clients must be None or an integer >= 1, got {num_clients!r}")
        if clients_per_round is not None and not (
                isinstance(clients_per_round, int) and clients_per_round >= 1):
            raise ConfigurationError(
                f"clients_per_round must be None or an integer >= 1, got {clients_per_round!r}")
        self.declared_num_clients = num_clients
        self.declared_clients_per_round = clients_per_round
        self.num_clients = num_clients
        self.clients_per_round = (None if num_clients is None else
                                  min(clients_per_round or num_clients, num_clients))
        self.amplified = False
        if sampling is not None:
            warnings.warn(
                f"sampling={sampling!r} is ignored: accounting now follows the sampling the "
                "runner reports (no amplification unless the sample is Poisson, secret and "
                "unpublished)", DeprecationWarning, stacklevel=2)
        if accountant not in ACCOUNTANTS:
            raise ConfigurationError(f"unknown accountant {accountant!r}; valid: {list(ACCOUNTANTS)}")
        self.accountant_name = accountant
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
        self.noise = GaussianNoise(reproducible_noise=reproducible_noise, seed=seed, secure=secure)
        if self.bounds_release:
            check_codec_scalable(self.codec)
        self.ledger = PrivacyLedger(accountant=accountant, delta=self.delta)
        self._rounds_this_run = 0
        if self.target_epsilon is not None:
            first = self.ledger.client_epsilon(extra=self.ledger.hypothetical(
                self.round_charges(), mechanism=self.mechanism))
            if first > self.target_epsilon:
                raise ConfigurationError(
                    f"noise_multiplier={self.noise_multiplier} cannot reach the target: one round "
                    f"already costs epsilon={first:.4g} at delta={self.delta}, above "
                    f"target_epsilon={self.target_epsilon}; expected a larger noise_multiplier "
                    f"or target")

    # ------------------------------------------------------------------ accounting
    @property
    def reproducible(self) -> bool:
        return self.noise.reproducible

    @property
    def sampling_rate(self) -> float:
        if self.num_clients is None or self.clients_per_round is None:
            return 1.0
        return self.clients_per_round / self.num_clients

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Gaussian noise, ``z * C``."""
        return self.noise_multiplier * self.clip_norm

    #: Whether the hospitals' noisy data can leave them before the server aggregates (local
    #: and distributed DP), so that a round cut short by a crash may already have released it.
    releases_before_aggregation = False

    def round_charges(self) -> dict[str, DpEvent]:
        """What one round costs, per ledger track (subclasses)."""
        raise NotImplementedError

    def next_round_entry(self) -> dict[str, Any]:
        """What the next round will be charged, in the ledger's saved form of a round."""
        return self.ledger.hypothetical(self.round_charges(), mechanism=self.mechanism,
                                        reproducible=self.reproducible,
                                        num_clients=self.num_clients).to_dict()

    def _calibrate(self, rounds: int) -> float:
        # no amplification: a client's round is a Gaussian with multiplier z (add/remove)
        return calibrate_noise_multiplier(
            target_epsilon=self.target_epsilon, delta=self.delta, rounds=rounds,
            sampling_rate=1.0, accountant=self.accountant_name)

    def epsilon(self) -> float:
        """Hospital-level epsilon of the model so far at ``delta``."""
        return self.ledger.client_epsilon(delta=self.delta)

    def report(self) -> PrivacyReport:
        """Every epsilon of the model so far, fully described."""
        return self.ledger.report(delta=self.delta)

    def privacy_ledger(self) -> dict[str, Any]:
        return self.ledger.to_dict()

    def _charge_round(self, charges: Mapping[str, DpEvent] | None = None) -> None:
        for track, event in (charges or self.round_charges()).items():
            self.ledger.charge(track, event, mechanism=self.mechanism,
                               reproducible=self.reproducible, num_clients=self.num_clients)

    # ------------------------------------------------------------------ run hooks
    def start_run(self, facts: FederationFacts) -> None:
        """Tie the accounting to the federation that runs, and adopt the model's ledger."""
        k = int(facts.num_clients)
        if self.declared_num_clients is not None and self.declared_num_clients != k:
            raise ConfigurationError(
                f"num_clients={self.declared_num_clients} was declared to the {self.mechanism} "
                f"DP wrapper but the federation has {k} hospitals; epsilon must be accounted "
                "for the real federation (leave num_clients unset to take it from the data)")
        m = k if facts.clients_per_round is None else min(int(facts.clients_per_round), k)
        declared_m = self.declared_clients_per_round
        if declared_m is not None and min(declared_m, k) != m:
            raise ConfigurationError(
                f"clients_per_round={declared_m} was declared to the {self.mechanism} DP "
                f"wrapper but the run samples {m} of {k} hospitals per round")
        self.num_clients, self.clients_per_round = k, m
        self.amplified = (self.supports_amplification and facts.sampling == "poisson"
                          and facts.sample_secret and not facts.sample_published and m < k)
        self.ledger = adopt_ledger(facts, accountant=self.accountant_name, delta=self.delta)
        self._rounds_this_run = 0
        self.inner.start_run(dataclasses.replace(facts, privacy_ledger=self.ledger))

    supports_amplification = False

    def end_round(self, round_index: int, *, completed: bool) -> None:
        self.ledger.end_round(completed=completed)
        if completed:
            self._rounds_this_run += 1
        self.inner.end_round(round_index, completed=completed)

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
        """Clip, let the wrapped strategy encode (compression, error feedback), then bound
        the encoded message itself: what the server decodes has L2 norm <= ``C``."""
        clipped = self.clip(update, client_state=client_state)
        vector, payload = self.inner.client_process(clipped, weight, client_state=client_state,
                                                    rng=rng)
        vector, payload, factor = bound_release(payload, codec=self.codec,
                                                dim=int(np.asarray(vector).shape[0]),
                                                clip_norm=self.clip_norm)
        client_state["dp_release_factor"] = factor
        client_state["dp_sent_norm"] = float(np.linalg.norm(vector))
        return vector, payload

    # ------------------------------------------------------------------ server side
    def _budget_message(self, round_index: int, spent: float, after: float) -> str:
        track = self.ledger.client_track(self.ledger.entries())
        relation = "add/remove" if track == TRACK_HOSPITAL else "replace-one"
        return (f"privacy budget reached: round {round_index} would raise the hospital-level "
                f"epsilon ({relation}, delta={self.delta}, {self.accountant_name.upper()}) from "
                f"{spent:.4g} to {after:.4g}, above target_epsilon={self.target_epsilon}; "
                f"stopped after {self.ledger.num_rounds} rounds of this model "
                f"({self._rounds_this_run} in this run) with epsilon {spent:.4g} spent")

    def before_round(self, round_index: int) -> None:
        """Refuse a round that would exceed the budget; open the round in the ledger (a new
        round 0 does not reset it: the ledger belongs to the model)."""
        if self.num_clients is None:
            raise ConfigurationError(
                "the number of clients is unknown: run the wrapper through run_federated (which "
                "reports the federation) or declare num_clients")
        if self.target_epsilon is not None:
            spent = self.ledger.client_epsilon(delta=self.delta)
            after = self.ledger.client_epsilon(delta=self.delta, extra=self.ledger.hypothetical(
                self.round_charges(), mechanism=self.mechanism))
            if after > self.target_epsilon:
                raise PrivacyBudgetExceeded(self._budget_message(round_index, spent, after))
        self.ledger.begin_round(num_clients=self.num_clients)
        self.inner.before_round(round_index)

    def check_participation(self, result: ChannelResult) -> None:
        """With amplification, refuse a round with more contributors than accounted for."""
        if self.amplified and len(result.contributors) > (self.clients_per_round or 0):
            raise ConfigurationError(
                f"{len(result.contributors)} clients contributed this round but the DP wrapper "
                f"accounts for clients_per_round={self.clients_per_round} of num_clients="
                f"{self.num_clients}")

    def round_metrics(self, round_index: int) -> Mapping[str, float]:
        rep = self.report()
        return {**self.inner.round_metrics(round_index), "epsilon": rep.client.epsilon,
                "record_epsilon": rep.record.epsilon, "delta": self.delta,
                "noise_multiplier": self.noise_multiplier}

    def describe(self) -> dict[str, Any]:
        d = {
            "mechanism": self.mechanism,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "calibrated": self.calibrated,
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "num_clients": self.num_clients,
            "clients_per_round": self.clients_per_round,
            "accountant": self.accountant_name,
            "amplification_by_sampling": self.amplified,
            "reproducible_noise": self.reproducible,
            **self.noise.describe(),
        }
        if self.reproducible:
            d["warning"] = NOT_PRIVATE
        return {**super().describe(), "dp": d}


class CentralDP(ClientLevelDP):
    """DP-FedAvg: bounded updates, Gaussian noise added by the server to their sum.

    McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent Language
    Models", ICLR 2018, Algorithm 1.  The noisy mean is
    ``(sum_k bound(Delta_k) + N(0, (z C)^2 I)) / m`` with ``m`` the expected number of
    clients per round.  Threat model: the server is trusted with every update and the sum.
    """

    mechanism = "central"
    bounds_release = True
    supports_amplification = True

    def round_charges(self) -> dict[str, DpEvent]:
        z = self.noise_multiplier
        gauss = dp_accounting.GaussianDpEvent(z)
        hospital: DpEvent = (dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gauss)
                             if self.amplified else gauss)
        # replace-one: the sum moves by up to 2C; no amplification claimed for it
        return {TRACK_HOSPITAL: hospital,
                TRACK_HOSPITAL_REPLACE: dp_accounting.GaussianDpEvent(z / 2.0)}

    def server_aggregate(self, result: ChannelResult, *, rng: np.random.Generator) -> np.ndarray:
        self.check_participation(result)
        total = np.asarray(result.weighted_sum, dtype=np.float64)
        noisy = total + self.noise.sample(total.shape[0], std=self.noise_std, rng=rng)
        self._charge_round()
        fixed = dataclasses.replace(result, weighted_sum=noisy,
                                    weight_sum=float(self.clients_per_round or 1))
        return self.inner.server_aggregate(fixed, rng=rng)


class LocalDP(ClientLevelDP):
    """Each client clips its update and adds ``N(0, (z C)^2 I)`` before upload.

    The server (and anyone on the wire) sees only noisy updates.  Accounting: replace-one
    relation, sensitivity ``2 C``, so one round is ``GaussianDpEvent(z / 2)`` for a client
    that takes part (the worst case: it takes part in every round).  Calibration and ledger
    use the same event and the same (add/remove) reading of the library, whichever
    accountant is chosen.  Threat model: nobody is trusted.
    """

    mechanism = "local"
    releases_before_aggregation = True  # each noisy update, when the hospital answers

    def round_charges(self) -> dict[str, DpEvent]:
        return {TRACK_HOSPITAL_REPLACE: dp_accounting.GaussianDpEvent(self.noise_multiplier / 2.0)}

    def _calibrate(self, rounds: int) -> float:
        # A client's view is an unsampled Gaussian with multiplier z / 2 per round.
        half = calibrate_noise_multiplier(
            target_epsilon=self.target_epsilon, delta=self.delta, rounds=rounds,
            sampling_rate=1.0, accountant=self.accountant_name)
        return 2.0 * half

    def client_process(self, update, weight, *, client_state, rng):  # type: ignore[override]
        """Clip, add the noise, then let the wrapped strategy encode the noisy vector (its
        compression and error feedback only ever see the noisy vector: post-processing)."""
        clipped = self.clip(update, client_state=client_state)
        client_state["dp_sent_norm"] = float(np.linalg.norm(clipped))
        noisy = clipped + self.noise.sample(clipped.shape[0], std=self.noise_std, rng=rng)
        return self.inner.client_process(noisy, weight, client_state=client_state, rng=rng)

    def server_aggregate(self, result: ChannelResult, *, rng: np.random.Generator) -> np.ndarray:
        self._charge_round()
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
