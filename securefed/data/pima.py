"""The Pima Indian diabetes records bundled with securefed (see resources/ATTRIBUTION.md)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

from securefed.errors import ConfigurationError
from securefed.federated.types import ClientArrays, FederatedArrays

__all__ = ["load_pima", "pima_federation", "PIMA_FEATURES"]

PIMA_FEATURES = ("npreg", "glu", "bp", "skin", "bmi", "ped", "age")
_FILES = {"tr": "Pima.tr.csv", "te": "Pima.te.csv", "tr2": "Pima.tr2.csv"}


def load_pima(split: str = "tr") -> pd.DataFrame:
    """One bundled split as a DataFrame: ``"tr"`` (200), ``"te"`` (332) or ``"tr2"`` (300, with NA)."""
    if split not in _FILES:
        raise ConfigurationError(f"unknown Pima split {split!r}; valid: {sorted(_FILES)}")
    with resources.files("securefed.data").joinpath("resources", _FILES[split]).open("r") as fh:
        frame = pd.read_csv(fh, index_col=0, na_values=["NA"])
    return frame.reset_index(drop=True)


def pima_federation(*, seed: int = 0, n_hospitals: int = 3) -> FederatedArrays:
    """Pima.tr split at random into ``n_hospitals`` hospitals; Pima.te as test (standardised)."""
    tr, te = load_pima("tr"), load_pima("te")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tr))
    X = tr[list(PIMA_FEATURES)].to_numpy(np.float64)
    mu, sd = X.mean(0), X.std(0)
    Xs = ((X - mu) / sd).astype(np.float32)
    y = (tr["type"] == "Yes").to_numpy(np.float32)
    Xte = ((te[list(PIMA_FEATURES)].to_numpy(np.float64) - mu) / sd).astype(np.float32)
    yte = (te["type"] == "Yes").to_numpy(np.float32)
    parts = np.array_split(order, n_hospitals)
    clients = tuple(
        ClientArrays(client_id=i, name=f"hospital-{i}", X=Xs[p], y=y[p]) for i, p in enumerate(parts)
    )
    return FederatedArrays(clients=clients, X_test=Xte, y_test=yte, feature_names=PIMA_FEATURES)
