"""Each heterogeneity knob does what its docstring says, and nothing at strength 0."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from securefed.data import Heterogeneity, load_pima, pima_hospitals
from securefed.data.heterogeneity import draw_sizes, relabel, tilted_partition
from securefed.data.pima import PIMA_FEATURES, PIMA_TILTS
from securefed.errors import ConfigurationError

SEEDS = range(8)


def test_strengths_are_validated():
    with pytest.raises(ConfigurationError, match=r"quantity_skew must be in \[0, 1\], got 1.5"):
        Heterogeneity(quantity_skew=1.5)
    with pytest.raises(ConfigurationError, match="format_shift must be in"):
        Heterogeneity(format_shift=-0.1)
    with pytest.raises(ConfigurationError, match="min_hospital_size"):
        Heterogeneity(min_hospital_size=0)
    with pytest.raises(TypeError):
        Heterogeneity(0.1, 0.1, 0.1, 0.1, 5)  # extra options are keyword-only
    h = Heterogeneity.default()
    assert (h.quantity_skew, h.covariate_shift, h.label_convention, h.format_shift) == (0.5,) * 4
    assert Heterogeneity.none().is_none and not h.is_none
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.quantity_skew = 0.1


# -- quantity skew ----------------------------------------------------------------------------

def test_quantity_skew_zero_gives_equal_sizes():
    for seed in SEEDS:
        sizes = pima_hospitals(seed=seed, heterogeneity=Heterogeneity(covariate_shift=0.5)).sizes
        assert sum(sizes) == 200 and max(sizes) - min(sizes) <= 1


def test_quantity_skew_makes_sizes_unequal_and_keeps_a_minimum():
    ratios = []
    for seed in SEEDS:
        sizes = pima_hospitals(seed=seed, heterogeneity=Heterogeneity(quantity_skew=1.0)).sizes
        assert sum(sizes) == 200 and min(sizes) >= 10
        ratios.append(max(sizes) / min(sizes))
    assert np.mean(ratios) > 2.0
    # the spread grows with the strength (same Dirichlet draw, shares interpolated)
    spreads = [np.ptp(draw_sizes(10_000, 5, s, np.random.default_rng(1), min_size=10))
               for s in (0.0, 0.25, 0.5, 1.0)]
    assert spreads == sorted(spreads) and spreads[0] <= 1 and spreads[-1] > 1000
    sizes = draw_sizes(30, 3, 1.0, np.random.default_rng(0), min_size=10)
    assert list(sizes) == [10, 10, 10]
    with pytest.raises(ConfigurationError, match="cannot give 4 hospitals at least 10"):
        draw_sizes(30, 4, 0.5, np.random.default_rng(0), min_size=10)


# -- covariate shift --------------------------------------------------------------------------

def _tilt_gap(strength: float) -> np.ndarray:
    """Per hospital, mean over seeds of (hospital mean - pool mean) / pool sd of its tilt feature."""
    pool = load_pima("tr")
    gaps = []
    for seed in SEEDS:
        ds = pima_hospitals(seed=seed, heterogeneity=Heterogeneity(covariate_shift=strength))
        row = []
        for k, table in enumerate(ds.harmonised_tables):
            feat, sign, _ = PIMA_TILTS[k]
            row.append(sign * (table[feat].mean() - pool[feat].mean()) / pool[feat].std(ddof=0))
        gaps.append(row)
    return np.mean(gaps, axis=0)


def test_covariate_shift_moves_each_hospitals_feature():
    off, on = _tilt_gap(0.0), _tilt_gap(1.0)
    assert np.all(np.abs(off) < 0.15)  # IID: no systematic shift
    assert np.all(on > 0.3)  # hospital 0 older, 1 heavier, 2 more pregnancies
    assert np.all(on > off + 0.3)


def test_covariate_shift_zero_ignores_the_features():
    sizes = np.array([50, 30, 20])
    scores_a = np.random.default_rng(0).normal(size=(100, 3))
    scores_b = np.random.default_rng(1).normal(size=(100, 3)) * 5
    pa = tilted_partition(scores_a, sizes, 0.0, np.random.default_rng(9))
    pb = tilted_partition(scores_b, sizes, 0.0, np.random.default_rng(9))
    for a, b in zip(pa, pb, strict=True):
        np.testing.assert_array_equal(a, b)
    qa = tilted_partition(scores_a, sizes, 1.0, np.random.default_rng(9))
    qb = tilted_partition(scores_b, sizes, 1.0, np.random.default_rng(9))
    assert any(not np.array_equal(a, b) for a, b in zip(qa, qb, strict=True))
    assert sorted(np.concatenate(qa)) == list(range(100))
    assert [len(p) for p in qa] == [50, 30, 20]


# -- labelling convention ---------------------------------------------------------------------

def test_label_convention_changes_the_chosen_hospitals_positive_rate():
    base = Heterogeneity(quantity_skew=0.5, covariate_shift=0.5)
    ref = pima_hospitals(seed=2, heterogeneity=base)
    on = pima_hospitals(seed=2, heterogeneity=dataclasses.replace(base, label_convention=1.0))
    # same patients everywhere; only the last hospital's labels differ
    assert ref.sizes == on.sizes
    for k in (0, 1):
        pd.testing.assert_frame_equal(ref.harmonised_tables[k], on.harmonised_tables[k])
    last_ref, last_on = ref.harmonised_tables[2], on.harmonised_tables[2]
    pd.testing.assert_frame_equal(last_ref[list(PIMA_FEATURES)], last_on[list(PIMA_FEATURES)])
    # every patient now follows the hospital's rule glu >= 140 mg/dL
    np.testing.assert_array_equal(last_on["type"], (last_on["glu"] >= 140).astype(int))
    assert last_on["type"].mean() != pytest.approx(last_ref["type"].mean())
    assert on.hospitals[2].notes["labels_changed"] == int((last_on["type"] != last_ref["type"]).sum()) > 0


def test_label_convention_fraction_and_hospital_choice():
    het = Heterogeneity(label_convention=0.5, label_hospital=0)
    ds = pima_hospitals(seed=4, heterogeneity=het)
    assert ds.hospitals[0].notes["relabelled"] == round(0.5 * ds.sizes[0])
    assert ds.hospitals[2].notes["relabelled"] == 0
    y = np.array([0, 1, 0, 1, 1, 0])
    v = np.array([150.0, 100.0, np.nan, 200.0, 90.0, 141.0])
    same, applied = relabel(y, v, 140.0, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(same, y)
    assert not applied.any()
    new, applied = relabel(y, v, 140.0, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(new, [1, 0, 0, 1, 0, 1])  # NaN keeps its label
    assert applied.sum() == 5


def test_label_convention_zero_keeps_the_reference_labels():
    tr = load_pima("tr")
    ds = pima_hospitals(seed=0, heterogeneity=Heterogeneity(quantity_skew=1, covariate_shift=1,
                                                            format_shift=1))
    for h, table in zip(ds.hospitals, ds.harmonised_tables, strict=True):
        expected = (tr["type"].to_numpy()[h.row_numbers - 2] == "Yes").astype(int)
        np.testing.assert_array_equal(table["type"].to_numpy(), expected)


# -- format shift -----------------------------------------------------------------------------

@pytest.mark.parametrize("missing", [False, True])
def test_format_shift_is_undone_exactly_by_harmonisation(missing):
    base = Heterogeneity(quantity_skew=0.5, covariate_shift=0.5, label_convention=0.5)
    agreed = pima_hospitals(seed=1, heterogeneity=base, missing=missing)
    shifted = pima_hospitals(seed=1, heterogeneity=dataclasses.replace(base, format_shift=1.0),
                             missing=missing)
    assert set(shifted.formats) == {"si-lab", "registry", "legacy"}
    assert set(agreed.formats) == {"agreed"}
    for a, s, h in zip(agreed.harmonised_tables, shifted.harmonised_tables, shifted.hospitals,
                       strict=True):
        assert list(h.table.columns) != list(a.columns)  # exported under other names
        np.testing.assert_array_equal(a["type"], s["type"])
        np.testing.assert_allclose(s[list(PIMA_FEATURES)].to_numpy(), a[list(PIMA_FEATURES)].to_numpy(),
                                   rtol=1e-13, atol=0)
    si = shifted.hospitals[shifted.formats.index("si-lab")]
    assert "plasma_glucose" in si.table.columns and si.table["plasma_glucose"].max() < 12  # mmol/L
    assert set(si.table["diabetic"]) <= {"1", "0"}
    np.testing.assert_array_equal(agreed.prepare().clients[0].X, shifted.prepare().clients[0].X)


def test_format_shift_zero_exports_the_agreed_schema():
    ds = pima_hospitals(seed=0, heterogeneity=Heterogeneity(quantity_skew=0.5, covariate_shift=0.5))
    tr = load_pima("tr")
    for h in ds.hospitals:
        assert h.export_format.is_agreed
        expected = tr.iloc[h.row_numbers - 2].reset_index(drop=True)
        pd.testing.assert_frame_equal(h.table, expected, check_dtype=False)


def test_format_shift_counts_hospitals():
    for s, count in ((0.0, 0), (0.2, 1), (0.5, 2), (1.0, 3)):
        ds = pima_hospitals(seed=0, heterogeneity=Heterogeneity(format_shift=s))
        assert sum(f != "agreed" for f in ds.formats) == count


def test_knobs_draw_from_independent_streams():
    a = pima_hospitals(seed=3, heterogeneity=Heterogeneity(quantity_skew=0.7, covariate_shift=0.7))
    b = pima_hospitals(seed=3, heterogeneity=Heterogeneity(quantity_skew=0.7, covariate_shift=0.7,
                                                           label_convention=0.3, format_shift=0.8))
    assert a.sizes == b.sizes
    for x, y in zip(a.hospitals, b.hospitals, strict=True):
        np.testing.assert_array_equal(x.row_numbers, y.row_numbers)
