"""Example-level DP inside local training: DP-SGD with per-example clipping.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1):
each step samples a batch by Poisson sampling with rate ``q = L / n`` (``L`` the expected
batch size), clips every example's gradient to L2 norm ``C`` (``max_grad_norm``), adds
``N(0, (z C)^2 I)`` to their sum and divides by ``L``.  Each hospital's own accountant
(the library's, with ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` per step) then gives
an example-level epsilon: what one patient's record can change in everything that
hospital ever uploaded.

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

import math
from collections.abc import Mapping
from typing import Any

import dp_accounting
import numpy as np
import torch
from dp_accounting import NeighboringRelation
from torch import nn
from torch.func import functional_call, grad, vmap

from securefed.arrays import ClientArrays
from securefed.dp.accounting import RoundAccountant
from securefed.dp.clipping import check_clip_norm, check_delta, check_noise_multiplier
from securefed.dp.noise import GaussianNoise
from securefed.errors import ConfigurationError
from securefed.federated.strategy import Strategy, StrategyWrapper
from securefed.federated.types import LocalConfig, LocalResult
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
    client-level wrapper for both guarantees, e.g. ``CentralDP(DPSGD(FedAvg(), ...), ...)``.

    ``round_metrics`` reports ``example_epsilon``: the largest epsilon (at ``delta``) over
    the hospitals' own accountants.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        max_grad_norm: float,
        noise_multiplier: float,
        delta: float = 1e-5,
        accountant: str = "rdp",
        secure: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(inner)
        self.max_grad_norm = check_clip_norm(max_grad_norm)
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.example_delta = check_delta(delta)
        self.accountant_name = accountant
        RoundAccountant(accountant=accountant)  # validates the name now
        self.noise = GaussianNoise(secure=secure, seed=seed)
        self.ledgers: dict[int, RoundAccountant] = {}

    def before_round(self, round_index: int) -> None:
        if round_index == 0:
            self.ledgers = {}
        self.inner.before_round(round_index)

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
        global_tensors = [p.detach().clone() for p in model.parameters()]
        losses: list[float] = []
        steps = 0
        model.train()
        for _ in range(config.local_epochs):
            for _ in range(steps_per_epoch):
                mask = torch.as_tensor(rng.random(n) < q)
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
        ledger = client_state.get("dpsgd_ledger")
        if ledger is None or client.client_id not in self.ledgers:
            ledger = RoundAccountant(accountant=self.accountant_name,
                                     neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
            client_state["dpsgd_ledger"] = ledger
            self.ledgers[client.client_id] = ledger
        gauss = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        step_event = gauss if q >= 1.0 else dp_accounting.PoissonSampledDpEvent(q, gauss)
        ledger.compose(dp_accounting.SelfComposedDpEvent(step_event, steps))
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
        if not self.ledgers:
            return 0.0
        return max(led.epsilon(delta=self.example_delta) for led in self.ledgers.values())

    def round_metrics(self, round_index: int) -> Mapping[str, float]:
        return {**self.inner.round_metrics(round_index), "example_epsilon": self.example_epsilon(),
                "example_delta": self.example_delta}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dpsgd": {
            "max_grad_norm": self.max_grad_norm, "noise_multiplier": self.noise_multiplier,
            "delta": self.example_delta, "accountant": self.accountant_name,
            **self.noise.describe()}}
