"""What each adversary observes, the declared prior, and the scoring helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attacks import ATTACKS, MembershipScores, attack_names, available_attacks, get_attack
from evaluation.scoring import (
    dp_advantage_bound,
    dp_tpr_bound,
    marginal_baseline,
    psnr,
    score_membership,
    score_rows,
)
from securefed import FedAvg, ModelSpec, run_federated
from securefed.data import pima_federation
from securefed.errors import ConfigurationError
from securefed.observation import PriorKnowledge, observe

DATA = pima_federation(seed=0)
SPEC = ModelSpec("logreg", n_features=7)


@pytest.fixture(scope="module")
def run():
    return run_federated(DATA, strategy=FedAvg(), model=SPEC, rounds=2, seed=0)


def test_server_reads_each_clients_own_update_over_the_plain_channel(run):
    obs = observe(run, adversary="server")
    assert obs.per_client and obs.channel == "plain"
    clients = obs.select(round_index=0, source="client")
    assert [u.sender for u in clients] == [0, 1, 2]
    for u, c in zip(clients, DATA.clients, strict=True):
        assert u.weight == c.num_examples  # FedAvg's weight is the example count
    # the weighted mean of the per-client deltas is the revealed aggregate
    agg = obs.select(round_index=0, source="aggregate")[0]
    mean = sum(u.weight * u.update for u in clients) / sum(u.weight for u in clients)
    np.testing.assert_allclose(mean, agg.update, atol=1e-6)


def test_client_and_outsider_views(run):
    me = observe(run, adversary="client", client_id=1)
    assert not me.per_client and all(u.source == "aggregate" for u in me.updates)
    assert [u.round_index for u in me.updates] == [0, 1]
    np.testing.assert_allclose(me.updates[1].update, run.final_params - run.transcript[1].global_params)
    out = observe(run, adversary="outsider")
    assert out.updates == () and out.predict_proba(DATA.X_test[:3]).shape == (3,)
    with pytest.raises(ConfigurationError, match="valid"):
        observe(run, adversary="hacker")
    with pytest.raises(ConfigurationError, match="client_id"):
        observe(run, adversary="client")
    with pytest.raises(ConfigurationError, match="final model"):
        observe(run.transcript[0], adversary="outsider")


def test_prior_validates_its_schema():
    X = np.random.default_rng(0).normal(size=(50, 5))
    X[:, 2:5] = np.eye(3)[np.random.default_rng(1).integers(0, 3, 50)]
    prior = PriorKnowledge.from_public_data(X, categorical={"colour": [2, 3, 4]})
    assert prior.continuous_columns == (0, 1)
    assert prior.categorical_blocks[0].columns == (2, 3, 4)
    with pytest.raises(ConfigurationError, match="model expects"):
        PriorKnowledge.from_public_data(X, model=SPEC)
    Xb, _ = marginal_baseline(prior, 4, kind="sample", rng=np.random.default_rng(0))
    assert np.all(Xb[:, 2:5].sum(1) == 1)


def test_scoring_rows_and_baselines():
    prior = PriorKnowledge.from_public_data(DATA.X_test, DATA.y_test)
    X, y = DATA.clients[0].X[:5], DATA.clients[0].y[:5]
    perfect = score_rows(X[::-1], y[::-1], X, y, prior=prior)  # order does not matter
    assert perfect.mean_feature_accuracy == 1.0 and perfect.exact_row_rate == 1.0
    assert perfect.label_accuracy == 1.0
    off = score_rows(X[:1] + 0.3 * prior.marginals.std, y[:1], X[:1], y[:1], prior=prior, tolerance=0.25)
    assert off.mean_feature_accuracy == 0.0
    missing = score_rows(X[:2], y[:2], X, y, prior=prior)  # unpaired true rows count as wrong
    assert missing.exact_row_rate == pytest.approx(0.4)


def test_membership_metrics_and_dp_bound():
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(500), np.zeros(500)].astype(bool)
    s = score_membership(MembershipScores("x", np.where(member, 1.0, 0.0) + rng.normal(0, 0.1, 1000), 0.5), member)
    assert s.auc > 0.99 and s.tpr_at_1_fpr > 0.9 and s.balanced_accuracy > 0.99
    coin = score_membership(rng.normal(size=1000), member, epsilon=1.0, delta=1e-5)
    assert abs(coin.auc - 0.5) < 0.06 and coin.dp_bound == pytest.approx(0.46212, abs=1e-4)
    assert dp_advantage_bound(0.0) == 0.0 and dp_advantage_bound(math.inf) == 1.0
    assert dp_tpr_bound(0.01, 1.0) == pytest.approx(math.e * 0.01)
    assert psnr(np.zeros(4), np.full(4, 0.1), data_range=1.0) == pytest.approx(20.0)


def test_every_registered_attack_states_its_threat_model():
    names = attack_names()
    assert {"analytic-first-layer", "tabular-inversion", "attribute-inference-blackbox",
            "attribute-inference-whitebox", "class-representative", "membership-loss",
            "membership-lira"} <= set(names)
    for name in names:
        tm = ATTACKS.get(name).threat_model
        assert tm.attacker and tm.observes and tm.knows and tm.goal


def test_attack_registry_refuses_unknown_names_and_parameters():
    with pytest.raises(ConfigurationError, match="unknown attack 'nope'; valid: analytic-first-layer"):
        get_attack("nope")
    with pytest.raises(ConfigurationError, match="has no parameter.*restart_count"):
        get_attack("tabular-inversion", restart_count=3)
    with pytest.warns(DeprecationWarning, match="attack_names"):
        assert set(available_attacks()) == set(attack_names())
