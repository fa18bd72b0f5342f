"""Hospital tables as arrays: what the data layer produces and the engine consumes.

These two value types sit below both :mod:`securefed.data` and the round engine, so that
loading data never imports the engine or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefed.errors import InvalidDataError

__all__ = ["ClientArrays", "FederatedArrays"]


@dataclass(frozen=True)
class ClientArrays:
    """One hospital's training data, harmonised and standardised, as float32 arrays.

    ``X`` has shape ``(n, d)``; ``y`` holds 0/1 labels of shape ``(n,)``.  ``X_test`` and
    ``y_test``, when given, are the hospital's own held-out patients (labelled by its own
    convention): they stay at the hospital and serve only to evaluate, on its own patients,
    the model it ends up using.
    """

    client_id: int
    name: str
    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.X_test is None) != (self.y_test is None):
            raise InvalidDataError(f"hospital {self.name!r}: give both X_test and y_test, or neither")
        if self.X_test is not None and self.y_test is not None:
            if self.X_test.ndim != 2 or self.X_test.shape[1] != self.X.shape[1]:
                raise InvalidDataError(
                    f"hospital {self.name!r}: X_test has shape {self.X_test.shape}, expected "
                    f"(m, {self.X.shape[1]})")
            if self.y_test.shape != (self.X_test.shape[0],):
                raise InvalidDataError(
                    f"hospital {self.name!r}: y_test has shape {self.y_test.shape}, expected "
                    f"({self.X_test.shape[0]},)")

    @property
    def num_examples(self) -> int:
        return int(self.X.shape[0])

    @property
    def has_test(self) -> bool:
        return self.X_test is not None and len(self.X_test) > 0


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
