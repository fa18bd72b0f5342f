import math

import numpy as np
import pytest
from scipy import stats

from evaluation.stats import compare, mean_ci
from evaluation.summary import rounds_to_target
from securefed.errors import ConfigurationError


def test_student_t_matches_a_worked_example():
    # t = -3.674, p = 0.0213 for (1,2,3) vs (4,5,6), pooled variance 1, df 4
    c = compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 4.0, 1: 5.0, 2: 6.0})
    assert c.student_t == pytest.approx(-3.6742, abs=1e-4)
    assert c.student_p == pytest.approx(0.02131, abs=1e-4)
    # pooled CI: -3 ± t(0.975, 4) * sqrt(2/3)
    half = stats.t.ppf(0.975, 4) * math.sqrt(2 / 3)
    assert c.student_ci == pytest.approx((-3 - half, -3 + half))
    # every pair differs by exactly -3: the paired test has zero variance
    assert math.isnan(c.paired_p)
    assert c.paired_ci == (-3.0, -3.0)


def test_paired_test_detects_a_consistent_small_gain_the_independent_test_misses():
    rng = np.random.default_rng(0)
    base = rng.normal(0.75, 0.08, size=10)
    better = base + 0.02 + rng.normal(0, 0.003, size=10)
    c = compare(dict(enumerate(better)), dict(enumerate(base)))
    assert c.paired_p < 0.001
    assert c.student_p > 0.05
    assert c.paired_ci[0] > 0
    assert c.n_pairs == 10
    assert c.paired_p == pytest.approx(stats.ttest_rel(better, base).pvalue)
    assert c.wilcoxon_p == pytest.approx(stats.wilcoxon(better - base).pvalue)


def test_pairs_use_only_common_folds_and_too_few_scores_are_refused():
    c = compare({0: 0.7, 1: 0.8, 2: 0.9}, {1: 0.6, 2: 0.65, 3: 0.5})
    assert c.n_pairs == 2
    with pytest.raises(ConfigurationError, match="at least 2 scores"):
        compare({0: 0.7}, {0: 0.6, 1: 0.5})


def test_mean_ci_and_rounds_to_target():
    m, lo, hi = mean_ci(np.array([1.0, 2.0, 3.0]))
    assert (m, round(lo, 3), round(hi, 3)) == (2.0, -0.484, 4.484)
    assert rounds_to_target([0.5, 0.7, 0.8], 0.7) == 2.0
    assert math.isnan(rounds_to_target([0.5, 0.6], 0.7))
