import numpy as np
import pytest

from evaluation.cv import fold_assignment, mean_std, stratified_hospital_folds
from securefed.data import pima_federation
from securefed.errors import ConfigurationError


def test_every_patient_is_tested_exactly_once_and_never_trained_on_in_its_fold():
    data = pima_federation(seed=3)
    folds = stratified_hospital_folds(data, n_folds=10, seed=1)
    assert len(folds) == 10
    total = sum(c.num_examples for c in data.clients)
    assert sum(len(f.data.y_test) for f in folds) == total
    for f in folds:
        n_train = sum(c.num_examples for c in f.data.clients)
        assert n_train + len(f.data.y_test) == total
        assert len(f.test_hospital) == len(f.data.y_test)
        assert f.external is not None and f.external[0].shape == data.X_test.shape


def test_folds_are_stratified_within_each_hospital():
    data = pima_federation(seed=0)
    rng = np.random.default_rng(0)
    for c in data.clients:
        a = fold_assignment(c.y, n_folds=10, rng=rng)
        pos = np.bincount(a[c.y == 1], minlength=10)
        size = np.bincount(a, minlength=10)
        assert pos.max() - pos.min() <= 1
        assert size.max() - size.min() <= 1


def test_standardisation_is_fitted_on_the_training_fold_only():
    data = pima_federation(seed=0)
    f = stratified_hospital_folds(data, n_folds=5, seed=0)[2]
    X_train = np.concatenate([c.X for c in f.data.clients]).astype(np.float64)
    np.testing.assert_allclose(X_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(X_train.std(0), 1.0, atol=1e-4)
    assert np.abs(f.data.X_test.mean(0)).max() > 1e-3  # the held-out rows were not used


def test_same_seed_same_folds_and_bad_fold_counts():
    data = pima_federation(seed=0)
    a = stratified_hospital_folds(data, n_folds=4, seed=5)
    b = stratified_hospital_folds(data, n_folds=4, seed=5)
    np.testing.assert_array_equal(a[1].data.X_test, b[1].data.X_test)
    with pytest.raises(ConfigurationError, match="n_folds must be an integer >= 2, got 1"):
        stratified_hospital_folds(data, n_folds=1)
    with pytest.raises(ConfigurationError, match="at least n_folds=100"):
        stratified_hospital_folds(data, n_folds=100)


def test_mean_std_uses_sample_std_and_ignores_nan():
    m, s = mean_std([1.0, 2.0, 3.0, float("nan")])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert mean_std([4.0]) == (4.0, 0.0)
