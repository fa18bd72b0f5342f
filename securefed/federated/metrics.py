"""Small, dependency-free classification metrics used inside the round engine.

Kept in numpy so that a process that only runs a client (a Flower ClientApp, for instance)
does not pay for importing scikit-learn.
"""

from __future__ import annotations

import numpy as np

__all__ = ["roc_auc"]


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, by the Mann-Whitney U statistic with mid-ranks for ties.

    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` where ``R_pos`` is the sum of
    the positives' ranks among all scores (Hanley and McNeil, Radiology 1982).  Returns NaN
    when only one class is present.

    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = np.asarray(y_true).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    uniq, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of the last element of each tie group
    mid_rank = upper - (counts - 1) / 2.0
    rank_sum = float(mid_rank[inverse][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
