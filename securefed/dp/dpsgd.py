"""Example-level DP inside local training: DP-SGD with per-example clipping.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1):
each step samples a batch by Poisson sampling with rate ``q = L / n`` (``L`` the expected
batch size), clips every example's gradient to L2 norm ``C`` (``max_grad_norm``), adds
``N(0, (z C)^2 I)`` to their sum and divides by ``L``.  Each hospital's track of the privacy
ledger (``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` per step) then gives an
example-level epsilon: what one patient's record can change in everything that hospital ever
uploaded.

Amplification by sampling is valid only for a batch that nobody else can reconstruct: by
default both the batch masks and the noise come from the OS CSPRNG, never from the run seed
(with ``reproducible_noise=True`` both come from the client's seeded stream and the run is
marked not private).  Threat model: nobody beyond the hospital itself is trusted.

With ``target_epsilon``, the example-level epsilon is a hard stop: before a round, every
hospital's spending so far plus the round it is about to train is checked, and a hospital
refuses to train (:class:`~securefed.errors.PrivacyBudgetExceeded`, saying how many rounds
ran and what epsilon was spent) rather than exceed it.

Why not Opacus's ``PrivacyEngine``.  Opacus 1.6 is installed and is the reference, but
its front door wants a ``DataLoader`` and owns the training loop, draws its noise from
torch's global generator (or, in secure mode, from ``torchcsprng``, a separate package
whose last release, 0.2.1 of 2021, was built for the torch of that time), and keeps its own accountant.  securefed's engine
owns the loop, passes randomness in as ``numpy`` generators and accounts with
dp-accounting.  Per-example gradients of the small tabular models used here are cheap with
``torch.func.vmap(grad(...))``, so this module computes them directly; a test checks them
against Opacus's ``GradSampleModule`` on the same batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import dp_accounting
import numpy as np
import torch
from dp_accounting.dp_event import DpEvent
from torch import nn
from torch.func import functional_call, grad, vmap

from securefed.arrays import ClientArrays
from securefed.dp.accounting import ACCOUNTANTS
from securefed.dp.clipping import check_clip_norm, check_delta, check_noise_multiplier
from securefed.dp.ledger import DPSGD_ACTIVE, PrivacyLedger, dpsgd_track
from securefed.dp.noise import NOT_PRIVATE, GaussianNoise, secure_uniform01
from securefed.errors import ConfigurationError, PrivacyBudgetExceeded
from securefed.federated.strategy import Strategy, StrategyWrapper
from securefed.federated.types import FederationFacts, LocalConfig, LocalResult
from securefed.models import get_flat_params

__all__ = ["DPSGD", "per_example_gradients", "clip_and_noise"]


def per_example_gradients(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradients of the binary cross-entropy of each example, shape ``(batch, num_params)``,
    in ``model.parameters()`` order."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logit = functional_call(model, p, (x.unsqueeze(0),))
        return nn.functional.binary_cross_entropy_with_logits(logit, t.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, X, y)
    return torch.cat([grads[n].reshape(X.shape[0], -1) for n in names], dim=1)


def clip_and_noise(
    per_example: np.ndarray,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    noise: GaussianNoise,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(sum_i clip(g_i) + N(0, (z C)^2 I)) / L``: the noisy gradient of one DP-SGD step."""
    g = np.asarray(per_example, dtype=np.float64)
    dim = g.shape[1]
    if g.shape[0]:
        norms = np.linalg.norm(g, axis=1)
        factors = np.minimum(1.0, max_grad_norm / np.maximum(norms, 1e-12))
        total = (g * factors[:, None]).sum(axis=0)
    else:
        total = np.zeros(dim)
    total += noise.sample(dim, std=noise_multiplier * max_grad_norm, rng=rng)
    return total / expected_batch_size


class DPSGD(StrategyWrapper):
    """Replace the wrapped strategy's local training by DP-SGD (example-level DP).

    The wrapped strategy still decides the optimiser (its ``make_optimizer`` applies the
    noisy gradient), the proximal term (whose gradient depends on no example, so it is
    added after the noise) and everything after local training.  Compose with a
    client-level wrapper for both guarantees, e.g. ``CentralDP(DPSGD(FedAvg(), ...), ...)``;
    both then write to the same privacy ledger.

    ``round_metrics`` reports ``example_epsilon``: the largest epsilon (at ``delta``) over
    the hospitals' tracks.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        max_grad_norm: float,
        noise_multiplier: float,
        delta: float = 1e-5,
        target_epsilon: float | None = None,
        accountant: str = "rdp",
        reproducible_noise: bool = False,
        seed: int | None = None,
        secure: bool | None = None,
    ) -> None:
        super().__init__(inner)
        self.max_grad_norm = check_clip_norm(max_grad_norm)
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.example_delta = check_delta(delta)
        if accountant not in ACCOUNTANTS:
            raise ConfigurationError(f"unknown accountant {accountant!r}; valid: {list(ACCOUNTANTS)}")
        if target_epsilon is not None and not (
                isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon)
                and target_epsilon > 0):
            raise ConfigurationError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.accountant_name = accountant
        self.noise = GaussianNoise(reproducible_noise=reproducible_noise, seed=seed, secure=secure)
        self.ledger = PrivacyLedger(accountant=accountant, delta=self.example_delta)
        self._last_event: dict[int, DpEvent] = {}
        self._rounds_this_run = 0

    @property
    def reproducible(self) -> bool:
        return self.noise.reproducible

    # ------------------------------------------------------------------ run hooks
    def start_run(self, facts: FederationFacts) -> None:
        given = facts.privacy_ledger
        if isinstance(given, PrivacyLedger):
            self.ledger = given  # shared with a client-level wrapper around this one
        elif given is not None:
            self.ledger = PrivacyLedger.from_dict(given)
        elif facts.continuing:
            raise ConfigurationError(
                "training continues from saved parameters but no privacy ledger was handed in")
        else:
            self.ledger = PrivacyLedger(accountant=self.accountant_name, delta=self.example_delta)
        if self.ledger.delta is None:
            self.ledger.set_delta(self.example_delta)
        self._last_event = {}
        self._rounds_this_run = 0
        self.inner.start_run(dataclasses.replace(facts, privacy_ledger=self.ledger))

    def end_round(self, round_index: int, *, completed: bool) -> None:
        self.ledger.end_round(completed=completed)
        if completed:
            self._rounds_this_run += 1
        self.inner.end_round(round_index, completed=completed)

    def privacy_ledger(self) -> dict[str, Any]:
        return self.ledger.to_dict()

    def _epsilon_after(self, client_id: int, event: DpEvent | None) -> float:
        extra = None
        if event is not None:
            extra = self.ledger.hypothetical({dpsgd_track(client_id): event,
                                              DPSGD_ACTIVE: dp_accounting.NoOpDpEvent()},
                                             mechanism="dp-sgd")
        return self.ledger.epsilon(dpsgd_track(client_id), delta=self.example_delta, extra=extra)

    def _refuse(self, who: str, round_text: str, spent: float, after: float) -> PrivacyBudgetExceeded:
        return PrivacyBudgetExceeded(
            f"privacy budget reached: {round_text} would raise the example-level epsilon of "
            f"{who} (one patient's record, add/remove, delta={self.example_delta}, "
            f"{self.accountant_name.upper()}) from {spent:.4g} to {after:.4g}, above "
            f"target_epsilon={self.target_epsilon}; stopped after {self.ledger.num_rounds} "
            f"rounds of this model ({self._rounds_this_run} in this run) with example-level "
            f"epsilon {self.example_epsilon():.4g} spent")

    def before_round(self, round_index: int) -> None:
        """Refuse a round in which a hospital would exceed the example-level budget, judged
        by the steps it took last time (a hospital seen for the first time is checked when
        it trains)."""
        if self.target_epsilon is not None:
            for cid, event in sorted(self._last_event.items()):
                after = self._epsilon_after(cid, event)
                if after > self.target_epsilon:
                    raise self._refuse(f"hospital {cid}", f"round {round_index}",
                                       self._epsilon_after(cid, None), after)
        self.ledger.begin_round()
        self.inner.before_round(round_index)

    # ------------------------------------------------------------------ client side
    def local_train(  # type: ignore[override]
        self,
        model: nn.Module,
        client: ClientArrays,
        global_params: np.ndarray,
        config: LocalConfig,
        *,
        rng: np.random.Generator,
        client_state: dict[str, Any],
    ) -> LocalResult:
        if client.num_examples == 0:
            raise ConfigurationError(f"client {client.name!r} has no training examples")
        optimizer, initial_loss = self.inner.start_local(model, client, global_params, config,
                                                         client_state=client_state)
        X = torch.as_tensor(client.X, dtype=torch.float32)
        y = torch.as_tensor(client.y, dtype=torch.float32)
        n = X.shape[0]
        lot = n if config.batch_size is None else min(config.batch_size, n)
        q = lot / n
        steps_per_epoch = max(1, math.ceil(n / lot))
        total_steps = config.local_epochs * steps_per_epoch
        gauss = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        step_event = gauss if q >= 1.0 else dp_accounting.PoissonSampledDpEvent(q, gauss)
        event = dp_accounting.SelfComposedDpEvent(step_event, total_steps)
        if self.target_epsilon is not None:
            after = self._epsilon_after(client.client_id, event)
            if after > self.target_epsilon:
                raise self._refuse(f"hospital {client.client_id} ({client.name})",
                                   "this round", self._epsilon_after(client.client_id, None),
                                   after)
        global_tensors = [p.detach().clone() for p in model.parameters()]
        losses: list[float] = []
        steps = 0
        model.train()
        for _ in range(config.local_epochs):
            for _ in range(steps_per_epoch):
                # Poisson batch: secret (OS CSPRNG) unless the noise is reproducible
                u = rng.random(n) if self.reproducible else secure_uniform01(n)
                mask = torch.as_tensor(u < q)
                Xb, yb = X[mask], y[mask]
                per_ex = (per_example_gradients(model, Xb, yb).numpy() if Xb.shape[0]
                          else np.zeros((0, sum(p.numel() for p in model.parameters()))))
                noisy = clip_and_noise(per_ex, max_grad_norm=self.max_grad_norm,
                                       noise_multiplier=self.noise_multiplier,
                                       expected_batch_size=float(lot), noise=self.noise, rng=rng)
                optimizer.zero_grad(set_to_none=True)
                offset = 0
                for p, g0 in zip(model.parameters(), global_tensors, strict=True):
                    k = p.numel()
                    g = torch.as_tensor(noisy[offset:offset + k], dtype=p.dtype).reshape(p.shape)
                    if config.proximal_mu > 0:
                        g = g + config.proximal_mu * (p.detach() - g0)
                    p.grad = g
                    offset += k
                optimizer.step()
                if Xb.shape[0]:
                    with torch.no_grad():
                        losses.append(float(nn.functional.binary_cross_entropy_with_logits(
                            model(Xb), yb)))
                steps += 1
        self.ledger.charge(dpsgd_track(client.client_id), event, mechanism="dp-sgd",
                           reproducible=self.reproducible)
        if not self.ledger.has_charge(DPSGD_ACTIVE):
            self.ledger.charge(DPSGD_ACTIVE, dp_accounting.NoOpDpEvent(), mechanism="dp-sgd",
                               reproducible=self.reproducible)
        self._last_event[client.client_id] = event
        update = get_flat_params(model) - np.asarray(global_params, dtype=np.float64)
        return LocalResult(
            update=update,
            num_examples=int(n),
            train_loss=float(np.mean(losses)) if losses else initial_loss,
            initial_loss=initial_loss,
            label_balance=float(client.y.mean()),
            steps=steps,
        )

    def example_epsilon(self) -> float:
        """Largest example-level epsilon over the hospitals that have trained so far."""
        hospitals = sorted({int(k.rsplit(":", 1)[1]) for r in self.ledger.entries()
                            for k in r.charges if k.startswith(DPSGD_ACTIVE + ":")})
        return max((self._epsilon_after(h, None) for h in hospitals), default=0.0)

    def round_metrics(self, round_index: int) -> Mapping[str, float]:
        return {**self.inner.round_metrics(round_index), "example_epsilon": self.example_epsilon(),
                "example_delta": self.example_delta}

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "max_grad_norm": self.max_grad_norm, "noise_multiplier": self.noise_multiplier,
            "delta": self.example_delta, "target_epsilon": self.target_epsilon,
            "accountant": self.accountant_name, "reproducible_noise": self.reproducible,
            **self.noise.describe()}
        if self.reproducible:
            d["warning"] = NOT_PRIVATE
        return {**super().describe(), "dpsgd": d}
