"""Smoke test of benchmarks/personalisation.py --quick, and its statistics against scipy."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "personalisation.py"


def _load():
    spec = importlib.util.spec_from_file_location("personalisation_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_quick_main_stage(tmp_path):
    mod = _load()
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--out", str(tmp_path), "--quick", "--quiet", "--stages", "main"]) == 0
    finally:
        torch.set_num_threads(threads)
        mod.ROUNDS = 30
    res = json.loads((tmp_path / "results.json").read_text())
    runs, rows = res["main"]["runs"], res["main"]["rows"]
    assert {"centralized", "fedavg", "fedprox", "local-only", "ditto", mod.PERSONAL} <= set(runs)
    for method, rs in runs.items():
        assert len(rs) == 2
        for r in rs:  # mean and worst are those of the per-hospital accuracies
            accs = r["accuracy"]
            assert set(accs) == {"hospital-0", "hospital-1", "hospital-2"}
            assert r["mean"] == pytest.approx(np.mean(list(accs.values())))
            assert r["worst"] == min(accs.values()) == accs[r["worst_hospital"]]
        assert rows[method]["mean"] == pytest.approx(np.mean([r["mean"] for r in rs]))
    assert all(r["personal"] for r in runs[mod.PERSONAL])
    assert not any(r["personal"] for r in runs["fedavg"])
    w = res["main"]["worst_vs_local"]
    for h, a, lo, r, rl in zip(w["worst_hospitals"], w["accuracy"], w["local_only"],
                               runs[mod.PERSONAL], runs["local-only"], strict=True):
        assert a == r["accuracy"][h] and lo == rl["accuracy"][h]


def test_paired_is_scipys_paired_t_test():
    mod = _load()
    a, b = [0.8, 0.82, 0.79, 0.85], [0.78, 0.8, 0.8, 0.81]
    got = mod.paired(a, b)
    assert got["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert got["diff"] == pytest.approx(np.mean(np.subtract(a, b)))
