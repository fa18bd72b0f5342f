"""Batched, differentiable replays of the shared models' local training.

Gradient attacks re-run the victim's local training on *dummy* records and differentiate
the result with respect to those records.  Several random restarts are optimised at once:
every tensor carries a leading restart axis ``R`` and the models' fully connected layers
are applied with batched matrix products, so that one autograd graph serves all restarts
(a ``torch.func.vmap`` of nested ``grad`` computes the same but is several times slower on
these tiny models).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from securefed.errors import ConfigurationError
from securefed.federated.types import LocalConfig
from securefed.models import ModelSpec

__all__ = ["ParamLayout", "replay_local_training", "step_schedule", "n_steps"]


class ParamLayout:
    """Names, shapes and flat-vector slices of a model's parameters (``parameters()`` order).

    Both model kinds of :class:`~securefed.models.ModelSpec` are stacks of fully connected
    layers (weight, bias) with ReLU between them; :meth:`logits` evaluates such a stack for a
    batch of parameter sets at once.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        module: nn.Module = spec.build(seed=0)
        self.names: list[str] = []
        self.shapes: list[torch.Size] = []
        self.slices: list[slice] = []
        offset = 0
        for name, p in module.named_parameters():
            self.names.append(name)
            self.shapes.append(p.shape)
            self.slices.append(slice(offset, offset + p.numel()))
            offset += p.numel()
        self.size = offset
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if len(linears) * 2 != len(self.shapes) or any(m.bias is None for m in linears):
            raise ConfigurationError(
                f"attacks replay stacks of biased fully connected layers; model {spec.kind!r} "
                f"has parameter shapes {[tuple(s) for s in self.shapes]}"
            )

    def check(self, flat: np.ndarray) -> None:
        if np.asarray(flat).shape != (self.size,):
            raise ConfigurationError(
                f"parameter vector has shape {np.asarray(flat).shape}, model {self.spec.kind!r} "
                f"expects ({self.size},)"
            )

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat ``(P,)`` or batched ``(R, P)`` vector as per-parameter tensors."""
        lead = flat.shape[:-1]
        return [flat[..., s].reshape(*lead, *sh) for s, sh in zip(self.slices, self.shapes, strict=True)]

    @staticmethod
    def join(params: list[torch.Tensor], batch: int) -> torch.Tensor:
        return torch.cat([p.reshape(batch, -1) for p in params], dim=1)

    def first_layer(self) -> tuple[slice, slice, int, int]:
        """Slices of the first layer's weight and bias, with (units, inputs)."""
        units, inputs = self.shapes[0]
        return self.slices[0], self.slices[1], int(units), int(inputs)

    @staticmethod
    def logits(params: list[torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        """Logits ``(R, n)`` for parameter sets with leading axis ``R`` and records ``(R, n, d)``."""
        h = X
        last = len(params) // 2 - 1
        for k in range(0, len(params), 2):
            W, b = params[k], params[k + 1]
            h = torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))
            if k // 2 < last:
                h = torch.relu(h)
        return h.squeeze(-1)


def step_schedule(n_rows: int, config: LocalConfig) -> list[tuple[int, int]]:
    """The (start, stop) row ranges of the local SGD steps the attacker replays.

    The victim draws a fresh permutation every epoch; the attacker cannot know it, so it uses
    the identity order every epoch (exact for full-batch training, an approximation otherwise).
    """
    bs = n_rows if config.batch_size is None else min(int(config.batch_size), n_rows)
    per_epoch = [(s, min(s + bs, n_rows)) for s in range(0, n_rows, bs)]
    return per_epoch * int(config.local_epochs)


def n_steps(n_rows: int, config: LocalConfig) -> int:
    """Number of local SGD steps of a client with ``n_rows`` records."""
    bs = n_rows if config.batch_size is None else min(int(config.batch_size), n_rows)
    return int(math.ceil(n_rows / bs)) * int(config.local_epochs)


def replay_local_training(
    layout: ParamLayout,
    config: LocalConfig,
    global_params: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    create_graph: bool = True,
) -> torch.Tensor:
    """Updates ``w_local - w_global`` of shape ``(R, P)`` for dummy records ``X`` ``(R, n, d)``.

    Replays ``config.local_epochs`` epochs of plain SGD on mean binary cross-entropy (plus
    FedProx's ``(mu/2)||w - w_global||^2`` when ``config.proximal_mu > 0``), as the engine's
    ``train_local`` does, apart from the unknown mini-batch order.  Differentiable in ``X`` and
    ``y`` when ``create_graph``.
    """
    if config.optimizer != "sgd":
        raise ConfigurationError(
            f"the attacker can replay only plain SGD local training, the round used {config.optimizer!r}"
        )
    R, n, _ = X.shape
    lr = float(config.learning_rate)
    mu = float(config.proximal_mu)
    start = [p.expand(R, *p.shape) for p in layout.split(global_params)]
    params = [p.clone().requires_grad_(True) for p in start]
    with torch.enable_grad():
        for a, b in step_schedule(n, config):
            z = layout.logits(params, X[:, a:b])
            loss = nn.functional.binary_cross_entropy_with_logits(z, y[:, a:b], reduction="none")
            total = loss.mean(dim=1).sum()  # restarts are independent: sum of per-restart losses
            if mu > 0:
                total = total + 0.5 * mu * sum(((p - s) ** 2).sum() for p, s in zip(params, start, strict=True))
            grads = torch.autograd.grad(total, params, create_graph=create_graph)
            params = [p - lr * g for p, g in zip(params, grads, strict=True)]
    return layout.join(params, R) - layout.join(start, R)


class torch_threads:
    """Context manager running torch on ``n`` intra-op threads, restoring the previous count.

    Attacks on these small models are thousands of tiny tensor operations, for which thread
    synchronisation costs more than it gains: on a busy two-core machine one thread was about
    ten times faster than two.  ``None`` leaves torch's setting alone.
    """

    def __init__(self, n: int | None) -> None:
        if n is not None and n < 1:
            raise ConfigurationError(f"num_threads must be None or >= 1, got {n}")
        self.n = n
        self.previous: int | None = None

    def __enter__(self) -> torch_threads:
        if self.n is not None:
            self.previous = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            torch.set_num_threads(self.previous)
