"""The quick audit end to end through the command line, and its report in a real browser."""

import csv
import json
import os
from pathlib import Path

import pytest

from evaluation.cli import main
from evaluation.render_check import find_chromium, screenshot, screenshot_stats


@pytest.fixture(scope="module")
def quick_audit(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "quick"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["audit", "--quick", "--quiet", "--out", str(out)])
    return rc, buf.getvalue(), out


def test_quick_audit_prints_a_summary_and_the_report_path_last(quick_audit):
    rc, stdout, out = quick_audit
    assert rc == 0
    lines = stdout.strip().splitlines()
    assert lines[-1] == str(out / "report.html")
    assert Path(lines[-1]).exists()
    # the verdicts come first, then the utility table
    assert lines[0].startswith("verdicts (leaks:")
    assert any(line.split()[:2] == ["curious-server/none/fedavg", "LEAKS"] for line in lines)
    header = next(line.split() for line in lines if line.startswith("algorithm"))
    assert header[:4] == ["algorithm", "defense", "folds", "accuracy"]
    assert any(line.startswith("fedavg") for line in lines)


def test_report_files_hold_the_measured_numbers(quick_audit):
    _, _, out = quick_audit
    summary = json.loads((out / "summary.json").read_text())
    cells = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    fedavg = [c["metrics"]["accuracy"] for c in cells if c.get("kind") != "threat"
              and c["algorithm"] == "fedavg" and c["defense"] == "none"]
    threats = [c for c in cells if c.get("kind") == "threat"]
    rows = summary["threats"]
    assert {r["threat"] for r in rows} == set(summary["config"]["threats"])
    for r in rows:
        assert {"threat", "defense", "algorithm", "metric", "attack", "baseline", "gain",
                "ci_low", "ci_high", "leaks", "accuracy"} <= set(r)
        mine = [c for c in threats if (c["threat"], c["defense"], c["algorithm"]) ==
                (r["threat"], r["defense"], r["algorithm"])]
        assert r["replicates"] == len(mine)
        assert r["attack"] == pytest.approx(sum(c["value"] for c in mine) / len(mine))
    group = next(g for g in summary["groups"]
                 if g["algorithm"] == "fedavg" and g["defense"] == "none")
    assert group["n"] == len(fedavg) == summary["config"]["folds"]
    assert group["accuracy"]["mean"] == pytest.approx(sum(fedavg) / len(fedavg))
    assert {c["verdict"] for c in summary["claims"]} <= {"holds", "does not hold", "not measured"}
    assert len(summary["claims"]) >= 8
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(summary["figures"]) >= 4
    assert "seed document" in html and "Findings" in html
    # the report leads with the verdict matrix: heat map and table before everything else
    assert html.index("Verdicts: which defense stops which attack") < html.index("Verdict matrix") \
        < html.index("Findings")
    assert summary["figures"][0]["name"] == "verdicts"
    for f in summary["figures"]:
        assert (out / f["png"]).stat().st_size > 1000
        assert (out / f["svg"]).read_text().lstrip().startswith("<?xml")
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["algorithm"] for r in rows} == {g["algorithm"] for g in summary["groups"]}
    md = (out / "report.md").read_text()
    assert "](figures/convergence.png)" in md


def test_rerunning_the_same_audit_resumes_and_bad_names_are_explained(quick_audit, capsys):
    _, _, out = quick_audit
    assert main(["audit", "--quick", "--quiet", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "report.html")
    assert main(["audit", "--quick", "--quiet", "--out", str(out), "--rounds", "3"]) == 2
    assert "holds the results of another audit" in capsys.readouterr().err
    assert main(["audit", "--quick", "--defenses", "nonee"]) == 2
    assert "unknown defense 'nonee'; valid: none, " in capsys.readouterr().err


def test_report_renders_in_headless_chromium(quick_audit, tmp_path):
    _, _, out = quick_audit
    if find_chromium() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is required on CI (apt-get install -y chromium)")
        pytest.skip("chromium is not installed on this machine")
    png = screenshot(out / "report.html", tmp_path / "shot.png")
    stats = screenshot_stats(png)
    assert not stats.blank, stats
    assert stats.ink > 0.05


def test_list_shows_every_registered_name(capsys):
    from defenses import defense_names
    from evaluation import algorithm_names, audit_attack_names

    assert main(["audit", "--list"]) == 0
    out = capsys.readouterr().out
    from evaluation.threats import threat_names

    for name in (*algorithm_names(), *defense_names(), *audit_attack_names(), *threat_names()):
        assert f"  {name} " in out
