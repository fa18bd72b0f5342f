"""The attacks the threat scenarios use, each against an independent reference."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from attacks import (
    ImprintAttack,
    PeerSubtraction,
    TabularInversion,
    imprint_model,
    label_logit,
    prior_guess_rows,
    rank_row_estimate,
)
from evaluation.scoring import dp_advantage_bound, dp_advantage_bound_pld, score_reconstruction
from securefed import FedAvg, ModelSpec, SecAggChannel, run_federated
from securefed.arrays import ClientArrays, FederatedArrays
from securefed.data import pima_federation
from securefed.errors import ConfigurationError
from securefed.observation import Observation, PriorKnowledge, observe

DATA = pima_federation(seed=0)
PRIOR = PriorKnowledge.from_public_data(DATA.X_test, DATA.y_test, feature_names=DATA.feature_names,
                                        keep_reference=True)


def _one_clinic(n, seed):
    X, y = DATA.pooled()
    rows = np.random.default_rng(seed).permutation(len(X))[:n]
    return FederatedArrays((ClientArrays(0, "clinic", X[rows], y[rows]),), DATA.X_test,
                           DATA.y_test, DATA.feature_names), X[rows], y[rows]


@pytest.mark.parametrize("n", [1, 3, 5])
def test_rank_of_the_first_layer_gradient_counts_the_records_below_inputs_plus_one(n):
    fed, _, _ = _one_clinic(n, n)
    spec = ModelSpec("mlp", n_features=7, hidden=(32,))
    run = run_federated(fed, strategy=FedAvg(learning_rate=0.1, batch_size=None), model=spec,
                        rounds=1, seed=0)
    u = observe(run, adversary="server").select(source="client")[0]
    assert rank_row_estimate(u, spec) == (n, n)


def test_a_full_rank_gradient_hides_the_count():
    fed, _, _ = _one_clinic(20, 0)
    spec = ModelSpec("mlp", n_features=7, hidden=(32,))
    run = run_federated(fed, strategy=FedAvg(learning_rate=0.1, batch_size=None), model=spec,
                        rounds=1, seed=0)
    u = observe(run, adversary="server").select(source="client")[0]
    est, rank = rank_row_estimate(u, spec)
    assert est is None and rank == 8


def test_inversion_falls_back_to_the_prior_guess_on_noise_and_then_scores_its_baseline():
    fed, X, y = _one_clinic(4, 1)
    spec = ModelSpec("mlp", n_features=7, hidden=(64,))
    run = run_federated(fed, strategy=FedAvg(learning_rate=0.1, batch_size=None), model=spec,
                        rounds=1, seed=0)
    u = observe(run, adversary="server").select(source="client")[0]
    noisy = type(u)(**{**u.__dict__, "update": np.random.default_rng(0).normal(
        0, 50 * np.linalg.norm(u.update) / math.sqrt(u.update.size), u.update.size)})
    rec = TabularInversion(restarts=4, iterations=400).invert(noisy, prior=PRIOR, spec=spec,
                                                              rng=np.random.default_rng(0))
    assert rec.fallback and "fell back" in rec.note
    guess, _ = prior_guess_rows(PRIOR, 4)
    np.testing.assert_array_equal(rec.X, guess)
    s = score_reconstruction(rec.X, rec.y, X, y, prior=PRIOR, rng=np.random.default_rng(0))
    assert s.attack.mean_feature_accuracy == s.baseline.mean_feature_accuracy


def test_inversion_of_a_small_clinic_is_exact_and_stops_early():
    fed, X, y = _one_clinic(4, 2)
    spec = ModelSpec("mlp", n_features=7, hidden=(128,))
    run = run_federated(fed, strategy=FedAvg(learning_rate=0.1, batch_size=None), model=spec,
                        rounds=1, seed=0)
    rec = TabularInversion().run(observe(run, adversary="server"), PRIOR,
                                 rng=np.random.default_rng(0)).items[0]
    assert not rec.fallback and rec.loss < 1e-10
    steps = int(rec.note.split(" steps")[0].rsplit(" ", 1)[1])
    assert steps < 1500
    order = [int(np.argmin(((X - r) ** 2).sum(1))) for r in rec.X]
    np.testing.assert_allclose(rec.X, X[order], atol=1e-2)


def test_imprint_bins_give_back_the_federations_records_through_secure_aggregation():
    from securefed.data import pima_federation as pf

    data = pf(seed=0)
    X, y = data.pooled()
    m = imprint_model(PRIOR, bins=800, rng=np.random.default_rng(1))
    run = run_federated(data, strategy=FedAvg(learning_rate=0.1, batch_size=None), model=m.spec,
                        rounds=1, seed=0, initial_params=m.params, channel=SecAggChannel())
    obs = observe(run, adversary="server")
    assert not obs.per_client
    rec = ImprintAttack(model=m).read(obs.select(source="aggregate")[0].update, prior=PRIOR)
    # most returned rows are one patient, up to secure aggregation's fixed-point rounding
    # (0.05 standardised units, a fifth of the scoring tolerance), with its label
    dist = np.abs(rec.X[:, None, :] - X[None, :, :]).max(-1)
    nearest = dist.argmin(1)
    exact = dist.min(1) < 0.05
    assert exact.mean() > 0.8 and len(set(nearest[exact])) / len(X) > 0.5
    np.testing.assert_array_equal(rec.y[exact], y[nearest[exact]])


def test_imprint_reads_nothing_out_of_noise():
    m = imprint_model(PRIOR, bins=64, rng=np.random.default_rng(0))
    noise = np.random.default_rng(1).normal(size=m.params.size)
    rec = ImprintAttack(model=m).read(noise, prior=PRIOR)
    assert rec.fallback and len(rec.X) == 0


def test_a_peer_recovers_the_only_other_update_exactly():
    X, y = DATA.pooled()
    data = FederatedArrays((ClientArrays(0, "a", X[:60], y[:60]), ClientArrays(1, "b", X[60:150], y[60:150])),
                           DATA.X_test, DATA.y_test, DATA.feature_names)
    spec = ModelSpec("mlp", n_features=7, hidden=(8,))
    run = run_federated(data, strategy=FedAvg(learning_rate=0.1, batch_size=16), model=spec,
                        rounds=1, seed=0)
    msgs = {m.sender: m.content for m in run.transcript[0].received}
    obs = observe(run, adversary="client", client_id=0)
    est = PeerSubtraction().run(obs, own_vector=msgs[0]["update"], own_weight=60.0,
                                total_weight=150.0)
    np.testing.assert_allclose(est.update, msgs[1]["update"] / 90.0, rtol=1e-6, atol=1e-9)
    with pytest.raises(ConfigurationError, match="must exceed the own weight"):
        PeerSubtraction().run(obs, own_vector=msgs[0]["update"], own_weight=60.0, total_weight=60.0)


def test_logits_do_not_saturate_where_float32_probabilities_do():
    spec = ModelSpec("logreg", n_features=2)
    params = np.array([30.0, 0.0, 0.0])  # logits 30 and 45: float32 sigmoid is 1.0 for both
    obs = Observation("outsider", "plain", spec, (), params, per_client=False)
    X = np.array([[1.0, 0.0], [1.5, 0.0]])
    z = obs.predict_logits(X)
    np.testing.assert_allclose(z, [30.0, 45.0], rtol=1e-6)
    assert float(torch.sigmoid(torch.tensor(30.0))) == float(torch.sigmoid(torch.tensor(45.0))) == 1.0
    np.testing.assert_allclose(label_logit(z, np.array([1.0, 0.0])), [30.0, -45.0], rtol=1e-6)


@pytest.mark.parametrize("z,T", [(4.0, 30), (1.0, 10), (8.0, 100), (0.7, 1)])
def test_pld_advantage_bound_equals_the_gaussian_closed_form(z, T):
    mu = math.sqrt(T) / z
    assert dp_advantage_bound_pld(noise_multiplier=z, rounds=T) == pytest.approx(
        2 * norm.cdf(mu / 2) - 1, abs=1e-6)


def test_the_single_epsilon_bound_is_far_looser_than_the_exact_one():
    # the numbers quoted in docs/attacks.md: multiplier 4 over 30 rounds, epsilon 6.81
    assert dp_advantage_bound(6.81, 1e-5) == pytest.approx(0.998, abs=1e-3)
    assert dp_advantage_bound_pld(noise_multiplier=4.0, rounds=30) == pytest.approx(0.506, abs=1e-3)
