import numpy as np
import pytest

from defenses import PARTIES, RunContext, defense_names, get_defense
from evaluation.algorithms import HyperParams, get_algorithm
from evaluation.cv import stratified_hospital_folds
from securefed.data import pima_federation
from securefed.errors import ConfigurationError
from securefed.he.encrypted_lr import accuracy, fit_sigmoid_polynomial, train_plain_logreg
from securefed.models import ModelSpec


@pytest.fixture(scope="module")
def fold():
    return stratified_hospital_folds(pima_federation(seed=0), n_folds=3, seed=0)[0]


def test_every_defense_states_what_each_party_observes():
    assert defense_names()[0] == "none"
    for name in defense_names():
        d = get_defense(name)
        assert {v.party for v in d.views} == set(PARTIES)
        assert d.describe()["views"]["server"]["observes"]
    with pytest.raises(ConfigurationError, match=r"unknown defense 'sekagg'; valid: none, "):
        get_defense("sekagg")
    with pytest.raises(ConfigurationError, match=r"defense 'none' has no parameter\(s\) strength; valid: \(none\)"):
        get_defense("none", strength=2)


def test_each_defense_builds_a_fresh_channel_per_run():
    for name in defense_names():
        from securefed import FedAvg

        d = get_defense(name)
        _, c1 = d.build(FedAvg(), RunContext(num_clients=3, rounds=2))
        _, c2 = d.build(FedAvg(), RunContext(num_clients=3, rounds=2))
        assert c1 is not c2


@pytest.mark.parametrize("name", [n for n in ("secagg", "ckks") if n in defense_names()])
def test_secure_channels_train_the_same_model_and_hide_individual_updates(fold, name):
    spec = ModelSpec("logreg", n_features=fold.data.num_features)
    algo = get_algorithm("fedavg")
    plain = algo.train(fold.data, model=spec, rounds=3, seed=1, defense=get_defense("none"),
                       hyper=HyperParams(), record_transcript=True)
    secure = algo.train(fold.data, model=spec, rounds=3, seed=1, defense=get_defense(name),
                        hyper=HyperParams(), record_transcript=True)
    np.testing.assert_allclose(secure.final_params, plain.final_params, atol=1e-3)
    assert not get_defense(name).view("server").individual_updates
    for msg in secure.transcript[0].received:
        assert "update" not in msg.content  # no clear update reached the server
    assert any("update" in m.content for m in plain.transcript[0].received)
    assert secure.total_bytes_up() > plain.total_bytes_up()


def test_centralised_algorithms_run_only_under_their_defense():
    assert get_algorithm("centralized").supports(get_defense("none"))
    if "secagg" in defense_names():
        assert not get_algorithm("centralized").supports(get_defense("secagg"))
    with pytest.raises(ConfigurationError, match="unknown algorithm 'fedmedhetr'; valid"):
        get_algorithm("fedmedhetr")


def test_encrypted_centralised_run_is_reported_like_any_other(fold):
    if "encrypted-centralized" not in __import__("evaluation").algorithm_names():
        pytest.fail("encrypted-centralised training is expected once CKKS is in the package")
    spec = ModelSpec("logreg", n_features=fold.data.num_features)
    algo = get_algorithm("encrypted-centralized")
    assert algo.supports(get_defense("ckks")) and not algo.supports(get_defense("none"))
    assert not algo.supports(get_defense("ckks"), ModelSpec("mlp", n_features=7))
    run = algo.train(fold.data, model=spec, rounds=20, seed=0, defense=get_defense("ckks"),
                     hyper=HyperParams(), params={"epochs": 2})
    assert len(run.history) == 2 and run.final_params.shape == (spec.num_params(),)
    assert run.history[0].bytes_up > 100_000  # the encrypted columns
    assert {"server_epoch", "refresh"} <= set(run.history[1].times)
    # the same gradient descent in the clear, with the trainer's polynomial sigmoid
    c = fit_sigmoid_polynomial(interval=(-8.0, 8.0))
    X, y = fold.data.pooled()
    w, b, _ = train_plain_logreg(X, y, epochs=2, learning_rate=1.0,
                                 sigmoid=lambda t: c[0] + c[1] * t + c[3] * t**3)
    # CKKS rescaling error (as in tests/test_he_encrypted_lr.py) plus the key authority's
    # release of each epoch's weights, rounded to a power-of-two grid above the ciphertext
    # error (2^-10 here): at most half a step per epoch, carried into the next
    np.testing.assert_allclose(run.final_params, np.append(w, b),
                               atol=2e-3 * np.max(np.abs(w)) + 1e-4 + 2 * 2.0**-10, rtol=0)
    one_patient = 1 / len(fold.data.y_test)
    assert run.final.test_accuracy == pytest.approx(
        accuracy(w, b, fold.data.X_test, fold.data.y_test), abs=one_patient + 1e-9)


@pytest.mark.parametrize("name", ["dp-central", "dp-local", "secagg+dp"])
def test_dp_defenses_account_epsilon_every_round(fold, name):
    spec = ModelSpec("logreg", n_features=fold.data.num_features)
    d = get_defense(name, noise_multiplier=2.0, clip_norm=0.5)
    assert d.params["noise_multiplier"] == 2.0
    run = get_algorithm("fedavg").train(fold.data, model=spec, rounds=3, seed=0, defense=d,
                                        hyper=HyperParams(), record_transcript=True)
    eps = [r.extra["epsilon"] for r in run.history]
    assert 0 < eps[0] < eps[1] < eps[2]
    clear = any("update" in m.content for m in run.transcript[0].received)
    assert clear == d.view("server").individual_updates
    with pytest.raises(ConfigurationError):
        get_defense(name, clip_norm=-1.0).build(
            __import__("securefed").FedAvg(), RunContext(num_clients=3, rounds=3))


def test_compression_sends_fewer_values_and_keeps_what_it_did_not_send():
    from securefed import FedAvg

    d = get_defense("compression", k_fraction=0.25, value_bits=None)
    strategy, _ = d.build(FedAvg(), RunContext(num_clients=3, rounds=2))
    rng = np.random.default_rng(0)
    state: dict = {}
    updates = [rng.normal(size=40) for _ in range(3)]
    sent = []
    for u in updates:
        vec, payload = strategy.client_process(u, 2.0, client_state=state, rng=rng)
        assert np.count_nonzero(vec) <= 10
        sent.append(vec)
    # error feedback: what was sent plus what is still owed equals what was meant to be sent
    np.testing.assert_allclose(np.sum(sent, 0) + state["compression_residual"],
                               2.0 * np.sum(updates, 0), atol=1e-9)
