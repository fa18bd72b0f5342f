"""``securefed train --data FEDERATION.toml``: the result JSON, its atomic write, the refusal
to overwrite a result made with other settings, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from securefed.cli import main, write_json_atomic

SCHEMA = """
[target]
name = "dx"
positive = "yes"
negative = "no"

[features.age]
type = "numeric"
unit = "years"
min = 0
max = 120

[features.sex]
type = "categorical"
categories = ["female", "male"]

[features.cp]
type = "categorical"
categories = ["typical", "atypical", "none"]

[features.chol]
type = "numeric"
unit = "mg/dL"
"""


def _patients(rng: np.random.Generator, n: int) -> pd.DataFrame:
    age = rng.integers(30, 80, n)
    sex = rng.choice(["female", "male"], n)
    cp = rng.choice(["typical", "atypical", "none"], n)
    chol = rng.normal(230, 40, n).round()
    logit = 0.08 * (age - 55) + 0.8 * (sex == "male") + 1.2 * (cp == "typical") - 0.5
    dx = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({"age": age, "sex": sex, "cp": cp, "chol": chol, "dx": dx})


@pytest.fixture
def federation(tmp_path):
    root = tmp_path / "fed"
    root.mkdir()
    (root / "schema.toml").write_text(SCHEMA)
    rng = np.random.default_rng(7)
    for name, n in (("east", 60), ("west", 40)):
        _patients(rng, n).to_csv(root / f"{name}.csv", index=False)
        _patients(rng, 25).to_csv(root / f"{name}-test.csv", index=False)
    (root / "federation.toml").write_text(textwrap.dedent("""
        name = "toy"
        schema = "schema.toml"
        [hospitals.east]
        train = "east.csv"
        test = "east-test.csv"
        [hospitals.west]
        train = "west.csv"
        test = "west-test.csv"
        """))
    return root / "federation.toml"


def _train(fed: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(fed), "--rounds", "3", "--quiet", "--out", str(out), *extra])


def test_result_json_holds_what_applying_the_model_needs(federation, tmp_path, capsys):
    out = tmp_path / "runs"
    assert _train(federation, out, "--algorithm", "fedmedheter") == 0
    path = out / "toy-fedmedheter-seed0.json"
    assert capsys.readouterr().out.strip().endswith(str(path))
    doc = json.loads(path.read_text())
    assert {"final", "feature_names", "standardisation", "logistic_regression", "run_settings",
            "dataset", "versions", "command"} <= set(doc)
    assert doc["dataset"]["name"] == "toy"
    assert doc["feature_names"] == ["age", "sex=male", "cp=typical", "cp=atypical", "cp=none", "chol"]
    assert doc["command"] == (f"securefed train --data {federation} --rounds 3 --quiet --out {out} "
                              "--algorithm fedmedheter")
    assert {"securefed", "numpy", "torch", "python"} <= set(doc["versions"])
    assert doc["run_settings"]["algorithm"] == "fedmedheter" and doc["run_settings"]["rounds"] == 3
    assert doc["settings"]["strategy"]["learning_rate"] == 0.3  # FedMedHeter's library default
    root = federation.parent
    train = pd.concat([pd.read_csv(root / "east.csv"), pd.read_csv(root / "west.csv")])
    std = doc["standardisation"]
    assert std["mean"][0] == pytest.approx(train["age"].mean(), rel=1e-12)
    assert std["sd"][0] == pytest.approx(train["age"].std(ddof=0), rel=1e-12)
    assert std["inputs"][1]["fill"] == pytest.approx((train["sex"] == "male").mean())

    # apply the model from the JSON alone to the raw test files; it must reproduce `final`
    lr = doc["logistic_regression"]

    def predict(rows: pd.DataFrame) -> np.ndarray:
        z = np.full(len(rows), lr["intercept"])
        for spec in std["inputs"]:
            if spec["kind"] == "numeric":
                x = (rows[spec["feature"]] - spec["mean"]) / spec["sd"]
            else:
                x = (rows[spec["feature"]] == spec["category"]).astype(float)
            z += lr["coefficients"][spec["name"]] * x.to_numpy(float)
        return z

    per, scores, labels = {}, [], []
    for name in ("east", "west"):
        rows = pd.read_csv(root / f"{name}-test.csv")
        z = predict(rows)
        per[name] = ((z > 0) == (rows["dx"] == "yes")).to_numpy()
        scores.append(z)
        labels.append((rows["dx"] == "yes").to_numpy())
    final = doc["final"]
    assert set(final["per_hospital"]) == {"east", "west"}
    for name, hits in per.items():
        assert final["per_hospital"][name]["accuracy"] == pytest.approx(hits.mean(), abs=1e-6)
        assert final["per_hospital"][name]["test_patients"] == 25
    assert final["test_accuracy"] == pytest.approx(np.concatenate(list(per.values())).mean(), abs=1e-6)
    assert final["test_patients"] == 50
    assert final["test_auc"] == pytest.approx(
        roc_auc_score(np.concatenate(labels), np.concatenate(scores)), abs=1e-9)


def test_centralized_runs_through_the_same_path(federation, tmp_path):
    out = tmp_path / "runs"
    assert _train(federation, out, "--algorithm", "centralized") == 0
    doc = json.loads((out / "toy-centralized-seed0.json").read_text())
    assert doc["algorithm"] == "centralized"
    assert set(doc["final"]["per_hospital"]) == {"east", "west"}


def test_a_result_made_with_other_settings_is_not_overwritten(federation, tmp_path, capsys):
    out = tmp_path / "runs"
    assert _train(federation, out) == 0
    path = out / "toy-fedavg-seed0.json"
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["train", "--data", str(federation), "--rounds", "4", "--quiet", "--out", str(out),
                 "--lr", "0.05"]) == 2
    err = capsys.readouterr().err
    assert err == (f"securefed: error: {path} holds a result made with other settings "
                   "(learning_rate: None there, 0.05 now; rounds: 3 there, 4 now); pass "
                   "--overwrite to replace it, or choose another --out\n")
    assert path.read_bytes() == before
    # the same settings may be run again; other settings with --overwrite replace the file
    assert _train(federation, out) == 0
    assert _train(federation, out, "--lr", "0.05", "--overwrite") == 0
    assert json.loads(path.read_text())["run_settings"]["learning_rate"] == 0.05
    # changed data counts as other settings
    (federation.parent / "west.csv").write_text((federation.parent / "west.csv").read_text() + "50,male,none,200,no\n")
    assert _train(federation, out, "--lr", "0.05") == 2
    assert "data.files.west.csv" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["toy-fedavg-seed0.json"]  # no temporary left


def test_write_is_atomic(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": 2, "b": object()})  # fails half-way through the dump
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["r.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_bad_input_is_one_line_with_file_row_column_and_exit_2(federation, tmp_path, capsys):
    root = federation.parent
    text = (root / "west.csv").read_text().splitlines()
    text[3] = "-40" + text[3][text[3].index(","):]
    text[7] = "abc" + text[7][text[7].index(","):]
    (root / "west.csv").write_text("\n".join(text) + "\n")
    out = tmp_path / "runs"
    assert _train(federation, out) == 2
    err = capsys.readouterr().err
    assert err == (f"securefed: error: 2 problems in the input data, first: {root.resolve() / 'west.csv'}, "
                   "row 4, column 'age': -40 is outside the plausible range [0, 120] years declared "
                   "in the schema (python -m securefed.data --check FEDERATION.toml lists them)\n")
    assert not out.exists()


def test_pima_options_are_refused_with_data(federation, tmp_path, capsys):
    assert _train(federation, tmp_path, "--hospitals", "4") == 2
    assert "--hospitals shape the bundled Pima split" in capsys.readouterr().err


def test_secure_aggregation_weight_bound_is_checked_before_training(federation, tmp_path, capsys):
    out = tmp_path / "runs"
    assert _train(federation, out, "--secure-aggregation", "--secagg-max-weight", "50") == 2
    err = capsys.readouterr().err
    assert err == ("securefed: error: secure aggregation refuses client weights above "
                   "max_weight=50, and fedavg would weight hospital 'east' (60 training patients) "
                   "up to 60; raise the bound to at least 60 (SecAggChannel(max_weight=...); "
                   "securefed train: --secagg-max-weight 60)\n")
    assert not out.exists()
    # with two hospitals the sum would reveal each to the other: refused before training
    assert _train(federation, out, "--secure-aggregation", "--secagg-max-weight", "60") == 2
    assert "releases only sums of at least 3 hospitals, and this run has 2 per round" in \
        capsys.readouterr().err
    assert not out.exists()
    _patients(np.random.default_rng(8), 50).to_csv(federation.parent / "south.csv", index=False)
    text = federation.read_text()
    federation.write_text(text + '\n[hospitals.south]\ntrain = "south.csv"\n')
    assert _train(federation, out, "--secure-aggregation", "--secagg-max-weight", "60") == 0
    assert json.loads((out / "toy-fedavg-seed0.json").read_text())["channel"] == "secagg"


def test_weight_bound_in_the_library_names_every_hospital_over_it():
    from securefed import FedMedHeter, ModelSpec, SecAggChannel, run_federated
    from securefed.data import synthetic_federation
    from securefed.errors import ConfigurationError

    data = synthetic_federation(n_hospitals=3, patients_per_hospital=40, seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    sizes = [c.num_examples for c in data.clients]
    # FedMedHeter: n / reference_examples * rho_max = n / 100 * 4
    bound = 4 * min(sizes) / 100 - 1e-9
    with pytest.raises(ConfigurationError) as err:
        run_federated(data, strategy=FedMedHeter(), model=spec, rounds=1,
                      channel=SecAggChannel(max_weight=bound))
    for c in data.clients:
        assert f"hospital {c.name!r} ({c.num_examples} training patients) up to {4 * c.num_examples / 100:g}" in str(err.value)
