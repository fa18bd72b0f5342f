"""Smoke tests: every example runs (with small settings) and prints its table."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: small settings per example, and a line the output must contain
SMOKE = {
    "ckks_overhead.py": (["--rounds", "3"], "bytes up/round"),
    "gradient_leakage_vs_secagg.py": (["--iterations", "20", "--restarts", "1", "--clinics", "10"],
                                      "sum of 10 clinics"),
    "dp_sweep_membership.py": (["--rounds", "2", "--noise", "2"], "dp-central"),
    "model_inversion_vs_dp.py": (["--rounds", "2", "--noise", "2", "--targets", "8"], "dp-central"),
}


def test_the_attack_versus_defense_examples_exist():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert len(scripts) >= 4, scripts
    assert set(SMOKE) <= set(scripts), sorted(set(SMOKE) - set(scripts))


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_example_runs(name, capsys, monkeypatch):
    args, expected = SMOKE[name]
    monkeypatch.setattr(sys, "argv", [name, *args])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert expected in out, out
