"""Hospital tables as arrays: what the data layer produces and the engine consumes.

These two value types sit below both :mod:`securefed.data` and the round engine, so that
loading data never imports the engine or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ClientArrays", "FederatedArrays"]


@dataclass(frozen=True)
class ClientArrays:
    """One hospital's training data, harmonised and standardised, as float32 arrays.

    ``X`` has shape ``(n, d)``; ``y`` holds 0/1 labels of shape ``(n,)``.
    """

    client_id: int
    name: str
    X: np.ndarray
    y: np.ndarray

    @property
    def num_examples(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True)
class FederatedArrays:
    """Training data of every hospital plus held-out test data, ready for a model."""

    clients: tuple[ClientArrays, ...]
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    description: str = ""

    @property
    def num_features(self) -> int:
        return int(self.X_test.shape[1])

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """All training rows stacked (only the centralised baseline may use this)."""
        return (
            np.concatenate([c.X for c in self.clients]),
            np.concatenate([c.y for c in self.clients]),
        )
