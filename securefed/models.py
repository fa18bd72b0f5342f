"""Models for tabular diagnosis, and helpers between torch modules and flat vectors.

Federated code moves parameters as one flat float vector (``numpy``); models are rebuilt
from a :class:`ModelSpec` so that every party constructs the same architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from securefed.errors import ConfigurationError

__all__ = [
    "ModelSpec",
    "LogisticRegression",
    "MLP",
    "get_flat_params",
    "set_flat_params",
    "num_params",
]


class LogisticRegression(nn.Module):
    """``p(y=1 | x) = sigmoid(w . x + b)``; returns logits of shape ``(n,)``."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class MLP(nn.Module):
    """A small fully connected network with ReLU; the first layer has a bias (see attacks)."""

    def __init__(self, n_features: int, hidden: tuple[int, ...] = (16,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of the shared model: ``kind`` is ``"logreg"`` or ``"mlp"``.

    >>> ModelSpec("mlp", n_features=7, hidden=(16,)).num_params()
    145
    """

    kind: str
    n_features: int
    hidden: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("logreg", "mlp"):
            raise ConfigurationError(f"model kind must be 'logreg' or 'mlp', got {self.kind!r}")
        if self.n_features < 1:
            raise ConfigurationError(f"n_features must be >= 1, got {self.n_features}")
        if self.kind == "mlp" and not self.hidden:
            object.__setattr__(self, "hidden", (16,))
        if any(h < 1 for h in self.hidden):
            raise ConfigurationError(f"hidden sizes must be >= 1, got {self.hidden}")

    def build(self, *, seed: int | None = None) -> nn.Module:
        """A fresh model; with ``seed`` its initial weights are reproducible."""
        if seed is None:
            return self._make()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._make()

    def _make(self) -> nn.Module:
        if self.kind == "logreg":
            return LogisticRegression(self.n_features)
        return MLP(self.n_features, self.hidden)

    def num_params(self) -> int:
        return num_params(self._make())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_features": self.n_features, "hidden": list(self.hidden)}


def num_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def get_flat_params(model: nn.Module) -> np.ndarray:
    """All parameters concatenated in ``model.parameters()`` order, as float64."""
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()


def set_flat_params(model: nn.Module, flat: np.ndarray) -> None:
    """Load a flat vector (as produced by :func:`get_flat_params`) into ``model`` in place."""
    flat = np.asarray(flat)
    total = num_params(model)
    if flat.shape != (total,):
        raise ConfigurationError(f"flat parameter vector has shape {flat.shape}, expected ({total},)")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(torch.as_tensor(flat[offset : offset + n], dtype=p.dtype).reshape(p.shape))
            offset += n
