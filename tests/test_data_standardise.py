"""Standardisation from shared sums equals pooled standardisation; one-hot encoding."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.data import (
    Feature,
    FederatedStandardiser,
    Heterogeneity,
    Schema,
    encode,
    pima_hospitals,
    synthetic_hospitals,
)
from securefed.data.pima import PIMA_FEATURES


def test_pima_federated_equals_pooled_standardisation():
    ds = pima_hospitals(seed=0)  # default heterogeneity: formats differ, sizes differ
    data = ds.prepare()
    pooled = np.concatenate([t[list(PIMA_FEATURES)].to_numpy(float) for t in ds.harmonised_tables])
    mu, sd = pooled.mean(axis=0), pooled.std(axis=0)
    for client, table in zip(data.clients, ds.harmonised_tables, strict=True):
        expected = (table[list(PIMA_FEATURES)].to_numpy(float) - mu) / sd
        np.testing.assert_allclose(client.X, expected, rtol=1e-5, atol=1e-6)
    te = ds.test[list(PIMA_FEATURES)].to_numpy(float)
    np.testing.assert_allclose(data.X_test, (te - mu) / sd, rtol=1e-5, atol=1e-6)
    Xall, _ = data.pooled()
    np.testing.assert_allclose(Xall.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(Xall.std(axis=0), 1.0, atol=1e-5)


def test_only_aggregates_are_shared():
    ds = pima_hospitals(seed=0)
    std = ds.standardiser()
    assert [s.hospital for s in std.shared] == list(ds.names)
    for s, n in zip(std.shared, ds.sizes, strict=True):
        assert s.counts.shape == s.sums.shape == s.sq_dev.shape == (7,)
        assert (s.counts == n).all()


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    missing=st.floats(0.0, 0.5),
)
def test_property_shared_sums_give_pooled_moments(sizes, seed, missing):
    rng = np.random.default_rng(seed)
    mats = [rng.normal(50, 20, size=(n, 4)) for n in sizes]
    for m in mats:
        m[rng.random(m.shape) < missing] = np.nan
    std = FederatedStandardiser.fit(mats, hospitals=[str(i) for i in range(len(mats))],
                                    feature_names=list("abcd"), numeric=[True] * 4)
    pooled = np.concatenate(mats)
    present = np.isfinite(pooled).any(axis=0)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(std.mean[present], np.nanmean(pooled, axis=0)[present], rtol=1e-9)
        sd = np.nanstd(pooled, axis=0)[present]
    expect_sd = np.where(sd <= 1e-12, 1.0, sd)
    np.testing.assert_allclose(std.scale[present], expect_sd, rtol=1e-9, atol=1e-12)
    out = std.transform(pooled)
    assert np.isfinite(out).all()


def test_one_hot_encoding_and_feature_names():
    schema = Schema(target="y", positive="1", negative="0", features=(
        Feature("age", unit="years"),
        Feature("sex", kind="categorical", categories=("female", "male")),
        Feature("smoker", kind="categorical", categories=("never", "former", "current")),
    ))
    assert schema.encoded_feature_names == ("age", "sex=male", "smoker=never", "smoker=former",
                                            "smoker=current")
    table = pd.DataFrame({
        "age": [30.0, 40.0, np.nan, 60.0],
        "sex": ["male", "female", "male", None],
        "smoker": ["never", "current", None, "former"],
        "y": [1, 0, 0, 1],
    })
    X, y = encode(table, schema)
    expected = np.array([
        [30, 1, 1, 0, 0],
        [40, 0, 0, 0, 1],
        [np.nan, 1, np.nan, np.nan, np.nan],
        [60, np.nan, 0, 1, 0],
    ])
    np.testing.assert_array_equal(X, expected)
    np.testing.assert_array_equal(y, [1, 0, 0, 1])
    std = FederatedStandardiser.fit([X[:2], X[2:]], hospitals=["a", "b"],
                                    feature_names=schema.encoded_feature_names,
                                    numeric=schema.numeric_mask)
    out = std.transform(X)
    assert out[2, 0] == 0.0  # missing numeric -> federated mean
    assert out[3, 1] == pytest.approx(2 / 3)  # missing sex -> federated share of "male"
    assert out[0, 1] == 1.0 and out[1, 1] == 0.0  # indicators stay 0/1


def test_synthetic_with_missing_values_is_standardised_from_sums():
    ds = synthetic_hospitals(n_hospitals=4, patients_per_hospital=60, seed=2, missing_rate=0.2,
                             heterogeneity=Heterogeneity.default())
    data = ds.prepare()
    mats = [encode(t, ds.schema)[0] for t in ds.harmonised_tables]
    pooled = np.concatenate(mats)
    assert np.isnan(pooled).any()
    num = np.array(ds.schema.numeric_mask)
    mu, sd = np.nanmean(pooled, axis=0), np.nanstd(pooled, axis=0)
    for client, m in zip(data.clients, mats, strict=True):
        exp = np.where(num, (m - mu) / sd, m)
        exp = np.where(np.isnan(exp), np.where(num, 0.0, mu), exp)
        np.testing.assert_allclose(client.X, exp, rtol=1e-5, atol=1e-6)
