import math

import pytest

from evaluation import AuditConfig, audit_attack_names, get_audit_attack, run_audit


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    cfg = AuditConfig(algorithms=("fedavg",), defenses=("none", "secagg", "dp-central"),
                      attacks=("gradient-inversion", "model-inversion", "membership"),
                      folds=2, rounds=2, attack_folds=1,
                      attack_params={"gradient-inversion": {"iterations": 10, "restarts": 2},
                                     "model-inversion": {"targets": 10, "iterations": 10}})
    return run_audit(cfg, tmp_path_factory.mktemp("att"), progress=False).cells


def test_each_attack_states_its_threat_model():
    assert {"gradient-inversion", "model-inversion", "membership"} <= set(audit_attack_names())
    for name in audit_attack_names():
        a = get_audit_attack(name)
        assert "attacker" in a.threat_model and a.summary


def test_attacks_are_scored_beside_their_baseline_on_the_attacked_folds_only(cells):
    by = {(c["defense"], c["fold"]): c for c in cells}
    assert by[("none", 1)]["attacks"] == []  # attack_folds=1
    for defense in ("none", "secagg", "dp-central"):
        scores = {s["attack"]: s for s in by[(defense, 0)]["attacks"]}
        assert set(scores) == {"gradient-inversion", "model-inversion", "membership"}
        for s in scores.values():
            assert math.isclose(s["gain"], s["value"] - s["baseline"])
        assert scores["membership"]["baseline"] == 0.5


def test_the_server_attacks_what_the_channel_shows(cells):
    by = {(c["defense"], c["fold"]): c for c in cells}

    def detail(defense, attack, key):
        return next(s for s in by[(defense, 0)]["attacks"] if s["attack"] == attack)["details"][key]

    assert detail("none", "gradient-inversion", "scope") == "hospital 0's update"
    assert detail("secagg", "gradient-inversion", "scope") == "the revealed aggregate"
    assert detail("secagg", "gradient-inversion", "rows_behind_update") > detail(
        "none", "gradient-inversion", "rows_behind_update")
    assert detail("none", "membership", "dp_advantage_bound") is None
    # Kairouz, Oh and Viswanath 2015: TPR - FPR <= (e^eps - 1 + 2 delta) / (e^eps + 1)
    cell = by[("dp-central", 0)]
    eps, delta = cell["epsilon"], cell["defense_info"]["params"]["delta"]
    assert detail("dp-central", "membership", "dp_advantage_bound") == pytest.approx(
        (math.exp(eps) - 1 + 2 * delta) / (math.exp(eps) + 1), rel=1e-12)
