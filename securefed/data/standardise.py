"""One-hot encoding and feature standardisation from statistics hospitals share as sums.

Standardising features needs the pooled mean and standard deviation, but pooling rows is
exactly what a federation must not do.  Both moments are sums over patients, so each
hospital shares only per-column aggregates, in two passes:

1. counts ``n_k`` of present (non-missing) values and sums ``S_k``;
   the server forms the federated mean ``m = sum_k S_k / sum_k n_k``;
2. sums of squared deviations about that mean, ``Q_k = sum_i (x_i - m)^2``;
   the server forms ``sd = sqrt(sum_k Q_k / sum_k n_k)`` (the population standard deviation).

These equal the pooled mean and standard deviation exactly (up to floating-point rounding;
the second pass avoids the cancellation of ``E[x^2] - m^2``).  Missing values are then filled
at each hospital with the federated mean (0 after standardising): mean imputation, chosen
because it needs no more than the sums already shared.  Indicator columns of categorical
features are left as 0/1 and a missing category becomes the federated frequency of each
category.  What every hospital shared is kept in :attr:`FederatedStandardiser.shared`, so an
audit can see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from securefed.data.schema import CATEGORICAL, Schema

__all__ = ["encode", "SharedStatistics", "FederatedStandardiser"]


def encode(table: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """A harmonised table as ``(X, y)``: numeric features as they are, categorical features
    one-hot (see :class:`~securefed.data.schema.Schema`), missing values as NaN (a missing
    category is NaN in each of its indicator columns)."""
    cols: list[np.ndarray] = []
    for feat in schema.features:
        values = table[feat.name]
        if feat.kind == CATEGORICAL:
            if isinstance(values.dtype, pd.CategoricalDtype) and \
                    tuple(values.cat.categories) == feat.categories:
                codes = values.cat.codes.to_numpy()
            else:
                codes = pd.Categorical(values, categories=list(feat.categories)).codes
            miss = codes < 0
            first = 1 if len(feat.categories) == 2 else 0
            for j in range(first, len(feat.categories)):
                ind = (codes == j).astype(np.float64)
                ind[miss] = np.nan
                cols.append(ind)
        else:
            cols.append(values.to_numpy(np.float64))
    X = np.column_stack(cols) if cols else np.zeros((len(table), 0))
    y = table[schema.target].to_numpy(np.int64)
    return X, y


@dataclass(frozen=True)
class SharedStatistics:
    """The aggregates one hospital sent for standardisation (per encoded column)."""

    hospital: str
    counts: np.ndarray  # present values
    sums: np.ndarray  # sum of present values
    sq_dev: np.ndarray  # sum of squared deviations about the federated mean


@dataclass(frozen=True)
class FederatedStandardiser:
    """Federated mean and scale per encoded column, fitted from shared sums only."""

    feature_names: tuple[str, ...]
    numeric: np.ndarray  # bool per column: standardised (True) or indicator (False)
    mean: np.ndarray
    scale: np.ndarray
    shared: tuple[SharedStatistics, ...]

    @classmethod
    def fit(
        cls,
        matrices: Sequence[np.ndarray],
        *,
        hospitals: Sequence[str],
        feature_names: Sequence[str],
        numeric: Sequence[bool],
    ) -> FederatedStandardiser:
        """Run the two passes of the module docstring over the hospitals' local matrices.

        Each matrix stays with its hospital; only the per-column counts and sums it returns
        are combined.
        """
        d = len(feature_names)
        counts, sums = [], []
        for X in matrices:  # pass 1, at each hospital
            present = np.isfinite(X)
            counts.append(present.sum(axis=0).astype(np.int64))
            sums.append(np.where(present, X, 0.0).sum(axis=0))
        n = np.sum(counts, axis=0) if counts else np.zeros(d, np.int64)
        s = np.sum(sums, axis=0) if sums else np.zeros(d)
        mean = np.divide(s, n, out=np.zeros(d), where=n > 0)
        sq = []
        for X in matrices:  # pass 2, at each hospital
            dev = np.where(np.isfinite(X), X - mean, 0.0)
            sq.append((dev * dev).sum(axis=0))
        q = np.sum(sq, axis=0) if sq else np.zeros(d)
        var = np.divide(q, n, out=np.zeros(d), where=n > 0)
        scale = np.sqrt(var)
        scale[scale <= 1e-12] = 1.0
        num = np.asarray(numeric, dtype=bool)
        shared = tuple(
            SharedStatistics(hospital=h, counts=c, sums=su, sq_dev=qq)
            for h, c, su, qq in zip(hospitals, counts, sums, sq, strict=True)
        )
        return cls(tuple(feature_names), num, mean, scale, shared)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Standardise numeric columns, keep indicators 0/1, fill missing with the federated
        mean (0 for numeric columns, the category frequency for indicators); float32."""
        X = np.asarray(X, dtype=np.float64)
        out = X.copy()
        out[:, self.numeric] = (X[:, self.numeric] - self.mean[self.numeric]) / self.scale[self.numeric]
        miss = ~np.isfinite(out)
        if miss.any():
            fill = np.where(self.numeric, 0.0, self.mean)
            out[miss] = np.broadcast_to(fill, out.shape)[miss]
        return out.astype(np.float32)
