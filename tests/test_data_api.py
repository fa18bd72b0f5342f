"""The public surface of securefed.data, the summary command and the plot."""

import securefed.data as data
from securefed.data import Heterogeneity, pima_hospitals, synthetic_hospitals
from securefed.data.__main__ import main
from securefed.data.plots import plot_hospitals


def test_public_names():
    for name in ("load_pima", "pima_hospitals", "pima_federation", "synthetic_federation",
                 "load_csv_federation", "Heterogeneity", "Schema", "FederatedDataset"):
        assert name in data.__all__ and hasattr(data, name)
    assert set(data.__all__) == {n for n in data.__all__ if hasattr(data, n)}


def test_pima_federation_is_prepare_of_pima_hospitals():
    import numpy as np

    a = data.pima_federation(seed=4, n_hospitals=4)
    b = pima_hospitals(seed=4, n_hospitals=4).prepare()
    for x, y in zip(a.clients, b.clients, strict=True):
        np.testing.assert_array_equal(x.X, y.X)
    assert a.description == b.description


def test_summary_command_prints_the_table(capsys):
    assert main(["--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "hospital-2" in out and "positive_rate" in out and "si-lab" in out


def test_plot_has_a_panel_per_quantity(tmp_path):
    fig = plot_hospitals(synthetic_hospitals(n_hospitals=4, patients_per_hospital=30, seed=0,
                                             heterogeneity=Heterogeneity.default()))
    titles = [a.get_title() for a in fig.axes if a.get_visible()]
    assert titles[:2] == ["patients per hospital", "share with diabetes = yes"]
    assert any(t.startswith("age") for t in titles)
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_docstring_examples():
    import doctest

    from securefed.data import pima, schema, synthetic, units

    for module in (pima, schema, synthetic, units):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
