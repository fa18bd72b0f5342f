"""Significance tests between two algorithms' cross-validated scores.

The seed document (Sec. 4) compares FedMedHeter with FedAvg by an independent-samples
t-test over the 10 fold accuracies.  Because both algorithms are trained and tested on the
*same* folds, the fold scores are paired; the paired t-test (and the Wilcoxon signed-rank
test, which does not assume normal differences) is the sharper and more appropriate test,
so both are reported.  Fold scores are not independent either way (training sets overlap),
so p-values from k-fold CV are optimistic (Dietterich 1998; Nadeau and Bengio 2003); the
report says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from securefed.errors import ConfigurationError

__all__ = ["Comparison", "compare", "mean_ci"]


@dataclass(frozen=True)
class Comparison:
    """``a`` versus ``b`` on one metric; ``diff = mean(a) - mean(b)``.

    ``student_*``: independent-samples Student t-test (pooled variance, as the seed does);
    ``welch_p``: the same without assuming equal variances; ``paired_*``: paired t-test
    over the folds both have; ``wilcoxon_p``: Wilcoxon signed-rank test on the same pairs
    (NaN when all differences are zero or fewer than two pairs).  Confidence intervals are
    for the mean difference at ``confidence``.
    """

    metric: str
    a: str
    b: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    std_a: float
    std_b: float
    diff: float
    confidence: float
    student_t: float
    student_p: float
    student_ci: tuple[float, float]
    welch_p: float
    n_pairs: int
    paired_t: float
    paired_p: float
    paired_ci: tuple[float, float]
    wilcoxon_p: float
    cohens_d: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["student_ci"] = list(self.student_ci)
        d["paired_ci"] = list(self.paired_ci)
        return d


def mean_ci(values: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t confidence interval of the mean.

    >>> m, lo, hi = mean_ci(np.array([1.0, 2.0, 3.0]))
    >>> round(lo, 3), round(hi, 3)
    (-0.484, 4.484)
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if x.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - half, m + half


def _nan_pair() -> tuple[float, float]:
    return float("nan"), float("nan")


def compare(
    a: Mapping[int, float],
    b: Mapping[int, float],
    *,
    metric: str = "accuracy",
    names: tuple[str, str] = ("a", "b"),
    confidence: float = 0.95,
) -> Comparison:
    """Compare fold scores ``a`` and ``b`` (fold index -> value) with the tests above."""
    if not 0 < confidence < 1:
        raise ConfigurationError(f"confidence must be in (0, 1), got {confidence!r}")
    xa = np.array([v for v in a.values() if not math.isnan(v)], dtype=np.float64)
    xb = np.array([v for v in b.values() if not math.isnan(v)], dtype=np.float64)
    if xa.size < 2 or xb.size < 2:
        raise ConfigurationError(
            f"each side needs at least 2 scores to compare, got {xa.size} and {xb.size}"
        )
    na, nb = xa.size, xb.size
    ma, mb = float(xa.mean()), float(xb.mean())
    sa, sb = float(xa.std(ddof=1)), float(xb.std(ddof=1))
    diff = ma - mb
    q = 0.5 + confidence / 2
    # Student's t (pooled variance)
    pooled = ((na - 1) * sa**2 + (nb - 1) * sb**2) / (na + nb - 2)
    se = math.sqrt(pooled * (1 / na + 1 / nb))
    if se > 0:
        st = stats.ttest_ind(xa, xb, equal_var=True)
        student_t, student_p = float(st.statistic), float(st.pvalue)
        half = float(stats.t.ppf(q, na + nb - 2)) * se
        student_ci = (diff - half, diff + half)
        welch_p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
    else:
        student_t, student_p, welch_p = float("nan"), float("nan"), float("nan")
        student_ci = (diff, diff)
    cohens_d = diff / math.sqrt(pooled) if pooled > 0 else float("nan")
    # paired over common folds
    common = sorted(k for k in a if k in b and not math.isnan(a[k]) and not math.isnan(b[k]))
    d = np.array([a[k] - b[k] for k in common], dtype=np.float64)
    paired_t, paired_p = _nan_pair()
    paired_ci = _nan_pair()
    wilcoxon_p = float("nan")
    if d.size >= 2:
        sd = float(d.std(ddof=1))
        if sd > 0:
            pt = stats.ttest_rel([a[k] for k in common], [b[k] for k in common])
            paired_t, paired_p = float(pt.statistic), float(pt.pvalue)
            half = float(stats.t.ppf(q, d.size - 1)) * sd / math.sqrt(d.size)
            paired_ci = (float(d.mean()) - half, float(d.mean()) + half)
        else:
            paired_ci = (float(d.mean()), float(d.mean()))
        if np.any(d != 0):
            wilcoxon_p = float(stats.wilcoxon(d).pvalue)
    return Comparison(
        metric=metric, a=names[0], b=names[1], n_a=int(na), n_b=int(nb), mean_a=ma, mean_b=mb,
        std_a=sa, std_b=sb, diff=diff, confidence=confidence, student_t=student_t,
        student_p=student_p, student_ci=student_ci, welch_p=welch_p, n_pairs=int(d.size),
        paired_t=paired_t, paired_p=paired_p, paired_ci=paired_ci, wilcoxon_p=wilcoxon_p,
        cohens_d=cohens_d,
    )
