"""Gradient leakage attacks on what a curious server observes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.datasets import load_digits

from attacks import AnalyticFirstLayer, TabularInversion, get_attack, infer_label_count
from evaluation.scoring import matched_psnr, score_reconstruction
from securefed import FedAvg, ModelSpec, run_federated
from securefed.arrays import ClientArrays, FederatedArrays
from securefed.data import pima_federation
from securefed.dp import LocalDP
from securefed.errors import ConfigurationError
from securefed.observation import PriorKnowledge, observe

PIMA = pima_federation(seed=0)
PIMA_X, PIMA_Y = PIMA.pooled()
PIMA_PRIOR = PriorKnowledge.from_public_data(PIMA.X_test, PIMA.y_test, feature_names=PIMA.feature_names)


def _federation(X, y, *, rows: int, clients: int, seed: int, X_test=None, y_test=None, names=None):
    """``clients`` hospitals of ``rows`` records each, drawn without replacement."""
    idx = np.random.default_rng(seed).permutation(len(X))[: rows * clients].reshape(clients, rows)
    cl = tuple(ClientArrays(i, f"h{i}", X[p], y[p]) for i, p in enumerate(idx))
    return FederatedArrays(cl, X if X_test is None else X_test, y if y_test is None else y_test,
                           tuple(names or (f"x{j}" for j in range(X.shape[1]))))


def _pima(rows: int, clients: int = 3, seed: int = 0) -> FederatedArrays:
    return _federation(PIMA_X, PIMA_Y, rows=rows, clients=clients, seed=seed, X_test=PIMA.X_test,
                       y_test=PIMA.y_test, names=PIMA.feature_names)


def _fedsgd(**kw) -> FedAvg:
    return FedAvg(learning_rate=0.1, local_epochs=1, batch_size=None, **kw)


def _mean_scores(rec, fed, prior, seed=1):
    scores = [score_reconstruction(rec.for_sender(c.client_id).X, rec.for_sender(c.client_id).y,
                                   c.X, c.y, prior=prior, rng=np.random.default_rng(seed))
              for c in fed.clients]
    return (float(np.mean([s.attack.mean_feature_accuracy for s in scores])),
            float(np.mean([s.baseline.mean_feature_accuracy for s in scores])),
            float(np.mean([s.attack.label_accuracy for s in scores])))


# ----------------------------------------------------------------- analytic
@pytest.mark.parametrize("spec", [ModelSpec("mlp", n_features=7, hidden=(16,)),
                                  ModelSpec("logreg", n_features=7)])
def test_analytic_recovers_single_row_within_1e4(spec):
    fed = _pima(rows=1, clients=4)
    run = run_federated(fed, strategy=_fedsgd(), model=spec, rounds=1, seed=3)
    rec = AnalyticFirstLayer().run(observe(run, adversary="server"), PIMA_PRIOR,
                                   rng=np.random.default_rng(0))
    for c in fed.clients:
        r = rec.for_sender(c.client_id)
        assert np.abs(r.X[0] - c.X[0]).max() < 1e-4
        assert r.y[0] == c.y[0]


def test_analytic_isolates_some_rows_of_a_batch_through_a_wide_layer():
    fed = _pima(rows=4, clients=2, seed=5)
    spec = ModelSpec("mlp", n_features=7, hidden=(128,))
    run = run_federated(fed, strategy=_fedsgd(), model=spec, rounds=1, seed=0)
    rec = AnalyticFirstLayer().run(observe(run, adversary="server"), PIMA_PRIOR,
                                   rng=np.random.default_rng(0))
    exact = 0
    for c in fed.clients:
        r = rec.for_sender(c.client_id)
        err = np.abs(r.X[:, None, :] - c.X[None]).max(-1).min(0)  # best candidate per true row
        exact += int((err < 1e-3).sum())
    assert exact >= 2  # units that a single record activates give it exactly
    # ... but not a mixture of records: with a 1-unit model a batch gives no exact row
    run1 = run_federated(fed, strategy=_fedsgd(), model=ModelSpec("logreg", n_features=7), rounds=1, seed=0)
    rec1 = AnalyticFirstLayer().run(observe(run1, adversary="server"), PIMA_PRIOR, rng=np.random.default_rng(0))
    for c in fed.clients:
        err = np.abs(rec1.for_sender(c.client_id).X[:, None, :] - c.X[None]).max(-1).min()
        assert err > 1e-2


def test_label_count_from_output_bias():
    fed = _pima(rows=8, clients=6, seed=2)
    spec = ModelSpec("mlp", n_features=7, hidden=(16,))
    run = run_federated(fed, strategy=_fedsgd(), model=spec, rounds=1, seed=0)
    obs = observe(run, adversary="server")
    errors = [abs(infer_label_count(u, spec=spec, config=u.config, n_rows=8, prior=PIMA_PRIOR,
                                    rng=np.random.default_rng(0)) - fed.clients[u.sender].y.sum())
              for u in obs.select(source="client")]
    assert np.mean(errors) <= 0.5


# ----------------------------------------------------------------- optimisation
SPEC = ModelSpec("mlp", n_features=7, hidden=(128,))
FAST = dict(restarts=6, iterations=200)


def test_optimisation_beats_marginal_baseline_and_degrades_with_batch_size():
    acc = {}
    for b in (1, 2, 4, 8):
        fed = _pima(rows=b, clients=4, seed=b)
        run = run_federated(fed, strategy=_fedsgd(), model=SPEC, rounds=1, seed=0)
        attack = TabularInversion(restarts=8, iterations=150 if b <= 2 else 300)
        rec = attack.run(observe(run, adversary="server"), PIMA_PRIOR, rng=np.random.default_rng(0))
        a, base, lab = _mean_scores(rec, fed, PIMA_PRIOR)
        acc[b] = a
        assert a >= base + 0.08, (b, a, base)
        assert lab >= 0.7
    assert acc[1] > 0.95
    assert acc[1] >= acc[4] >= acc[8]
    assert acc[1] - acc[8] >= 0.2


def test_optimisation_on_multi_step_fedavg_updates():
    fed = _pima(rows=4, clients=2, seed=11)
    strategy = FedAvg(learning_rate=0.05, local_epochs=2, batch_size=2)
    run = run_federated(fed, strategy=strategy, model=SPEC, rounds=1, seed=0)
    obs = observe(run, adversary="server")
    rec = TabularInversion(**FAST).run(obs, PIMA_PRIOR, rng=np.random.default_rng(0))
    a, base, _ = _mean_scores(rec, fed, PIMA_PRIOR)
    assert a >= base + 0.1, (a, base)
    # an attacker that guesses the local schedule wrongly (one full-batch step) does worse
    wrong = dataclasses.replace(PIMA_PRIOR, local_config=dataclasses.replace(
        obs.updates[0].config, local_epochs=1, batch_size=None))
    rec_w = TabularInversion(**FAST).run(obs, wrong, rng=np.random.default_rng(0))
    a_w, _, _ = _mean_scores(rec_w, fed, PIMA_PRIOR)
    assert a_w < a


def test_noise_on_updates_degrades_the_optimisation_attack():
    # a loose clipping bound (1.0; these updates have norms ~0.2) leaves only the Gaussian noise,
    # of norm sigma * clip_norm * sqrt(1153 parameters): ~0, ~1x and ~8x the update's norm
    fed = _pima(rows=2, clients=3, seed=4)
    acc = []
    for sigma in (0.0, 0.005, 0.05):
        # reproducible noise: a deterministic test of the attack, not of the noise's secrecy
        strategy = _fedsgd() if sigma == 0 else LocalDP(
            _fedsgd(), clip_norm=1.0, noise_multiplier=sigma, num_clients=3,
            reproducible_noise=True)
        run = run_federated(fed, strategy=strategy, model=SPEC, rounds=1, seed=0)
        # local DP weighs every client 1, so the record count is no longer observed: the
        # attacker states its guess
        rec = TabularInversion(n_rows=2, restarts=6, iterations=150).run(
            observe(run, adversary="server"), PIMA_PRIOR, rng=np.random.default_rng(0))
        a, base, _ = _mean_scores(rec, fed, PIMA_PRIOR)
        acc.append(a)
    assert acc[0] > acc[1] > acc[2], acc
    assert acc[0] > 0.85
    assert acc[2] <= base + 0.15, (acc, base)  # heavy noise: near the marginal guess


def _hide_individual_updates(run):
    """The same run as a secure channel would record it: opaque messages, revealed mean only."""
    rounds = tuple(dataclasses.replace(
        t, channel="secagg",
        received=tuple(dataclasses.replace(m, stage="masked-input",
                                           content={"masked": np.frombuffer(np.random.default_rng(0).bytes(8 * len(t.global_params)), np.uint64)})
                       for m in t.received))
        for t in run.transcript)
    return dataclasses.replace(run, channel="secagg", transcript=rounds)


def test_secure_channel_gives_no_per_client_signal():
    fed = _pima(rows=2, clients=4, seed=6)
    run = run_federated(fed, strategy=_fedsgd(), model=SPEC, rounds=1, seed=0)
    plain = observe(run, adversary="server")
    secure = observe(_hide_individual_updates(run), adversary="server")
    assert plain.per_client and not secure.per_client
    assert not secure.select(source="client") and len(secure.select(source="aggregate")) == 1
    with pytest.raises(ConfigurationError):
        TabularInversion(target="clients").run(secure, PIMA_PRIOR, rng=np.random.default_rng(0))
    # per client: 2 records behind each update
    a_plain, base, _ = _mean_scores(TabularInversion(**FAST).run(plain, PIMA_PRIOR, rng=np.random.default_rng(0)),
                                    fed, PIMA_PRIOR)
    # the aggregate mixes all 8 records: the attacker can only try to invert a batch of 8
    rec = TabularInversion(n_rows=8, **FAST).run(secure, PIMA_PRIOR, rng=np.random.default_rng(0))
    assert rec.items[0].source == "aggregate"
    Xall, yall = fed.pooled()
    agg = score_reconstruction(rec.items[0].X, rec.items[0].y, Xall, yall, prior=PIMA_PRIOR,
                               rng=np.random.default_rng(1))
    assert a_plain >= agg.attack.mean_feature_accuracy + 0.2
    # same scale as a batch of 8 rows from a single client (see the batch-size test): no exact rows
    assert agg.attack.exact_row_rate <= 0.25


def test_lbfgs_variant_recovers_a_single_record():
    fed = _pima(rows=1, clients=2, seed=12)
    run = run_federated(fed, strategy=_fedsgd(), model=SPEC, rounds=1, seed=0)
    rec = TabularInversion(optimizer="lbfgs", step_size=1.0, restarts=4, iterations=100).run(
        observe(run, adversary="server"), PIMA_PRIOR, rng=np.random.default_rng(0))
    a, base, _ = _mean_scores(rec, fed, PIMA_PRIOR)
    assert a >= base + 0.4, (a, base)


def test_registry_and_bad_settings():
    assert isinstance(get_attack("tabular-inversion", restarts=2), TabularInversion)
    with pytest.raises(ConfigurationError, match="valid"):
        get_attack("no-such-attack")
    with pytest.raises(ConfigurationError, match="distance"):
        TabularInversion(distance="manhattan")
    with pytest.raises(TypeError):
        TabularInversion(8)  # keyword-only settings


# ----------------------------------------------------------------- images
def test_inversion_on_8x8_digits_shows_the_digit():
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = (digits.target >= 5).astype(np.float32)
    prior = PriorKnowledge.from_public_data(X[1000:], y[1000:])
    fed = _federation(X[:1000], y[:1000], rows=1, clients=2, seed=0, X_test=X[1000:], y_test=y[1000:])
    spec = ModelSpec("mlp", n_features=64, hidden=(32,))
    run = run_federated(fed, strategy=_fedsgd(), model=spec, rounds=1, seed=0)
    obs = observe(run, adversary="server")
    rec = TabularInversion(restarts=4, iterations=300).run(obs, prior, rng=np.random.default_rng(0))
    base_img = prior.marginals.mean
    for c in fed.clients:
        r = rec.for_sender(c.client_id)
        p_att = matched_psnr(r.X, c.X, data_range=1.0)[0]
        p_base = matched_psnr(base_img[None], c.X, data_range=1.0)[0]
        assert p_att > p_base + 10.0, (p_att, p_base)


# ----------------------------------------------------------------- mixed categorical + continuous
def _mixed_records(n: int, seed: int):
    """3 standardised continuous features and 2 one-hot categorical ones (3 and 4 levels)."""
    rng = np.random.default_rng(seed)
    cont = rng.normal(size=(n, 3))
    a = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    b = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1])
    X = np.hstack([cont[:, :1], np.eye(3)[a], cont[:, 1:], np.eye(4)[b]]).astype(np.float32)
    logit = 1.2 * cont[:, 0] - 0.8 * cont[:, 2] + 0.9 * (a == 2) - 0.7 * (b == 0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return X, y


MIXED_CATEGORICAL = {"site": [1, 2, 3], "stage": [6, 7, 8, 9]}


def test_optimisation_on_mixed_categorical_and_continuous_records():
    X, y = _mixed_records(600, seed=0)
    prior = PriorKnowledge.from_public_data(X[300:], y[300:], categorical=MIXED_CATEGORICAL)
    assert [f.kind for f in prior.features] == ["continuous", "categorical", "continuous",
                                                "continuous", "categorical"]
    spec = ModelSpec("mlp", n_features=10, hidden=(128,))
    for rows in (1, 4):
        fed = _federation(X[:300], y[:300], rows=rows, clients=3, seed=rows, X_test=X[300:], y_test=y[300:])
        run = run_federated(fed, strategy=_fedsgd(), model=spec, rounds=1, seed=0)
        rec = TabularInversion(restarts=8, iterations=300).run(observe(run, adversary="server"),
                                                               prior, rng=np.random.default_rng(0))
        for c in fed.clients:
            r = rec.for_sender(c.client_id)
            assert np.allclose(r.X[:, 1:4].sum(1), 1) and set(np.unique(r.X[:, 1:4])) <= {0.0, 1.0}
        scores = [score_reconstruction(rec.for_sender(c.client_id).X, rec.for_sender(c.client_id).y,
                                       c.X, c.y, prior=prior, rng=np.random.default_rng(1))
                  for c in fed.clients]
        cat = np.mean([[s.attack.feature_accuracy[k] for k in MIXED_CATEGORICAL] for s in scores])
        cat_base = np.mean([[s.baseline.feature_accuracy[k] for k in MIXED_CATEGORICAL] for s in scores])
        gain = np.mean([s.gain for s in scores])
        if rows == 1:
            assert all(s.attack.exact_row_rate == 1.0 for s in scores)
        assert cat >= cat_base + 0.15, (rows, cat, cat_base)
        assert gain >= 0.15, (rows, gain)


@pytest.mark.parametrize("make_channel", ["secagg", "ckks"])
def test_real_secure_channels_reveal_only_the_aggregate(make_channel):
    from securefed.he import CKKSChannel
    from securefed.secagg import SecAggChannel

    channel = SecAggChannel() if make_channel == "secagg" else CKKSChannel()
    fed = _pima(rows=1, clients=4, seed=9)
    plain_run = run_federated(fed, strategy=_fedsgd(), model=SPEC, rounds=1, seed=0)
    run = run_federated(fed, strategy=_fedsgd(), model=SPEC, rounds=1, seed=0, channel=channel)
    obs = observe(run, adversary="server")
    assert obs.channel == make_channel and not obs.per_client
    assert obs.select(source="client") == ()
    agg = obs.select(source="aggregate")[0]
    plain_agg = observe(plain_run, adversary="server").select(source="aggregate")[0]
    # CKKS reveals the sum rounded to a grid (its IND-CPA^D mitigation), secagg in fixed point
    np.testing.assert_allclose(agg.update, plain_agg.update, atol=1e-4 if make_channel == "secagg" else 1e-3)
    # the aggregate of 4 one-record clients is one FedSGD gradient of a batch of 4
    rec = TabularInversion(n_rows=4, restarts=8, iterations=300).run(obs, PIMA_PRIOR,
                                                                     rng=np.random.default_rng(0))
    Xall, yall = fed.pooled()
    s = score_reconstruction(rec.items[0].X, rec.items[0].y, Xall, yall, prior=PIMA_PRIOR,
                             rng=np.random.default_rng(1))
    assert s.gain >= 0.2, s
    # ... and no reconstruction is attributed to any client
    assert all(it.sender is None and it.source == "aggregate" for it in rec.items)


def test_optimisation_on_the_synthetic_ehr_schema_with_binary_indicators():
    from securefed.data.synthetic import synthetic_hospitals

    hosp = synthetic_hospitals(n_hospitals=3, patients_per_hospital=40, seed=2, test_size=300)
    data = hosp.prepare()
    prior = PriorKnowledge.from_schema(hosp.schema, data.X_test, data.y_test)
    kinds = {f.name: f.kind for f in prior.features}
    assert kinds["sex"] == "binary" and kinds["age"] == "continuous"
    X, y = data.pooled()
    spec = ModelSpec("mlp", n_features=data.num_features, hidden=(128,))
    fed = _federation(X, y, rows=2, clients=3, seed=0, X_test=data.X_test, y_test=data.y_test,
                      names=data.feature_names)
    run = run_federated(fed, strategy=_fedsgd(), model=spec, rounds=1, seed=0)
    rec = TabularInversion(restarts=6, iterations=200).run(observe(run, adversary="server"), prior,
                                                           rng=np.random.default_rng(0))
    binary = [f.name for f in prior.features if f.kind == "binary"]
    for c in fed.clients:
        r = rec.for_sender(c.client_id)
        assert set(np.unique(r.X[:, list(prior.binary_columns)])) <= {0.0, 1.0}
        s = score_reconstruction(r.X, r.y, c.X, c.y, prior=prior, rng=np.random.default_rng(1))
        assert s.attack.exact_row_rate == 1.0, s
        assert all(s.attack.feature_accuracy[k] == 1.0 for k in binary)
