"""The synthetic EHR generator: shapes, seeds, its knobs, and its documented risk model."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from securefed.data import RISK_MODEL, Heterogeneity, synthetic_federation, synthetic_hospitals
from securefed.data.synthetic import SYNTHETIC_SCHEMA, _draw, risk_logit
from securefed.errors import ConfigurationError

NUMERIC = ["age", "bmi", "sbp", "glucose", "hba1c"]


def test_shapes_and_names():
    data = synthetic_federation(n_hospitals=5, patients_per_hospital=40, test_size=100, seed=0)
    assert len(data.clients) == 5
    assert [c.name for c in data.clients] == [f"hospital-{i}" for i in range(5)]
    assert sum(c.num_examples for c in data.clients) == 200
    assert data.feature_names == ("age", "sex=male", "bmi", "sbp", "glucose", "hba1c",
                                  "polyuria=yes", "polydipsia=yes", "family_history=yes")
    assert data.X_test.shape == (100, 9)
    assert all(c.X.shape[1] == 9 and np.isfinite(c.X).all() for c in data.clients)
    assert set(np.unique(data.y_test)) == {0.0, 1.0}
    assert "synthetic EHR" in data.description


def test_seed_reproducibility():
    a = synthetic_federation(n_hospitals=3, patients_per_hospital=30, seed=11, test_size=50)
    b = synthetic_federation(n_hospitals=3, patients_per_hospital=30, seed=11, test_size=50)
    c = synthetic_federation(n_hospitals=3, patients_per_hospital=30, seed=12, test_size=50)
    for x, y in zip(a.clients, b.clients, strict=True):
        np.testing.assert_array_equal(x.X, y.X)
        np.testing.assert_array_equal(x.y, y.y)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert not np.array_equal(a.X_test, c.X_test)


def test_validation():
    with pytest.raises(ConfigurationError, match="n_hospitals must be an integer >= 1, got 0"):
        synthetic_hospitals(n_hospitals=0)
    with pytest.raises(ConfigurationError, match="missing_rate"):
        synthetic_hospitals(missing_rate=1.0)


def _ds(**het):
    return synthetic_hospitals(n_hospitals=6, patients_per_hospital=400, seed=3, test_size=10,
                               heterogeneity=Heterogeneity(**het))


def test_knobs_off_give_identical_hospitals():
    ds = _ds()
    assert set(ds.sizes) == {400} and set(ds.formats) == {"agreed"}
    assert all(h.notes["relabelled"] == 0 for h in ds.hospitals)


def test_quantity_skew():
    assert np.ptp(_ds(quantity_skew=1.0).sizes) > 200
    assert sum(_ds(quantity_skew=1.0).sizes) == 2400


def test_covariate_shift_moves_the_generating_means():
    off = [t[["age", "bmi", "sbp"]].mean() for t in _ds().harmonised_tables]
    on = [t[["age", "bmi", "sbp"]].mean() for t in _ds(covariate_shift=1.0).harmonised_tables]
    # hospital 0 older (+12 y), 1 heavier (+5), 2 higher pressure (+15), 3 younger, 4 lighter, 5 lower
    expected = [("age", 12), ("bmi", 5), ("sbp", 15), ("age", -12), ("bmi", -5), ("sbp", -15)]
    for k, (feat, delta) in enumerate(expected):
        moved = on[k][feat] - off[k][feat]
        assert moved == pytest.approx(delta, abs=0.35 * abs(delta))


def test_label_convention_changes_the_chosen_hospitals_positive_rate():
    off = _ds()
    on = _ds(label_convention=1.0)
    assert off.positive_rates[:5] == on.positive_rates[:5]
    t = on.harmonised_tables[5]
    np.testing.assert_array_equal(t["diabetes"], (t["hba1c"] >= 6.5).astype(int))
    assert abs(on.positive_rates[5] - off.positive_rates[5]) > 0.02


def test_format_shift_is_undone_exactly():
    off, on = _ds(quantity_skew=0.3), _ds(quantity_skew=0.3, format_shift=1.0)
    assert set(on.formats) == {"si-lab", "registry", "legacy"}
    si = on.hospitals[on.formats.index("si-lab")].table
    assert set(si["gender"].astype(str)) <= {"0", "1"} and si["fasting_glucose"].max() < 40
    for a, b in zip(off.harmonised_tables, on.harmonised_tables, strict=True):
        np.testing.assert_allclose(b[NUMERIC].to_numpy(), a[NUMERIC].to_numpy(), rtol=1e-13, atol=0)
        for col in ("sex", "polyuria", "polydipsia", "family_history", "diabetes"):
            pd.testing.assert_series_equal(a[col], b[col])


def test_missing_rate_blanks_cells():
    ds = synthetic_hospitals(n_hospitals=2, patients_per_hospital=500, seed=0, missing_rate=0.1,
                             heterogeneity=Heterogeneity.none())
    frac = pd.concat(ds.harmonised_tables)[["bmi", "sbp", "glucose", "hba1c"]].isna().mean()
    assert (frac.between(0.06, 0.14)).all()


def test_labels_follow_the_documented_risk_model():
    """Fit logistic regression by Newton's method; every coefficient lies within 4 standard
    errors of RISK_MODEL (a check that the documentation states the true model)."""
    cols = _draw(40_000, np.random.default_rng(0), 0.0, 0.0, 0.0)
    names = [k for k in RISK_MODEL if k != "intercept"]
    X = np.column_stack([np.ones(40_000)] + [cols[k] - RISK_MODEL[k][1] for k in names])
    y = cols["diabetes"]
    beta = np.zeros(X.shape[1])
    for _ in range(12):
        p = 1 / (1 + np.exp(-X @ beta))
        H = X.T @ (X * (p * (1 - p))[:, None])
        beta += np.linalg.solve(H, X.T @ (y - p))
    se = np.sqrt(np.diag(np.linalg.inv(H)))
    truth = np.array([RISK_MODEL["intercept"][0]] + [RISK_MODEL[k][0] for k in names])
    assert np.all(np.abs(beta - truth) < 4 * se), (beta, truth, se)
    np.testing.assert_allclose(risk_logit(cols), X @ truth)


def test_schema_and_default_heterogeneity_description():
    ds = synthetic_hospitals(n_hospitals=3, patients_per_hospital=20, seed=0)
    assert ds.heterogeneity == Heterogeneity.default()
    assert ds.schema is SYNTHETIC_SCHEMA
    assert dataclasses.asdict(ds.heterogeneity)["format_shift"] == 0.5
