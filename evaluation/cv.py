"""Stratified k-fold cross-validation over patients, stratified within each hospital.

The seed document validates with 10-fold cross-validation (Sec. 4).  In a federation the
folds must respect the hospitals: every hospital keeps its own patients, so each hospital's
rows are split into ``k`` folds *separately*, stratified by diagnosis, and fold ``i`` of the
federation is the union of every hospital's fold ``i`` (Kohavi 1995 recommends stratified
folds for accuracy estimation).  Training fold ``i`` leaves each hospital's fold ``i`` out;
the held-out rows form the test set, so every patient is tested exactly once.

Standardisation is refitted on each training fold from pooled counts, sums and sums of
squares (what hospitals can share without rows), so no statistic of the test fold leaks
into training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefed.errors import ConfigurationError
from securefed.federated import ClientArrays, FederatedArrays

__all__ = ["Fold", "stratified_hospital_folds", "fold_assignment", "mean_std",
           "held_out_by_hospital"]


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold.

    ``data`` holds the training rows of every hospital and, as ``X_test``/``y_test``, the
    held-out rows of all hospitals; ``test_hospital`` gives the hospital index of each test
    row (for per-hospital accuracy); ``external`` is the separate held-out set (e.g. Pima.te)
    standardised with the same training-fold statistics.
    """

    index: int
    data: FederatedArrays
    test_hospital: np.ndarray
    external: tuple[np.ndarray, np.ndarray] | None


def fold_assignment(y: np.ndarray, *, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold number of each row, stratified by label: each class is dealt round-robin.

    Rows of each class are shuffled and dealt to folds in turn, continuing the deal from
    one class to the next, so fold sizes differ by at most one and each fold's positive rate
    is as close to the whole as integers allow.

    >>> fold_assignment(np.array([0, 0, 0, 1, 1, 1]), n_folds=3, rng=np.random.default_rng(0)).tolist().count(0)
    2
    """
    y = np.asarray(y)
    folds = np.empty(len(y), dtype=np.int64)
    start = 0
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (start + np.arange(len(idx))) % n_folds
        start = (start + len(idx)) % n_folds
    return folds


def _standardise(
    train: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and standard deviation from each hospital's count, sum and sum of squares."""
    n = sum(x.shape[0] for x in train)
    s = sum(x.astype(np.float64).sum(0) for x in train)
    ss = sum((x.astype(np.float64) ** 2).sum(0) for x in train)
    mu = s / n
    var = np.maximum(ss / n - mu**2, 0.0)
    sd = np.sqrt(var)
    sd[sd == 0] = 1.0
    return mu, sd


def stratified_hospital_folds(
    data: FederatedArrays,
    *,
    n_folds: int = 10,
    seed: int = 0,
    external: bool = True,
) -> list[Fold]:
    """Split every hospital's training rows into ``n_folds`` stratified folds.

    ``data.X_test``/``y_test`` (the bundled external test set) are kept, re-standardised,
    as each fold's ``external`` set when ``external`` is true.
    """
    if not (isinstance(n_folds, int) and n_folds >= 2):
        raise ConfigurationError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    smallest = min(c.num_examples for c in data.clients)
    if smallest < n_folds:
        raise ConfigurationError(
            f"every hospital needs at least n_folds={n_folds} patients for {n_folds}-fold "
            f"cross-validation; the smallest has {smallest}"
        )
    root = np.random.SeedSequence(seed)
    rngs = [np.random.default_rng(s) for s in root.spawn(len(data.clients))]
    assignments = [
        fold_assignment(c.y, n_folds=n_folds, rng=rng) for c, rng in zip(data.clients, rngs, strict=True)
    ]
    out: list[Fold] = []
    for k in range(n_folds):
        train_X = [c.X[a != k] for c, a in zip(data.clients, assignments, strict=True)]
        mu, sd = _standardise(train_X)

        def z(x: np.ndarray, mu: np.ndarray = mu, sd: np.ndarray = sd) -> np.ndarray:
            return ((x.astype(np.float64) - mu) / sd).astype(np.float32)

        # a hospital's own test patients (a federation file's test CSV) stay with it,
        # standardised like the fold, so every run is also evaluated on each one's own
        clients = tuple(
            ClientArrays(client_id=c.client_id, name=c.name, X=z(c.X[a != k]), y=c.y[a != k],
                         X_test=None if c.X_test is None else z(c.X_test),
                         y_test=None if c.y_test is None else np.asarray(c.y_test))
            for c, a in zip(data.clients, assignments, strict=True)
        )
        X_test = np.concatenate([z(c.X[a == k]) for c, a in zip(data.clients, assignments, strict=True)])
        y_test = np.concatenate([c.y[a == k] for c, a in zip(data.clients, assignments, strict=True)])
        hosp = np.concatenate(
            [np.full(int((a == k).sum()), i) for i, a in enumerate(assignments)]
        )
        fold_data = FederatedArrays(
            clients=clients, X_test=X_test, y_test=y_test, feature_names=data.feature_names,
            description=f"{data.description} fold {k + 1}/{n_folds}".strip(),
        )
        ext = (z(data.X_test), np.asarray(data.y_test)) if external else None
        out.append(Fold(index=k, data=fold_data, test_hospital=hosp, external=ext))
    return out


def held_out_by_hospital(fold: Fold) -> FederatedArrays:
    """``fold.data`` with each hospital's held-out rows of this fold as its own test patients.

    Every runner evaluates, at each hospital, the model that hospital uses (its personalised
    model where the strategy keeps one) on ``ClientArrays.X_test``/``y_test``
    (``RoundRecord.per_hospital``); with this view those are the hospital's own patients left
    out of the fold.  Training rows, the pooled test set and the hospitals' order are those of
    ``fold.data``; a hospital's own test file (a federation file's test CSV), if any, is
    replaced here and stays in ``fold.data``.

    >>> import numpy as np
    >>> from securefed.federated import ClientArrays, FederatedArrays
    >>> c = [ClientArrays(i, f"h{i}", np.zeros((2, 1), np.float32), np.zeros(2, np.float32))
    ...      for i in range(2)]
    >>> data = FederatedArrays(tuple(c), np.arange(3, dtype=np.float32)[:, None],
    ...                        np.array([0, 1, 1], np.float32), ("x",))
    >>> view = held_out_by_hospital(Fold(0, data, np.array([1, 0, 1]), None))
    >>> [v.X_test[:, 0].tolist() for v in view.clients]
    [[1.0], [0.0, 2.0]]
    """
    from dataclasses import replace

    data = fold.data
    clients = tuple(
        replace(c, X_test=data.X_test[fold.test_hospital == i],
                y_test=data.y_test[fold.test_hospital == i])
        for i, c in enumerate(data.clients))
    return replace(data, clients=clients)


def mean_std(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), ignoring NaN."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
