"""The threat scenarios of the default audit give the verdicts they exist to show.

The cells run here are those of ``profile("default")`` (same scenario parameters, seeds and
DP settings) for FedAvg, restricted to the threat/defense pairs the verdicts are about, so
the suite does not run the whole default audit; ``benchmarks/audit_speed.py`` runs it all.
"""

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from evaluation import profile, run_audit
from evaluation.runner import plan_threat_cells
from evaluation.threats import get_threat, threat_names
from evaluation.verdicts import threat_verdicts

WANTED = {
    "curious-server": ("none", "secagg"),
    "malicious-server": ("secagg", "dp-local", "secagg+dp"),
    "curious-peer": ("secagg",),
    "outsider-membership": ("none", "dp-central"),
}


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    base = profile("default")
    params = {t: {**dict(base.threat_params.get(t, {})), "defenses": list(d)}
              for t, d in WANTED.items()}
    cfg = dataclasses.replace(
        base, algorithms=("fedavg",), defenses=("none",), exclude=(), folds=2, rounds=2,
        algorithm_params={}, threats=tuple(WANTED), threat_algorithms=("fedavg",),
        threat_params=params)
    res = run_audit(cfg, tmp_path_factory.mktemp("threats"), progress=False, workers=1)
    rows = threat_verdicts(res.threat_cells)
    return {(r["threat"], r["defense"]): r for r in rows}, res


def test_the_five_scenarios_are_registered_and_state_their_threat_model():
    assert threat_names() == ("curious-server", "malicious-server", "curious-peer",
                              "outsider-membership", "outsider-attribute")
    for name in threat_names():
        t = get_threat(name)
        assert t.adversary and t.observes and t.knows and t.setting and t.defenses
    assert set(profile("default").threats) == set(threat_names())
    assert set(profile("quick").threats) == set(threat_names())


@pytest.mark.parametrize("threat,defense", [
    ("curious-server", "none"), ("malicious-server", "secagg"), ("curious-peer", "secagg"),
    ("outsider-membership", "none"),
])
def test_unprotected_or_wrongly_protected_settings_leak(verdicts, threat, defense):
    r = verdicts[0][(threat, defense)]
    assert r["leaks"] is True and r["ci_low"] > 0


@pytest.mark.parametrize("threat,defense", [
    ("curious-server", "secagg"), ("malicious-server", "dp-local"),
    ("malicious-server", "secagg+dp"), ("outsider-membership", "dp-central"),
])
def test_the_right_defense_stops_the_attack(verdicts, threat, defense):
    r = verdicts[0][(threat, defense)]
    assert r["leaks"] is False and r["ci_low"] <= 0


def test_the_settings_are_the_documented_ones(verdicts):
    rows, res = verdicts
    assert rows[("curious-server", "none")]["clinic_patients"] <= 8
    # the curious server recovers the clinic nearly exactly, against a baseline near 0.26
    r = rows[("curious-server", "none")]
    assert r["attack"] >= 0.9 and r["baseline"] < 0.4
    assert rows[("curious-peer", "secagg")]["participants"] == 2
    # malicious server through secure aggregation with >= 3 hospitals
    assert all(len(c["details"]["attack_note"]) > 0 for c in res.threat_cells
               if c["threat"] == "malicious-server")
    dp = rows[("outsider-membership", "dp-central")]
    assert dp["epsilon"] is not None and dp["epsilon"] <= 8.0 + 1e-6
    assert rows[("malicious-server", "dp-local")]["epsilon"] is not None


def test_verdict_rows_carry_the_required_fields_and_the_interval_is_a_t_interval(verdicts):
    rows, res = verdicts
    required = {"threat", "defense", "algorithm", "metric", "attack", "baseline", "gain",
                "ci_low", "ci_high", "leaks", "accuracy"}
    for r in rows.values():
        assert required <= set(r)
        assert isinstance(r["leaks"], bool)
    r = rows[("outsider-membership", "none")]
    g = np.asarray(r["per_replicate_gain"])
    lo, hi = stats.t.interval(0.95, len(g) - 1, loc=g.mean(), scale=stats.sem(g))
    assert r["ci_low"] == pytest.approx(lo) and r["ci_high"] == pytest.approx(hi)
    assert r["gain"] == pytest.approx(max(g.mean(), 0.0))


def test_membership_reports_low_fpr_rates_with_sample_sizes_and_the_exact_dp_bound(verdicts):
    rows, res = verdicts
    r = rows[("outsider-membership", "dp-central")]
    assert r["members"] == r["non_members"] > 0
    assert r["fpr_resolution"] == pytest.approx(1 / r["non_members"])
    # the bound for a patient in or out of a hospital: multiplier z/2 per round
    z, T = r["noise_multiplier"], next(c for c in res.threat_cells if c["threat"] ==
                                      "outsider-membership" and c["defense"] == "dp-central")[
        "details"]["rounds"]
    mu = 2 * math.sqrt(T) / z
    assert r["dp_advantage_bound"] == pytest.approx(2 * stats.norm.cdf(mu / 2) - 1, abs=1e-6)
    # non-members are the other half of the same pool as the members
    c = next(c for c in res.threat_cells if c["threat"] == "outsider-membership")
    assert abs(sum(c["details"]["is_member"]) * 2 - len(c["details"]["is_member"])) <= 1


def test_cells_are_keyed_by_the_code_that_produced_them(monkeypatch):
    import evaluation.runner as runner

    cfg = dataclasses.replace(profile("quick"), threats=("curious-peer",), threat_params={})
    before = [c.cell_id for c in plan_threat_cells(cfg)]
    monkeypatch.setattr(runner, "code_fingerprint", lambda: "0" * 16)
    after = [c.cell_id for c in plan_threat_cells(cfg)]
    assert len(before) == len(after) and not set(before) & set(after)
