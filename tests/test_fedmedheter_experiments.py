"""Smoke test of benchmarks/fedmedheter_experiments.py --quick (seconds, not minutes)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fedmedheter_experiments.py"


def _load():
    spec = importlib.util.spec_from_file_location("fedmedheter_experiments", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_writes_results(tmp_path, capsys):
    mod = _load()
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--out", str(tmp_path), "--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.md").read_text().startswith("# FedMedHeter experiments")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    agg = res["pima"]["aggregate"]
    for method in ("centralized", "fedavg", "fedprox", "fedmedheter"):
        runs = res["pima"]["runs"][method]
        assert len(runs) == 2
        # the aggregate is the mean of the runs' final accuracies, the last point of the mean curve
        assert agg[method]["accuracy_mean"] == pytest.approx(
            sum(r["final_accuracy"] for r in runs) / 2)
        assert agg[method]["mean_accuracy_curve"][-1] == pytest.approx(agg[method]["accuracy_mean"])
    # every switched-on component has its ablation row
    assert any(k.startswith("fedmedheter - ") for k in agg)
    # bytes are the engine's measured counts: FedAvg's three hospitals each send one
    # float32 update of every parameter of the script's default model per round
    from securefed.data import pima_federation
    from securefed.models import ModelSpec, get_flat_params
    from securefed.wire import pack

    fed = pima_federation(seed=0)
    dim = get_flat_params(ModelSpec(res["model"], n_features=fed.num_features).build()).size
    one = len(pack({"round": 1, "client": 0, "weight": 1.0, "u": np.zeros(dim, np.float32)}))
    assert agg["fedavg"]["bytes_per_round"] == len(fed.clients) * one
    assert not math.isnan(agg["fedavg"]["auc_mean"])
    assert "Seed claims" in capsys.readouterr().out


def test_validation_split_never_touches_the_test_set():
    mod = _load()
    from securefed.data import pima_federation

    data = pima_federation(seed=0)
    val = mod.validation_split(data, fraction=0.25, seed=1)
    n_train = sum(c.num_examples for c in data.clients)
    assert sum(c.num_examples for c in val.clients) + len(val.y_test) == n_train
    pooled = {tuple(r) for c in data.clients for r in c.X.tolist()}
    assert all(tuple(r) in pooled for r in val.X_test.tolist())


def test_selection_picks_one_candidate_per_stage_on_validation_data():
    mod = _load()
    from securefed.data import pima_federation
    from securefed.models import ModelSpec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings, log = mod.tune(lambda s: pima_federation(seed=s),
                                 lambda d: ModelSpec("logreg", n_features=d.num_features),
                                 rounds=2, n_seeds=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    stages = {r["stage"] for r in log}
    assert {"fedavg learning_rate", "fedprox mu", "adaptive_lr", "client_weighting",
            "server_optimizer", "proximal_mu", "compression"} <= stages
    for stage in stages:
        assert sum(r["chosen"] for r in log if r["stage"] == stage) == 1
    strategy = settings.fedmedheter()
    assert {"adaptive_lr", "client_weighting", "compression", "proximal"} <= set(
        strategy.active_components())
    assert settings.server_candidate["server_optimizer"] in ("momentum", "adam")


def test_library_defaults_are_the_documented_selection():
    """FedMedHeter() is what the committed selection run chose (docs/results/fedmedheter)."""
    from securefed.federated.fedmedheter import FedMedHeter

    path = SCRIPT.parents[1] / "docs" / "results" / "fedmedheter" / "results.json"
    chosen = json.loads(path.read_text())["settings"]["fedmedheter"]
    saved = json.loads(path.read_text())["settings"]
    selected = _load().SELECTED_BASELINES
    assert selected["learning_rate"] == saved["learning_rate"]
    assert selected["fedprox_mu"] == saved["fedprox_mu"]
    assert selected["server_candidate"] == saved["server_candidate"]
    default = FedMedHeter()
    for key, value in chosen.items():
        if key == "compression":
            assert repr(default.compression) == value
        else:
            assert getattr(default, key) == value, key
