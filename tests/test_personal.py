"""Personalisation: personal models stay at the hospital, uploads are unchanged, each hospital
is evaluated with its own model on its own patients; Pima's per-hospital test patients."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from securefed import ConfigurationError, FedAvg, ModelSpec, run_federated
from securefed.data import Heterogeneity, load_pima, pima_federation, pima_hospitals
from securefed.data.heterogeneity import hold_out_hospital_rows
from securefed.data.pima import pima_hospital_tests
from securefed.federated import ClientArrays, FederatedArrays, StrategyWrapper
from securefed.federated.centralized import run_centralized
from securefed.federated.engine import evaluate_per_hospital
from securefed.federated.fedmedheter import FedMedHeter
from securefed.federated.local_only import run_local_only
from securefed.federated.personal import (
    Ditto,
    DittoPersonalisation,
    LocalFineTuning,
    PersonalHead,
    SelectedFineTuning,
    head_size,
    hospital_summary,
    personal_sgd,
)
from securefed.federated.round import seed_streams
from securefed.federated.types import LocalConfig
from securefed.models import get_flat_params, set_flat_params

ROOT = Path(__file__).resolve().parents[1]


def toy(n_clients=3, rows=40, d=4, seed=0, flip=2) -> FederatedArrays:
    """Hospitals with their own test rows; hospital ``flip`` labels by the opposite rule."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    clients = []
    for k in range(n_clients):
        X = rng.normal(size=(rows + 5 * k, d)).astype(np.float32)
        Xt = rng.normal(size=(30, d)).astype(np.float32)
        sign = -1.0 if k == flip else 1.0
        y = (sign * (X @ w) + 0.3 * rng.normal(size=len(X)) > 0).astype(np.float32)
        yt = (sign * (Xt @ w) > 0).astype(np.float32)
        clients.append(ClientArrays(k, f"h{k}", X, y, X_test=Xt, y_test=yt))
    Xp = rng.normal(size=(100, d)).astype(np.float32)
    return FederatedArrays(tuple(clients), Xp, (Xp @ w > 0).astype(np.float32),
                           tuple(f"x{i}" for i in range(d)))


@pytest.fixture(scope="module")
def data():
    return toy()


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _numpy_gd(v, X, y, *, lr, steps, lam=0.0, anchor=None):
    """Full-batch gradient descent on mean BCE (+ lam/2 ||v - anchor||^2), logistic regression,
    parameters laid out as [w..., b] (the reference for personal_sgd)."""
    v = np.asarray(v, dtype=np.float64).copy()
    X = X.astype(np.float64)
    for _ in range(steps):
        r = _sigmoid(X @ v[:-1] + v[-1]) - y
        g = np.concatenate([X.T @ r / len(y), [r.mean()]])
        if lam > 0:
            g = g + lam * (v - anchor)
        v = v - lr * g
    return v


def test_personal_sgd_matches_gradient_descent_in_numpy(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    net = spec.build(seed=1)
    c = data.clients[0]
    start = np.linspace(-0.5, 0.5, 5)
    anchor = np.linspace(0.3, -0.3, 5)
    got = personal_sgd(net, c, start, anchor=anchor, lam=0.5, learning_rate=0.2, epochs=7,
                       batch_size=None, rng=np.random.default_rng(0))
    ref = _numpy_gd(start, c.X, c.y, lr=0.2, steps=7, lam=0.5, anchor=anchor)
    np.testing.assert_allclose(got, ref, atol=2e-6)
    # fine-tuning is the same computation anchored at the global model, lambda 0
    ft = LocalFineTuning(epochs=3, learning_rate=0.4, batch_size=None)
    own = ft.params(net, c, start, rng=np.random.default_rng(0), client_state={})
    np.testing.assert_allclose(own, _numpy_gd(start, c.X, c.y, lr=0.4, steps=3), atol=2e-6)


def test_selected_fine_tuning_picks_the_epochs_with_the_lowest_local_validation_loss():
    """The choice and the final model against a numpy recomputation (full batch, logreg)."""
    data = toy(seed=7, rows=60)
    spec = ModelSpec("logreg", n_features=data.num_features)
    ft = SelectedFineTuning(epoch_grid=(0, 2, 10, 40), learning_rate=0.5, batch_size=None)
    # the "global" model: fitted to the two hospitals that agree
    agree = data.clients[:2]
    w = _numpy_gd(np.zeros(5), np.concatenate([c.X for c in agree]),
                  np.concatenate([c.y for c in agree]), lr=0.5, steps=300)
    chosen = {}
    for c in data.clients:
        # the same stratified split the method draws first from its generator
        rng = np.random.default_rng(11)
        held = np.zeros(c.num_examples, dtype=bool)
        for cls in (0.0, 1.0):
            idx = np.flatnonzero(c.y == cls)
            held[rng.choice(idx, size=int(round(0.25 * len(idx))), replace=False)] = True
        losses = []
        for e in (0, 2, 10, 40):
            v = _numpy_gd(w, c.X[~held], c.y[~held], lr=0.5, steps=e)
            p = _sigmoid(c.X[held] @ v[:-1] + v[-1])
            yv = c.y[held]
            losses.append(-np.mean(yv * np.log(p) + (1 - yv) * np.log(1 - p)))
        best = (0, 2, 10, 40)[int(np.argmin(losses))]
        state: dict = {}
        own = ft.params(spec.build(), c, w, rng=np.random.default_rng(11), client_state=state)
        assert state["finetune_epochs"] == best
        np.testing.assert_allclose(own, _numpy_gd(w, c.X, c.y, lr=0.5, steps=best), atol=5e-6)
        chosen[c.name] = best
    # the hospital with the opposite convention adapts further than the others (not vacuous)
    assert chosen["h2"] > max(chosen["h0"], chosen["h1"])
    with pytest.raises(ConfigurationError, match="epoch_grid must be increasing non-negative"):
        SelectedFineTuning(epoch_grid=(5, 1))


def test_ditto_step_keeps_its_own_model_in_client_state(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    net = spec.build(seed=0)
    c = data.clients[1]
    p = DittoPersonalisation(lam=1.0, epochs=2, learning_rate=0.3)
    state: dict = {}
    cfg = LocalConfig(learning_rate=0.1, local_epochs=1, batch_size=None)
    assert p.params(net, c, np.zeros(5), rng=np.random.default_rng(0), client_state=state) is None
    w1, w2 = np.full(5, 0.1), np.full(5, -0.2)
    p.step(net, c, w1, cfg, rng=np.random.default_rng(0), client_state=state)
    v1 = _numpy_gd(w1, c.X, c.y, lr=0.3, steps=2, lam=1.0, anchor=w1)  # starts at w1
    np.testing.assert_allclose(state["ditto_personal"], v1, atol=2e-6)
    p.step(net, c, w2, cfg, rng=np.random.default_rng(0), client_state=state)
    v2 = _numpy_gd(v1, c.X, c.y, lr=0.3, steps=2, lam=1.0, anchor=w2)  # continues from v1
    np.testing.assert_allclose(p.params(net, c, w2, rng=None, client_state=state), v2, atol=4e-6)
    assert isinstance(state["ditto_personal"], np.ndarray)  # a Flower node can save it


@pytest.mark.parametrize("method", ["finetune", "ditto"])
def test_personalisation_leaves_every_upload_unchanged(data, method):
    spec = ModelSpec("mlp", n_features=data.num_features)
    kw = dict(compression=None, personal_epochs=2)
    a = run_federated(data, strategy=FedMedHeter(personalisation=None, **kw), model=spec,
                      rounds=3, seed=4)
    b = run_federated(data, strategy=FedMedHeter(personalisation=method, **kw), model=spec,
                      rounds=3, seed=4)
    np.testing.assert_array_equal(a.final_params, b.final_params)
    for ta, tb in zip(a.transcript, b.transcript, strict=True):
        for ma, mb in zip(ta.received, tb.received, strict=True):
            np.testing.assert_array_equal(ma.content["update"], mb.content["update"])
            assert ma.content["weight"] == mb.content["weight"]
    assert all(m["personal"] == 0.0 for m in a.final.per_hospital.values())
    assert all(m["personal"] == 1.0 for m in b.final.per_hospital.values())
    # the pooled test set still sees the global model
    assert a.final.test_accuracy == b.final.test_accuracy
    # and the personal models differ from the global one where it matters (not vacuous)
    assert b.final.per_hospital["h2"]["accuracy"] > a.final.per_hospital["h2"]["accuracy"]


def test_ditto_baseline_uploads_are_fedavg(data):
    spec = ModelSpec("mlp", n_features=data.num_features)
    a = run_federated(data, strategy=FedAvg(learning_rate=0.2), model=spec, rounds=3, seed=1)
    b = run_federated(data, strategy=Ditto(learning_rate=0.2, ditto_lambda=0.1), model=spec,
                      rounds=3, seed=1)
    np.testing.assert_array_equal(a.final_params, b.final_params)
    assert b.settings["strategy"]["personalisation"] == {
        "name": "ditto", "lambda": 0.1, "epochs": 1, "learning_rate": 0.2}
    assert {m["personal"] for m in b.final.per_hospital.values()} == {1.0}


def test_engine_evaluates_the_personal_parameters_a_strategy_gives():
    """A strategy that gives hospital h1 fixed parameters: h1 is scored with them, the others
    with the global model; both checked against scikit-learn."""
    data = toy(seed=3)
    spec = ModelSpec("logreg", n_features=data.num_features)
    own = np.array([0.5, -1.0, 0.25, 2.0, -0.1])

    class Fixed(FedAvg):
        def personal_params(self, model, client, global_params, *, rng, client_state):
            return own if client.name == "h1" else None

    res = run_federated(data, strategy=StrategyWrapper(Fixed()), model=spec, rounds=2, seed=0)
    per = res.final.per_hospital
    for c in data.clients:
        p = own if c.name == "h1" else res.final_params
        logits = c.X_test @ p[:-1] + p[-1]
        assert per[c.name]["accuracy"] == pytest.approx(accuracy_score(c.y_test, logits > 0))
        assert per[c.name]["auc"] == pytest.approx(roc_auc_score(c.y_test, logits), abs=1e-6)
        assert per[c.name]["personal"] == float(c.name == "h1")


def test_evaluate_per_hospital_restores_the_global_model(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    net = spec.build(seed=0)
    before = get_flat_params(net)

    def scratch(c):
        set_flat_params(net, np.full(5, 3.0))  # a personal rule may use the net as scratch
        return np.full(5, 1.0)

    out = evaluate_per_hospital(net, data, personal=scratch)
    np.testing.assert_array_equal(get_flat_params(net), before)
    assert set(out) == {"h0", "h1", "h2"}


def test_fedper_keeps_the_head_at_home(data):
    spec = ModelSpec("mlp", n_features=data.num_features, hidden=(8,))
    h = head_size(spec.build())
    assert h == 9
    s = FedMedHeter(personalisation="fedper", compression=None)
    res = run_federated(data, strategy=s, model=spec, rounds=3, seed=2)
    init = get_flat_params(spec.build(seed=seed_streams(2, 3).init_seed))
    for tr in res.transcript:
        for m in tr.received:
            assert np.all(m.content["update"][-h:] == 0.0)  # nothing of a head is uploaded
        np.testing.assert_array_equal(tr.global_params[-h:], init[-h:])
    assert {m["personal"] for m in res.final.per_hospital.values()} == {1.0}
    # the personal model is the global body with the hospital's own head
    state: dict = {}
    PersonalHead().finish_local(
        replace(_dummy_result(len(init)), update=np.arange(len(init), dtype=float)),
        start=init, global_params=init, model=spec.build(), client_state=state)
    np.testing.assert_array_equal(state["personal_head"], init[-h:] + np.arange(len(init))[-h:])
    w = np.zeros(len(init))
    own = PersonalHead().params(spec.build(), data.clients[0], w, rng=None, client_state=state)
    np.testing.assert_array_equal(own[:-h], 0.0)
    np.testing.assert_array_equal(own[-h:], state["personal_head"])


def _dummy_result(dim):
    from securefed.federated.types import LocalResult

    return LocalResult(update=np.zeros(dim), num_examples=1, train_loss=0.0, initial_loss=0.0,
                       label_balance=0.5, steps=1)


def test_local_only_matches_numpy_gradient_descent(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    res = run_local_only(data, model=spec, rounds=4, seed=3, learning_rate=0.5, batch_size=None)
    init = get_flat_params(spec.build(seed=seed_streams(3, 3).init_seed))
    for c in data.clients:
        v = _numpy_gd(init, c.X, c.y, lr=0.5, steps=4)
        logits = c.X_test @ v[:-1] + v[-1]
        assert res.final.per_hospital[c.name]["accuracy"] == pytest.approx(
            accuracy_score(c.y_test, logits > 0))
    assert res.final_params.shape == (0,) and res.total_bytes_up() == 0


def test_centralised_training_is_evaluated_per_hospital(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    res = run_centralized(data, model=spec, rounds=2, seed=0)
    p = res.final_params
    for c in data.clients:
        acc = accuracy_score(c.y_test, (c.X_test @ p[:-1] + p[-1]) > 0)
        assert res.final.per_hospital[c.name]["accuracy"] == pytest.approx(acc)


def test_hospital_summary_mean_and_worst(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    res = run_federated(data, strategy=FedAvg(), model=spec, rounds=2, seed=0)
    s = hospital_summary(res)
    accs = {h: m["accuracy"] for h, m in res.final.per_hospital.items()}
    assert s.mean_accuracy == pytest.approx(np.mean(list(accs.values())))
    assert s.worst_hospital == min(accs, key=accs.get) and s.worst_accuracy == min(accs.values())
    bare = replace(data, clients=tuple(replace(c, X_test=None, y_test=None) for c in data.clients))
    assert hospital_summary(run_federated(bare, strategy=FedAvg(), model=spec, rounds=1)) is None


def test_personalisation_options_are_checked():
    with pytest.raises(ConfigurationError, match="personalisation must be None or one of"):
        FedMedHeter(personalisation="maml")
    with pytest.raises(ConfigurationError, match="personal epochs must be an integer >= 1, got 0"):
        FedMedHeter(personalisation="finetune", personal_epochs=0)
    with pytest.raises(ConfigurationError, match="ditto lambda must be a finite number >= 0"):
        Ditto(ditto_lambda=-1.0)
    assert FedMedHeter().without("personalisation").personalisation is None
    with pytest.raises(ConfigurationError, match="unknown component 'dp'"):
        FedMedHeter().without("dp")


def test_personal_hooks_pass_through_wrappers(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    res = run_federated(data, strategy=StrategyWrapper(FedMedHeter(personalisation="ditto")),
                        model=spec, rounds=2, seed=0)
    assert {m["personal"] for m in res.final.per_hospital.values()} == {1.0}


def test_default_personalisation_is_the_documented_selection():
    path = ROOT / "docs" / "results" / "personalisation" / "results.json"
    chosen = json.loads(path.read_text())["selection"]["choice"]["fedmedheter"]
    d = FedMedHeter()
    assert (None if d.personalisation is None else d.personalisation.name) == chosen["personalisation"]
    for key in ("personal_epochs", "personal_learning_rate", "personal_lambda"):
        if key in chosen:
            assert d._init_kwargs[key] == chosen[key], key


# ----------------------------------------------------------------------------- data
def test_pima_hospital_tests_share_out_pima_te_with_the_same_knobs():
    het = Heterogeneity(quantity_skew=0.5, covariate_shift=1.0, label_convention=1.0, format_shift=1.0)
    ds = pima_hospitals(seed=4, heterogeneity=het)
    tests = pima_hospital_tests(ds)
    te = load_pima("te")
    rows = np.concatenate([t.row_numbers for t in tests])
    assert sorted(rows.tolist()) == list(range(1, len(te) + 1))  # a partition of Pima.te
    sizes = np.array([t.size for t in tests])
    share = np.array(ds.sizes) / sum(ds.sizes)
    assert np.all(np.abs(sizes - share * len(te)) <= 20 + 1)  # proportional (floor 20)
    for k, (hosp, t) in enumerate(zip(ds.hospitals, tests, strict=True)):
        assert t.export_format is hosp.export_format
        raw = te.iloc[t.row_numbers - 1].reset_index(drop=True)
        harm = t.harmonised(ds.schema)
        np.testing.assert_allclose(harm["glu"].to_numpy(), raw["glu"].to_numpy(), rtol=1e-9)
        expected = (raw["glu"] >= 140).astype(int) if k == 2 else (raw["type"] == "Yes").astype(int)
        np.testing.assert_array_equal(harm["type"].to_numpy(), expected.to_numpy())
    # covariate shift: hospital 0 is older, 1 heavier, 2 has more pregnancies than Pima.te
    for k, feat in enumerate(("age", "bmi", "npreg")):
        assert te.iloc[tests[k].row_numbers - 1][feat].mean() > te[feat].mean()


def test_pima_federation_attaches_hospital_tests_without_changing_training():
    a = pima_federation(seed=2)
    b = pima_federation(seed=2, hospital_tests=False)
    ds = pima_hospitals(seed=2)
    std = ds.standardiser()
    from securefed.data.standardise import encode

    for ca, cb, t in zip(a.clients, b.clients, pima_hospital_tests(ds), strict=True):
        np.testing.assert_array_equal(ca.X, cb.X)
        assert cb.X_test is None
        X, y = encode(t.harmonised(ds.schema), ds.schema)
        np.testing.assert_allclose(ca.X_test, std.transform(X))
        np.testing.assert_array_equal(ca.y_test, y)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert sum(len(c.y_test) for c in a.clients) == 332


def test_hold_out_hospital_rows_is_a_stratified_partition(data):
    out = hold_out_hospital_rows(data, fraction=0.25, seed=0)
    for c, o in zip(data.clients, out.clients, strict=True):
        assert len(o.y) + len(o.y_test) == len(c.y)
        for cls in (0.0, 1.0):
            assert (o.y_test == cls).sum() == round(0.25 * (c.y == cls).sum())
        both = np.concatenate([o.X, o.X_test])
        assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, c.X.tolist()))
    with pytest.raises(ConfigurationError, match=r"fraction must be in \(0, 1\), got 1.5"):
        hold_out_hospital_rows(data, fraction=1.5, seed=0)

