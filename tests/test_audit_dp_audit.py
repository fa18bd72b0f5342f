"""The audit shows, for each DP defense, the accountant's epsilon beside a measured lower bound."""

import json

import dp_accounting
import pytest

from evaluation import AuditConfig, profile, run_audit, write_report
from evaluation.runner import load_results
from securefed.errors import ConfigurationError

DP = ("dp-central", "dp-local", "secagg+dp")


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpaudit")
    cfg = AuditConfig(algorithms=("fedavg",), defenses=("none", *DP), folds=2, rounds=3,
                      dp_audit_canaries=100)
    res = run_audit(cfg, out, progress=False, workers=1)
    files = write_report(res)
    return cfg, res, json.loads(files.json.read_text()), files


def test_one_dp_audit_per_dp_defense_with_the_defenses_own_settings(audited):
    cfg, res, summary, _ = audited
    rows = {r["defense"]: r for r in summary["dp_audit"]}
    assert set(rows) == set(DP)
    assert {d: rows[d]["mechanism"] for d in DP} == {
        "dp-central": "central", "dp-local": "local", "secagg+dp": "distributed"}
    for d in DP:
        r = rows[d]
        assert (r["clip_norm"], r["noise_multiplier"], r["rounds"], r["canaries"]) == (0.5, 1.0, 3, 100)
        assert r["epsilon_lower"] <= r["epsilon_upper"] and r["consistent"]
        assert r["guesses"] >= r["correct"] >= 0
        # the upper bound is the hospital-level epsilon the utility runs report for the same
        # mechanism and rounds (every hospital takes part in every round)
        cell = next(c for c in res.cells if c["defense"] == d and c["fold"] == 0)
        assert r["epsilon_upper"] == pytest.approx(cell["epsilon"], rel=1e-9)
        assert r["unit"] == "hospital"
    assert rows["dp-central"]["relation"] == "add/remove"
    assert rows["dp-local"]["relation"] == "replace-one"
    # independent reference for central DP: three Gaussian rounds, RDP accountant
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(1.0), 3)
    assert rows["dp-central"]["epsilon_upper"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_the_report_shows_both_bounds_and_resuming_reruns_nothing(audited):
    cfg, res, summary, files = audited
    md = files.markdown.read_text()
    assert "the accountant's epsilon beside a measured lower bound" in md
    for r in summary["dp_audit"]:
        assert r["upper_label"] in md
    again = run_audit(cfg, res.out_dir, progress=False, workers=1,
                      on_cell=lambda c, r: pytest.fail(f"reran {c.label}"))
    assert [c["cell_id"] for c in again.dp_audit_cells] == [c["cell_id"] for c in res.dp_audit_cells]
    assert load_results(res.out_dir).dp_audit_cells == res.dp_audit_cells


def test_dp_audit_settings_are_checked():
    with pytest.raises(ConfigurationError, match="dp_audit_canaries"):
        AuditConfig(algorithms=("fedavg",), defenses=("dp-central",), dp_audit_canaries=5)
    off = AuditConfig(algorithms=("fedavg",), defenses=("dp-central",), folds=2, rounds=1,
                      dp_audit_canaries=0)
    from evaluation.runner import plan_dp_audits

    assert plan_dp_audits(off) == []
    assert profile("quick").dp_audit_canaries == 0
    assert profile("default").dp_audit_canaries == 1000
