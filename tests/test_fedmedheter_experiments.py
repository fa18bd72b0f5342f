"""Smoke test of benchmarks/fedmedheter_experiments.py --quick (seconds, not minutes)."""

import importlib.util
import json
import math
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fedmedheter_experiments.py"


def _load():
    spec = importlib.util.spec_from_file_location("fedmedheter_experiments", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
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
        assert 0.0 <= agg[method]["accuracy_mean"] <= 1.0
        assert len(res["pima"]["runs"][method]) == 2
    # every switched-on component has its ablation row
    assert any(k.startswith("fedmedheter - ") for k in agg)
    # bytes are the engine's measured counts: FedAvg uploads something every round
    assert agg["fedavg"]["bytes_per_round"] > 0
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
