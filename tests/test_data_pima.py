"""Bundled Pima data, the hospital split and its missing-value handling."""

import numpy as np
import pytest

from securefed.data import Heterogeneity, load_pima, pima_federation, pima_hospitals
from securefed.data.pima import PIMA_FEATURES, PIMA_SCHEMA
from securefed.errors import ConfigurationError


@pytest.mark.parametrize("split,n,pos", [("tr", 200, 68), ("te", 332, 109), ("tr2", 300, 106)])
def test_bundled_counts(split, n, pos):
    df = load_pima(split)
    assert len(df) == n
    assert int((df["type"] == "Yes").sum()) == pos
    assert list(df.columns) == [*PIMA_FEATURES, "type"]


def test_missing_values_only_in_tr2():
    assert load_pima("tr").isna().sum().sum() == 0
    assert load_pima("te").isna().sum().sum() == 0
    na = load_pima("tr2").isna().sum()
    assert na.to_dict() == {"npreg": 0, "glu": 0, "bp": 13, "skin": 98, "bmi": 3, "ped": 0,
                            "age": 0, "type": 0}


def test_unknown_split():
    with pytest.raises(ConfigurationError, match="unknown Pima split 'xx'"):
        load_pima("xx")


def test_default_federation_shapes():
    data = pima_federation(seed=0)
    assert len(data.clients) == 3
    assert [c.client_id for c in data.clients] == [0, 1, 2]
    assert [c.name for c in data.clients] == ["hospital-0", "hospital-1", "hospital-2"]
    assert sum(c.num_examples for c in data.clients) == 200
    assert sum(float(c.y.sum()) for c in data.clients) == pytest.approx(
        sum(pima_hospitals(seed=0).positive_rates[i] * n
            for i, n in enumerate(pima_hospitals(seed=0).sizes)))
    assert data.feature_names == PIMA_FEATURES
    assert data.X_test.shape == (332, 7) and data.y_test.sum() == 109
    assert all(c.X.dtype == np.float32 and c.y.dtype == np.float32 for c in data.clients)
    assert "hospital" in data.description and "quantity_skew=0.5" in data.description


def test_iid_split_keeps_every_patient_and_label():
    ds = pima_hospitals(seed=3, heterogeneity=Heterogeneity.none())
    pooled = np.concatenate([t.to_numpy() for t in ds.harmonised_tables])
    tr = load_pima("tr")
    ref = np.column_stack([tr[list(PIMA_FEATURES)].to_numpy(float), (tr["type"] == "Yes").to_numpy()])
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(key(pooled), key(ref))


def test_same_seed_same_split_other_seed_other_split():
    a, b = pima_hospitals(seed=5), pima_hospitals(seed=5)
    for ta, tb in zip(a.hospitals, b.hospitals, strict=True):
        assert ta.table.equals(tb.table)
    fa, fb = a.prepare(), b.prepare()
    for ca, cb in zip(fa.clients, fb.clients, strict=True):
        np.testing.assert_array_equal(ca.X, cb.X)
    c = pima_hospitals(seed=6)
    assert a.sizes != c.sizes or any(
        not np.array_equal(x.row_numbers, y.row_numbers) for x, y in zip(a.hospitals, c.hospitals, strict=True))


def test_missing_split_is_imputed_with_federated_mean():
    het = Heterogeneity(quantity_skew=0.5, covariate_shift=0.5)
    ds = pima_hospitals(seed=0, missing=True, heterogeneity=het)
    assert sum(ds.sizes) == 300
    assert int(ds.summary()["positives"].sum()) == 106
    assert int(ds.summary()["missing_cells"].sum()) == 13 + 98 + 3
    data = ds.prepare()
    std = ds.standardiser()
    pooled = np.concatenate([t[list(PIMA_FEATURES)].to_numpy(float) for t in ds.harmonised_tables])
    np.testing.assert_allclose(std.mean, np.nanmean(pooled, axis=0), rtol=1e-12)
    np.testing.assert_allclose(std.scale, np.nanstd(pooled, axis=0), rtol=1e-12)
    for client, table in zip(data.clients, ds.harmonised_tables, strict=True):
        assert np.isfinite(client.X).all()
        miss = table[list(PIMA_FEATURES)].isna().to_numpy()
        assert (client.X[miss] == 0.0).all()  # filled with the federated mean (0 once standardised)
    # counts shared for the mean exclude the missing cells
    skin = PIMA_FEATURES.index("skin")
    assert sum(int(s.counts[skin]) for s in std.shared) == 300 - 98


def test_n_hospitals_and_validation():
    ds = pima_hospitals(n_hospitals=7, seed=1)
    assert len(ds.hospitals) == 7 and sum(ds.sizes) == 200
    assert min(ds.sizes) >= 10
    with pytest.raises(ConfigurationError, match="n_hospitals must be an integer >= 1, got 0"):
        pima_hospitals(n_hospitals=0)
    with pytest.raises(ConfigurationError, match="heterogeneity must be a Heterogeneity"):
        pima_hospitals(heterogeneity=0.5)


def test_schema_of_pima():
    assert PIMA_SCHEMA.target == "type" and PIMA_SCHEMA.positive == "Yes"
    assert PIMA_SCHEMA.feature("glu").unit == "mg/dL"
    assert PIMA_SCHEMA.encoded_feature_names == PIMA_FEATURES
