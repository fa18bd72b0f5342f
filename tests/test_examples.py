"""Smoke tests: every example runs (with small settings) and prints its table."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: small settings per example, and a line the output must contain
SMOKE = {
    "ckks_overhead.py": (["--rounds", "3"], "bytes up/round"),
}


def test_every_example_has_a_smoke_test():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert set(scripts) == set(SMOKE), "every example needs smoke settings here"


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_example_runs(name, capsys, monkeypatch):
    args, expected = SMOKE[name]
    monkeypatch.setattr(sys, "argv", [name, *args])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert expected in out, out
