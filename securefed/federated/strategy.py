"""Strategies: what a federated algorithm decides in each phase of a round.

A strategy is a small object with one method per phase (after Flower's ``Strategy``):

``configure``         the public local hyper-parameters of a round
``make_optimizer``    the local optimiser
``local_objective``   extra terms of the local loss (e.g. FedProx's proximal term)
``client_weight``     the client-side aggregation weight (computed on the client only)
``client_process``    clipping / noise / compression of the update before upload
``server_aggregate``  weighted sum -> mean update (central DP noise goes here)
``server_update``     global model update from the mean update (server optimiser)
``personal_step``     update what stays at the client for its own use (a personal model)
``personal_params``   the parameters a client uses for its own patients (None: the global ones)

The aggregation math itself is in free functions (:func:`weighted_mean`,
:func:`train_local`).  Defenses such as DP wrap a strategy (see :class:`StrategyWrapper`)
rather than adding flags to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from securefed.arrays import ClientArrays
from securefed.channel import ChannelResult
from securefed.codec import Codec, Float32Codec
from securefed.errors import ConfigurationError
from securefed.federated.types import FederationFacts, LocalConfig, LocalResult
from securefed.models import get_flat_params, set_flat_params

__all__ = [
    "Strategy",
    "StrategyWrapper",
    "FedAvg",
    "FedProx",
    "train_local",
    "weighted_mean",
    "proximal_term",
    "local_loss",
]


def weighted_mean(weighted_sum: np.ndarray, weight_sum: float) -> np.ndarray:
    """``sum_k w_k u_k / sum_k w_k`` from the two sums a channel reveals.

    >>> weighted_mean(np.array([2.0, 4.0]), 2.0)
    array([1., 2.])
    """
    if not weight_sum > 0:
        raise ConfigurationError(f"sum of client weights must be > 0, got {weight_sum}")
    return np.asarray(weighted_sum, dtype=np.float64) / float(weight_sum)


def proximal_term(model: nn.Module, global_tensors: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's ``(mu / 2) * ||w - w_global||^2`` (Li et al., MLSys 2020, eq. 2)."""
    sq = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_tensors, strict=True))
    return 0.5 * mu * sq


def _bce(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(model(X), y)


def local_loss(model: nn.Module, client: ClientArrays) -> float:
    """Mean binary cross-entropy of ``model`` on all of ``client``'s rows (no gradient)."""
    with torch.no_grad():
        return float(_bce(model, torch.as_tensor(client.X, dtype=torch.float32),
                          torch.as_tensor(client.y, dtype=torch.float32)))


def train_local(
    model: nn.Module,
    client: ClientArrays,
    global_params: np.ndarray,
    config: LocalConfig,
    *,
    rng: np.random.Generator,
    optimizer: torch.optim.Optimizer,
    initial_loss: float | None = None,
) -> LocalResult:
    """Run ``config.local_epochs`` epochs of mini-batch training from ``global_params``.

    The loss is mean binary cross-entropy plus, when ``config.proximal_mu > 0``, the
    proximal term.  Mini-batches are drawn by a permutation from ``rng`` each epoch.
    ``initial_loss`` is the incoming model's loss on the client's rows when the caller has
    already computed it (:func:`local_loss`); otherwise it is computed here.
    Returns the update ``w_local - w_global`` and the client's local statistics.
    """
    set_flat_params(model, global_params)
    X = torch.as_tensor(client.X, dtype=torch.float32)
    y = torch.as_tensor(client.y, dtype=torch.float32)
    n = X.shape[0]
    if n == 0:
        raise ConfigurationError(f"client {client.name!r} has no training examples")
    if initial_loss is None:
        initial_loss = local_loss(model, client)
    global_tensors = [p.detach().clone() for p in model.parameters()]
    bs = n if config.batch_size is None else min(config.batch_size, n)
    losses: list[float] = []
    steps = 0
    model.train()
    for _ in range(config.local_epochs):
        order = rng.permutation(n)
        for start in range(0, n, bs):
            idx = torch.as_tensor(order[start : start + bs])
            optimizer.zero_grad(set_to_none=True)
            data_loss = _bce(model, X[idx], y[idx])
            loss = data_loss
            if config.proximal_mu > 0:
                loss = loss + proximal_term(model, global_tensors, config.proximal_mu)
            loss.backward()
            optimizer.step()
            losses.append(float(data_loss.detach()))
            steps += 1
    update = get_flat_params(model) - np.asarray(global_params, dtype=np.float64)
    return LocalResult(
        update=update,
        num_examples=int(n),
        train_loss=float(np.mean(losses)),
        initial_loss=initial_loss,
        label_balance=float(client.y.mean()),
        steps=steps,
    )


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"{name} must be > 0, got {value!r}")


class Strategy:
    """Base strategy; the defaults implement FedAvg (McMahan et al., AISTATS 2017)."""

    name: str = "strategy"
    codec: Codec = Float32Codec()

    def __init__(
        self,
        *,
        learning_rate: float = 0.1,
        local_epochs: int = 1,
        batch_size: int | None = 16,
        server_learning_rate: float = 1.0,
    ) -> None:
        _check_positive("learning_rate", learning_rate)
        _check_positive("server_learning_rate", server_learning_rate)
        if not (isinstance(local_epochs, int) and local_epochs >= 1):
            raise ConfigurationError(f"local_epochs must be an integer >= 1, got {local_epochs!r}")
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigurationError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
        self.learning_rate = learning_rate
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.server_learning_rate = server_learning_rate

    # ----------------------------------------------------------------- client side
    def configure(self, round_index: int) -> LocalConfig:
        return LocalConfig(
            learning_rate=self.learning_rate,
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
        )

    def make_optimizer(self, model: nn.Module, config: LocalConfig, *,
                       learning_rate: float | None = None) -> torch.optim.Optimizer:
        """The local optimiser (``learning_rate`` defaults to the round's configured rate)."""
        lr = config.learning_rate if learning_rate is None else learning_rate
        return torch.optim.SGD(model.parameters(), lr=lr)

    def local_rate_scale(self, initial_loss: float, *, client_state: dict[str, Any]) -> float:
        """Factor on the configured local learning rate for this round (1: unchanged)."""
        return 1.0

    def start_local(
        self,
        model: nn.Module,
        client: ClientArrays,
        global_params: np.ndarray,
        config: LocalConfig,
        *,
        client_state: dict[str, Any],
    ) -> tuple[torch.optim.Optimizer, float]:
        """Load the global model, measure its loss on the client's rows and build the optimiser.

        Every local trainer (:meth:`local_train`, DP-SGD's) starts here, so a strategy that
        adapts its local step size does it once, in :meth:`local_rate_scale`.
        """
        set_flat_params(model, global_params)
        initial_loss = local_loss(model, client)
        scale = self.local_rate_scale(initial_loss, client_state=client_state)
        opt = self.make_optimizer(model, config, learning_rate=config.learning_rate * scale)
        return opt, initial_loss

    def local_train(
        self,
        model: nn.Module,
        client: ClientArrays,
        global_params: np.ndarray,
        config: LocalConfig,
        *,
        rng: np.random.Generator,
        client_state: dict[str, Any],
    ) -> LocalResult:
        opt, initial_loss = self.start_local(model, client, global_params, config,
                                             client_state=client_state)
        return train_local(model, client, global_params, config, rng=rng, optimizer=opt,
                           initial_loss=initial_loss)

    def client_weight(self, result: LocalResult, *, client_state: dict[str, Any]) -> float:
        """FedAvg weights each client by its number of examples."""
        return float(result.num_examples)

    def client_process(
        self,
        update: np.ndarray,
        weight: float,
        *,
        client_state: dict[str, Any],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Pre-scale the update by its weight and encode it; returns ``(vector, payload)``."""
        vector = weight * np.asarray(update, dtype=np.float64)
        payload = self.codec.encode(vector, rng=rng)
        return self.codec.decode(payload, dim=vector.shape[0]), payload

    # ----------------------------------------------------------------- personalisation
    def personal_step(
        self,
        model: nn.Module,
        client: ClientArrays,
        global_params: np.ndarray,
        config: LocalConfig,
        *,
        rng: np.random.Generator,
        client_state: dict[str, Any],
    ) -> None:
        """After local training: update state that never leaves the client (e.g. Ditto's
        personal model).  Nothing is uploaded from here.  The default does nothing."""

    def personal_params(
        self,
        model: nn.Module,
        client: ClientArrays,
        global_params: np.ndarray,
        *,
        rng: np.random.Generator,
        client_state: dict[str, Any],
    ) -> np.ndarray | None:
        """The parameters ``client`` uses for its own patients, computed at the client from
        the current global parameters and its own state (``model`` is scratch space).

        ``None`` (the default) means the client uses the global model.  Runners call this to
        evaluate each hospital on its own test patients; the result stays at the client.
        """
        return None

    # ----------------------------------------------------------------- run hooks
    def start_run(self, facts: FederationFacts) -> None:
        """Hook called once before round 0 with the facts of the federation (a DP wrapper
        checks its declared number of clients against them and adopts the privacy ledger)."""

    def end_round(self, round_index: int, *, completed: bool) -> None:
        """Hook called after each round; ``completed=False`` when the round was abandoned."""

    def privacy_ledger(self) -> Mapping[str, Any] | None:
        """The privacy ledger of the model being trained (JSON-ready), ``None`` without DP."""
        return None

    # ----------------------------------------------------------------- server side
    def before_round(self, round_index: int) -> None:
        """Hook called before a round starts (a DP wrapper checks its budget here)."""

    def server_aggregate(self, result: ChannelResult, *, rng: np.random.Generator) -> np.ndarray:
        return weighted_mean(result.weighted_sum, result.weight_sum)

    def server_update(
        self, global_params: np.ndarray, mean_update: np.ndarray, *, round_index: int
    ) -> np.ndarray:
        return np.asarray(global_params, dtype=np.float64) + self.server_learning_rate * mean_update

    def round_metrics(self, round_index: int) -> Mapping[str, float]:
        """Extra per-round figures to record (for example epsilon)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "learning_rate": self.learning_rate,
            "local_epochs": self.local_epochs,
            "batch_size": self.batch_size,
            "server_learning_rate": self.server_learning_rate,
        }


class FedAvg(Strategy):
    """Federated averaging: local SGD, weights proportional to sample counts."""

    name = "fedavg"


class FedProx(Strategy):
    """FedAvg plus the proximal term ``(mu/2)||w - w_global||^2`` in the local loss.

    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.  With
    ``proximal_mu = 0`` it is FedAvg exactly.
    """

    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not proximal_mu >= 0:
            raise ConfigurationError(f"proximal_mu must be >= 0, got {proximal_mu!r}")
        self.proximal_mu = proximal_mu

    def configure(self, round_index: int) -> LocalConfig:
        base = super().configure(round_index)
        return LocalConfig(
            learning_rate=base.learning_rate,
            local_epochs=base.local_epochs,
            batch_size=base.batch_size,
            proximal_mu=self.proximal_mu,
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "proximal_mu": self.proximal_mu}


class StrategyWrapper(Strategy):
    """Delegates every phase to ``inner``; subclasses override the phases they change.

    This is how defenses (DP clipping and noise, for instance) are added to any strategy.
    """

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self.name = inner.name
        self.codec = inner.codec

    def __getattr__(self, item: str) -> Any:  # hyper-parameters of the wrapped strategy
        return getattr(self.inner, item)

    def configure(self, round_index: int) -> LocalConfig:
        return self.inner.configure(round_index)

    def make_optimizer(self, model: nn.Module, config: LocalConfig, *,
                       learning_rate: float | None = None) -> torch.optim.Optimizer:
        return self.inner.make_optimizer(model, config, learning_rate=learning_rate)

    def local_rate_scale(self, initial_loss: float, *, client_state: dict[str, Any]) -> float:
        return self.inner.local_rate_scale(initial_loss, client_state=client_state)

    def start_local(self, model, client, global_params, config, *, client_state):  # type: ignore[override]
        return self.inner.start_local(model, client, global_params, config,
                                      client_state=client_state)

    def local_train(self, model, client, global_params, config, *, rng, client_state):  # type: ignore[override]
        return self.inner.local_train(model, client, global_params, config, rng=rng,
                                      client_state=client_state)

    def client_weight(self, result: LocalResult, *, client_state: dict[str, Any]) -> float:
        return self.inner.client_weight(result, client_state=client_state)

    def client_process(self, update, weight, *, client_state, rng):  # type: ignore[override]
        return self.inner.client_process(update, weight, client_state=client_state, rng=rng)

    def personal_step(self, model, client, global_params, config, *, rng, client_state):  # type: ignore[override]
        self.inner.personal_step(model, client, global_params, config, rng=rng,
                                 client_state=client_state)

    def personal_params(self, model, client, global_params, *, rng, client_state):  # type: ignore[override]
        return self.inner.personal_params(model, client, global_params, rng=rng,
                                          client_state=client_state)

    def before_round(self, round_index: int) -> None:
        self.inner.before_round(round_index)

    def start_run(self, facts: FederationFacts) -> None:
        self.inner.start_run(facts)

    def end_round(self, round_index: int, *, completed: bool) -> None:
        self.inner.end_round(round_index, completed=completed)

    def privacy_ledger(self) -> Mapping[str, Any] | None:
        return self.inner.privacy_ledger()

    def server_aggregate(self, result: ChannelResult, *, rng: np.random.Generator) -> np.ndarray:
        return self.inner.server_aggregate(result, rng=rng)

    def server_update(self, global_params, mean_update, *, round_index):  # type: ignore[override]
        return self.inner.server_update(global_params, mean_update, round_index=round_index)

    def round_metrics(self, round_index: int) -> Mapping[str, float]:
        return self.inner.round_metrics(round_index)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "wrapped_by": type(self).__name__}
