"""The audit scores each hospital on its own patients with the model that hospital uses.

FedMedHeter's per-hospital accuracy must be that of its personalised models (its default
personalisation), Ditto's that of its personal models, local-only training's that of each
hospital's own model; each is checked against the engine (or the local-only runner) run
directly on the same fold, seed and hospitals.  The per-hospital seed-claim rows are checked
against a paired t-test computed here from the stored cells.
"""

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
from scipy import stats

from evaluation import AuditConfig, plan_cells, profile, run_audit, write_report
from evaluation.cv import stratified_hospital_folds
from evaluation.runner import audit_dataset
from securefed.federated import FedAvg, evaluate, run_federated
from securefed.federated.fedmedheter import FedMedHeter
from securefed.federated.local_only import run_local_only
from securefed.federated.personal import Ditto
from securefed.models import ModelSpec, set_flat_params

FOLDS, ROUNDS = 3, 4


def _config(algorithms, **kw):
    return AuditConfig(**{"algorithms": algorithms, "defenses": ("none",), "folds": FOLDS,
                          "rounds": ROUNDS, **kw})


def _own_held_out(fold):
    """The fold's data with each hospital's held-out rows as its own test patients, built
    here from ``test_hospital`` (not with the audit's helper)."""
    clients = []
    for i, c in enumerate(fold.data.clients):
        rows = np.flatnonzero(fold.test_hospital == i)
        clients.append(dataclasses.replace(c, X_test=fold.data.X_test[rows],
                                           y_test=fold.data.y_test[rows]))
    return dataclasses.replace(fold.data, clients=tuple(clients))


def _folds(cfg):
    data = audit_dataset(cfg)
    return stratified_hospital_folds(data, n_folds=cfg.folds, seed=cfg.seed), \
        ModelSpec(cfg.model, n_features=data.num_features, hidden=cfg.hidden)


def _accuracy(spec, params, X, y):
    net = spec.build(seed=0)
    set_flat_params(net, params)
    import torch

    with torch.no_grad():
        pred = (net(torch.as_tensor(X)).numpy() > 0).astype(np.float32)
    return float((pred == y).mean())


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    cfg = _config(("centralized", "fedavg", "fedmedheter", "ditto", "local-only"))
    out = tmp_path_factory.mktemp("audit") / "personal"
    res = run_audit(cfg, out, progress=False, workers=1)
    return cfg, res, write_report(res), out


def _cells(res, algorithm):
    return sorted((c for c in res.cells if c["algorithm"] == algorithm), key=lambda c: c["fold"])


def test_fedmedheter_per_hospital_accuracy_is_that_of_its_personalised_models(audited):
    cfg, res, _, _ = audited
    folds, spec = _folds(cfg)
    differs = 0
    for cell in _cells(res, "fedmedheter"):
        fold = folds[cell["fold"]]
        data = _own_held_out(fold)
        # the engine run directly: personalisation (its default) evaluated at every round
        direct = run_federated(data, strategy=FedMedHeter(), model=spec, rounds=ROUNDS,
                               seed=cfg.seed * 1000 + cell["fold"], record_transcript=False)
        per = direct.final.per_hospital
        assert all(m["personal"] == 1.0 for m in per.values())
        assert cell["per_hospital_accuracy"] == {h: m["accuracy"] for h, m in per.items()}
        assert set(cell["per_hospital_model"].values()) == {"personalised"}
        # the global model beside it, and the pooled metrics, are the global model's
        glob = {c.name: _accuracy(spec, direct.final_params, c.X_test, c.y_test)
                for c in data.clients}
        assert cell["global_per_hospital_accuracy"] == pytest.approx(glob, abs=1e-12)
        assert cell["metrics"]["accuracy"] == pytest.approx(
            _accuracy(spec, direct.final_params, fold.data.X_test, fold.data.y_test), abs=1e-6)
        differs += sum(abs(cell["per_hospital_accuracy"][h] - glob[h]) > 1e-6 for h in glob)
    # the personalised models are not the global one: the check above can tell them apart
    assert differs > 0


def test_ditto_and_local_only_run_through_the_audit_with_their_own_models(audited):
    cfg, res, _, _ = audited
    folds, spec = _folds(cfg)
    for cell in _cells(res, "ditto"):
        data = _own_held_out(folds[cell["fold"]])
        direct = run_federated(
            data, strategy=Ditto(ditto_lambda=1.0, learning_rate=cfg.learning_rate,
                                 local_epochs=cfg.local_epochs, batch_size=cfg.batch_size),
            model=spec, rounds=ROUNDS, seed=cfg.seed * 1000 + cell["fold"],
            record_transcript=False)
        assert cell["error"] is None
        assert cell["per_hospital_accuracy"] == {h: m["accuracy"]
                                                 for h, m in direct.final.per_hospital.items()}
        assert set(cell["per_hospital_model"].values()) == {"personalised"}
        # Ditto's global model is FedAvg's, bit for bit
        fedavg = next(c for c in _cells(res, "fedavg") if c["fold"] == cell["fold"])
        assert cell["global_per_hospital_accuracy"] == pytest.approx(
            fedavg["per_hospital_accuracy"], abs=1e-6)
        assert cell["metrics"] == fedavg["metrics"]
    for cell in _cells(res, "local-only"):
        data = _own_held_out(folds[cell["fold"]])
        direct = run_local_only(data, model=spec, rounds=ROUNDS,
                                seed=cfg.seed * 1000 + cell["fold"],
                                learning_rate=cfg.learning_rate, local_epochs=cfg.local_epochs,
                                batch_size=cfg.batch_size)
        assert cell["error"] is None and cell["bytes_up"] == 0
        assert cell["per_hospital_accuracy"] == {h: m["accuracy"]
                                                 for h, m in direct.final.per_hospital.items()}
        assert set(cell["per_hospital_model"].values()) == {"local"}
        assert "global_per_hospital_accuracy" not in cell
        assert cell["metrics"]["accuracy"] == direct.final.test_accuracy


def test_local_only_runs_without_defenses_only_and_the_quick_profile_leaves_both_out():
    cfg = _config(("ditto", "local-only"), defenses=("none", "secagg"))
    assert sorted({(c.algorithm, c.defense) for c in plan_cells(cfg)}) == [
        ("ditto", "none"), ("ditto", "secagg"), ("local-only", "none")]
    assert not {"ditto", "local-only"} & set(profile("quick").algorithms)
    default = profile("default")
    assert {"ditto", "local-only"} <= set(default.algorithms)
    assert {(c.algorithm, c.defense) for c in plan_cells(default)
            if c.algorithm in ("ditto", "local-only")} == {("ditto", "none"), ("local-only", "none")}


def test_summary_json_carries_mean_worst_and_every_hospital_personalised_or_global(audited):
    cfg, res, files, out = audited
    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["algorithm"], r["patients"], r["model"]): r for r in summary["per_hospital"]}
    for algo, model in (("fedmedheter", "personalised"), ("ditto", "personalised"),
                        ("local-only", "local"), ("fedavg", "global"), ("centralized", "global")):
        cells = _cells(res, algo)
        row = rows[(algo, "held-out folds", model)]
        names = list(cells[0]["per_hospital_accuracy"])
        per = {h: [c["per_hospital_accuracy"][h] for c in cells] for h in names}
        for h in names:
            assert row["accuracy"][h]["mean"] == pytest.approx(np.mean(per[h]))
            assert row["accuracy"][h]["std"] == pytest.approx(np.std(per[h], ddof=1))
        fold_means = [np.mean(list(c["per_hospital_accuracy"].values())) for c in cells]
        assert row["mean"]["mean"] == pytest.approx(np.mean(fold_means))
        worst = min(names, key=lambda h: np.mean(per[h]))
        assert row["worst"]["hospital"] == worst
        assert row["worst"]["mean"] == pytest.approx(np.mean(per[worst]))
    # the personalised algorithms also carry their global model on the same patients
    assert ("fedmedheter", "held-out folds", "global") in rows
    assert ("ditto", "held-out folds", "global") in rows
    assert ("local-only", "held-out folds", "global") not in rows
    md = (out / "report.md").read_text()
    assert "| fedmedheter | none | held-out folds | each hospital's personalised model |" in md
    assert "| fedmedheter | none | held-out folds | the global model |" in md


def _paired(res, a, b):
    fa = {c["fold"]: np.mean(list(c["per_hospital_accuracy"].values())) for c in _cells(res, a)}
    fb = {c["fold"]: np.mean(list(c["per_hospital_accuracy"].values())) for c in _cells(res, b)}
    folds = sorted(fa)
    diff = float(np.mean([fa[k] - fb[k] for k in folds]))
    p = float(stats.ttest_rel([fa[k] for k in folds], [fb[k] for k in folds]).pvalue)
    return np.mean(list(fa.values())), np.mean(list(fb.values())), diff, p


def test_seed_claims_are_also_measured_per_hospital(audited):
    cfg, res, files, out = audited
    claims = {c.claim: c for c in files.claims}
    rows = [c for c in files.claims if "measured per hospital" in c.claim]
    assert len(rows) == 2
    for other, significance in (("centralized", False), ("fedavg", True)):
        row = next(c for c in rows if ("FedAvg" in c.claim) == (other == "fedavg"))
        fmh, ref, diff, p = _paired(res, "fedmedheter", other)
        m = re.search(r" ([\d.]+)%, FedMedHeter \(personalised model\) ([\d.]+)%: difference "
                      r"([+-][\d.]+) points, paired p = ([\d.e+-]+) over (\d) folds", row.measured)
        assert m, row.measured
        assert float(m.group(1)) == pytest.approx(100 * ref, abs=0.05)
        assert float(m.group(2)) == pytest.approx(100 * fmh, abs=0.05)
        assert float(m.group(3)) == pytest.approx(100 * diff, abs=0.05)
        assert float(m.group(4)) == pytest.approx(p, rel=1e-2)
        assert int(m.group(5)) == FOLDS
        holds = diff > 0 and (p < 0.05 or not significance)
        assert row.verdict == ("holds" if holds else "does not hold")
        assert "personalised model" in row.method and "own held-out patients" in row.method
    # the pooled rows stay, and say that they score the global model
    pooled = claims["FedMedHeter beats FedAvg, independent-samples t-test p < 0.05"]
    assert "global models" in pooled.method


@pytest.fixture(scope="module")
def heart(tmp_path_factory):
    from securefed.data.heart import heart_federation_path

    dst = tmp_path_factory.mktemp("fed") / "heart"
    shutil.copytree(heart_federation_path().parent, dst)
    cfg = _config(("fedmedheter", "local-only"), folds=2, rounds=3,
                  data=str(dst / "federation.toml"))
    out = tmp_path_factory.mktemp("audit") / "heart"
    return cfg, run_audit(cfg, out, progress=False, workers=1)


def test_with_a_federation_file_each_hospital_is_also_scored_on_its_own_test_file(heart):
    cfg, res = heart
    folds, spec = _folds(cfg)
    for cell in res.cells:
        fold = folds[cell["fold"]]
        seed = cfg.seed * 1000 + cell["fold"]
        names = [c.name for c in fold.data.clients]
        if cell["algorithm"] == "fedmedheter":
            # evaluated directly on the hospitals' test files: the same personalised models
            direct = run_federated(fold.data, strategy=FedMedHeter(), model=spec, rounds=3,
                                   seed=seed, record_transcript=False)
            assert set(cell["own_test_model"].values()) == {"personalised"}
            glob = {c.name: _accuracy(spec, direct.final_params, c.X_test, c.y_test)
                    for c in fold.data.clients}
            assert cell["global_own_test_accuracy"] == pytest.approx(glob, abs=1e-6)
            # (one epoch of fine-tuning may not flip a prediction here; the models differ)
            net = spec.build(seed=0)
            set_flat_params(net, direct.final_params)
            for c in fold.data.clients:
                assert direct.final.per_hospital[c.name]["loss"] != pytest.approx(
                    evaluate(net, c.X_test, c.y_test)[0], abs=1e-6)
        else:
            direct = run_local_only(fold.data, model=spec, rounds=3, seed=seed,
                                    learning_rate=cfg.learning_rate,
                                    local_epochs=cfg.local_epochs, batch_size=cfg.batch_size)
            assert set(cell["own_test_model"].values()) == {"local"}
        assert cell["own_test_accuracy"] == {h: direct.final.per_hospital[h]["accuracy"]
                                             for h in names}
        # the held-out folds are scored too, on other patients
        assert set(cell["per_hospital_accuracy"]) == set(names)
        assert cell["per_hospital_accuracy"] != cell["own_test_accuracy"]


def test_fedavg_per_hospital_accuracy_is_its_global_model(audited):
    cfg, res, _, _ = audited
    folds, spec = _folds(cfg)
    for cell in _cells(res, "fedavg"):
        fold = folds[cell["fold"]]
        direct = run_federated(_own_held_out(fold), strategy=FedAvg(), model=spec, rounds=ROUNDS,
                               seed=cfg.seed * 1000 + cell["fold"], record_transcript=False)
        assert set(cell["per_hospital_model"].values()) == {"global"}
        assert "global_per_hospital_accuracy" not in cell
        assert cell["per_hospital_accuracy"] == pytest.approx(
            {c.name: _accuracy(spec, direct.final_params, c.X_test, c.y_test)
             for c in _own_held_out(fold).clients}, abs=1e-6)


def test_per_hospital_claims_say_what_is_missing(audited):
    from evaluation.claims import evaluate_claims
    from evaluation.summary import summarize

    cfg, res, _, _ = audited
    without = [c for c in res.cells if c["algorithm"] != "centralized"]
    rows = {c.claim: c for c in evaluate_claims(summarize(without))
            if "measured per hospital" in c.claim}
    central = next(c for k, c in rows.items() if "Centralised" in k)
    assert (central.verdict, central.measured) == ("not measured",
                                                   "not in this audit: centralized/none")
    fedavg = next(c for k, c in rows.items() if "FedAvg" in k)
    assert fedavg.verdict in ("holds", "does not hold")
    assert evaluate_claims(summarize([]))  # an empty audit still gives every row
    assert {c.verdict for c in evaluate_claims(summarize([]))
            if "measured per hospital" in c.claim} == {"not measured"}
