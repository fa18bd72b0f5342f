"""FedMedHeter: reduction to FedAvg, determinism, client weights, compression, server optimisers."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed import ConfigurationError, FedAvg, ModelSpec, run_federated
from securefed.compression import StochasticQuantizer, TopKSparsifier
from securefed.data import pima_federation
from securefed.federated.fedmedheter import (
    COMPONENTS,
    AdaGradNorm,
    FedMedHeter,
    heterogeneity_weight,
)
from securefed.wire import pack


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models: extra intra-op threads only contend for the shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return pima_federation(seed=0)


@pytest.fixture(scope="module")
def mlp(data):
    return ModelSpec("mlp", n_features=data.num_features)


def _all_on(**kw):
    kw.setdefault("learning_rate", 0.1)
    return FedMedHeter(proximal_mu=0.01, adaptive_lr="adagrad_norm", client_weighting="heterogeneity",
                       compression=StochasticQuantizer(bits=4), server_optimizer="momentum", **kw)


def test_all_components_off_is_fedavg_bit_for_bit(data, mlp):
    off = FedMedHeter(proximal_mu=0.0, adaptive_lr=None, client_weighting="samples",
                      compression=None, server_optimizer=None, learning_rate=0.1)
    assert off.active_components() == ()
    a = run_federated(data, strategy=FedAvg(learning_rate=0.1), model=mlp, rounds=4, seed=5)
    b = run_federated(data, strategy=off, model=mlp, rounds=4, seed=5)
    np.testing.assert_array_equal(a.final_params, b.final_params)
    assert [r.bytes_up for r in a.history] == [r.bytes_up for r in b.history]
    c = run_federated(data, strategy=_all_on().without(*COMPONENTS), model=mlp, rounds=4, seed=5)
    np.testing.assert_array_equal(a.final_params, c.final_params)
    # and the components do change the run (the equality above is not vacuous)
    d = run_federated(data, strategy=_all_on(), model=mlp, rounds=4, seed=5)
    assert not np.allclose(a.final_params, d.final_params)


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_component_alone_changes_the_run(data, mlp, component):
    base = _all_on().without(*COMPONENTS)
    others = [c for c in COMPONENTS if c != component]
    only = _all_on().without(*others)
    assert only.active_components() == (component,)
    a = run_federated(data, strategy=base, model=mlp, rounds=3, seed=2, record_transcript=False)
    b = run_federated(data, strategy=only, model=mlp, rounds=3, seed=2, record_transcript=False)
    assert not np.array_equal(a.final_params, b.final_params)


def test_same_seed_same_run_and_strategy_reuse(data, mlp):
    s = FedMedHeter(proximal_mu=0.01, adaptive_lr="adam", learning_rate=0.01,
                    client_weighting="heterogeneity", compression=TopKSparsifier(k_fraction=0.2),
                    server_optimizer="adam", server_learning_rate=0.05)
    a = run_federated(data, strategy=s, model=mlp, rounds=4, seed=9, record_transcript=False)
    b = run_federated(data, strategy=s, model=mlp, rounds=4, seed=9, record_transcript=False)
    np.testing.assert_array_equal(a.final_params, b.final_params)  # server state reset at round 0
    c = run_federated(data, strategy=s, model=mlp, rounds=4, seed=10, record_transcript=False)
    assert not np.array_equal(a.final_params, c.final_params)


def test_aggregate_is_a_weighted_mean_of_client_updates(data, mlp):
    s = FedMedHeter(adaptive_lr=None, server_optimizer=None, compression=None,
                    client_weighting="heterogeneity", loss_power=1.0, balance_power=1.0)
    res = run_federated(data, strategy=s, model=mlp, rounds=3, seed=4)
    for tr in res.transcript:
        weights = np.array([m.content["weight"] for m in tr.received])
        vecs = np.stack([m.content["update"] for m in tr.received])
        assert np.all(weights > 0)
        n = np.array([data.clients[m.sender].num_examples for m in tr.received])
        assert np.all(weights >= 0.25 * n / 100 - 1e-12) and np.all(weights <= 4.0 * n / 100 + 1e-12)
        updates = vecs / weights[:, None]
        expected = (weights[:, None] * updates).sum(0) / weights.sum()
        np.testing.assert_allclose(tr.revealed_update, expected, rtol=1e-6, atol=1e-9)
        # a proper weighted mean lies inside the per-coordinate hull of the client updates
        assert np.all(tr.revealed_update <= updates.max(0) + 1e-9)
        assert np.all(tr.revealed_update >= updates.min(0) - 1e-9)


@given(n=st.integers(1, 10_000), loss=st.floats(0.0, 50.0), pos=st.floats(0.0, 1.0),
       q=st.floats(-3, 3), gamma=st.floats(0, 3))
@settings(max_examples=200, deadline=None)
def test_heterogeneity_weight_is_nonnegative_and_bounded(n, loss, pos, q, gamma):
    w = heterogeneity_weight(num_examples=n, initial_loss=loss, label_balance=pos, loss_power=q,
                             balance_power=gamma, reference_examples=100,
                             weight_bounds=(0.25, 4.0))
    assert math.isfinite(w)
    assert 0.25 * n / 100 * (1 - 1e-12) <= w <= 4.0 * n / 100 * (1 + 1e-12)


def test_heterogeneity_weight_direction():
    kw = dict(num_examples=100, label_balance=0.5, balance_power=0.0, reference_examples=100,
              weight_bounds=(0.25, 4.0))
    assert heterogeneity_weight(initial_loss=1.0, loss_power=1.0, **kw) > heterogeneity_weight(
        initial_loss=0.5, loss_power=1.0, **kw)
    assert heterogeneity_weight(initial_loss=1.0, loss_power=-1.0, **kw) < heterogeneity_weight(
        initial_loss=0.5, loss_power=-1.0, **kw)
    kw2 = dict(num_examples=100, initial_loss=math.log(2), loss_power=0.0, reference_examples=100,
               weight_bounds=(0.25, 4.0))
    assert heterogeneity_weight(label_balance=0.5, balance_power=1.0, **kw2) == pytest.approx(1.0)
    assert heterogeneity_weight(label_balance=0.05, balance_power=1.0, **kw2) < 0.5
    with pytest.raises(ConfigurationError, match="initial_loss"):
        heterogeneity_weight(initial_loss=float("nan"), label_balance=0.5, **{
            k: v for k, v in kw.items() if k != "label_balance"}, loss_power=1.0)


def test_client_process_error_feedback_with_changing_weights():
    """sum_t decoded_t / p_t + residual == sum_t update_t, with the residual in client state."""
    s = FedMedHeter(compression=TopKSparsifier(k_fraction=0.1))
    rng = np.random.default_rng(0)
    state: dict = {}
    sent = np.zeros(50)
    true = np.zeros(50)
    for _ in range(12):
        u = rng.normal(size=50)
        w = float(rng.uniform(0.2, 3.0))
        vec, payload = s.client_process(u, w, client_state=state, rng=rng)
        np.testing.assert_array_equal(vec, s.codec.decode(payload, dim=50))
        assert np.count_nonzero(vec) <= 5
        sent += vec / w
        true += u
    np.testing.assert_allclose(sent + state["ef_residual"], true, atol=1e-9)


def test_compressed_uploads_are_what_is_counted(data, mlp):
    d = mlp.num_params()
    float_run = run_federated(data, strategy=FedMedHeter(compression=None), model=mlp, rounds=2, seed=1)
    q_run = run_federated(data, strategy=FedMedHeter(compression=StochasticQuantizer(bits=4)),
                          model=mlp, rounds=2, seed=1)
    for rec_f, rec_q in zip(float_run.history, q_run.history, strict=True):
        assert rec_f.bytes_up > 4 * d * 3 and rec_q.bytes_up < (d // 2 + 100) * 3
    msg = q_run.transcript[0].received[0]
    header = {"round": 0, "client": msg.sender, "weight": 1.0}
    fields = {"q_lo": 0.0, "q_hi": 0.0, "q_codes": np.zeros(math.ceil(d * 4 / 8), np.uint8)}
    assert msg.nbytes == len(pack({**header, **fields}))


def test_server_momentum_zero_is_plain_and_adam_step():
    plain = FedMedHeter(server_optimizer=None)
    mom0 = FedMedHeter(server_optimizer="momentum", server_momentum=0.0)
    w = np.array([1.0, -2.0, 0.5])
    delta = np.array([0.3, -0.1, 0.0])
    mom0.before_round(0)
    np.testing.assert_array_equal(mom0.server_update(w, delta, round_index=0),
                                  plain.server_update(w, delta, round_index=0))
    mom = FedMedHeter(server_optimizer="momentum", server_momentum=0.5)
    mom.before_round(0)
    w1 = mom.server_update(w, delta, round_index=0)
    w2 = mom.server_update(w1, delta, round_index=1)
    np.testing.assert_allclose(w2 - w1, 1.5 * delta)
    adam = FedMedHeter(server_optimizer="adam", server_learning_rate=0.1, server_momentum=0.9,
                       server_beta2=0.99, server_tau=1e-3)
    adam.before_round(0)
    step = adam.server_update(w, delta, round_index=0) - w
    expected = 0.1 * 0.1 * delta / (np.sqrt(0.01 * delta**2) + 1e-3)
    np.testing.assert_allclose(step, expected)


def test_adagrad_norm_step_bound():
    """Each step is shorter than eta, and ||u|| <= eta * sqrt(J ln(b_J^2 / b_0^2))."""
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(5, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    eta, b0, steps = 2.0, 1e-3, 30
    opt = AdaGradNorm(model.parameters(), lr=eta, b0=b0)

    def flat():
        return torch.cat([p.detach().clone().reshape(-1) for p in model.parameters()])

    start = flat()
    X = torch.randn(40, 5, generator=gen) * 10
    for _ in range(steps):
        before = flat()
        opt.zero_grad()
        ((model(X).squeeze(-1) - 3.0) ** 2).mean().backward()
        opt.step()
        assert float((flat() - before).norm()) <= eta * (1 + 1e-6)
    moved = float((flat() - start).norm())
    bound = eta * math.sqrt(steps * math.log(opt.b_squared / b0**2))
    assert 0 < moved <= bound * (1 + 1e-6)


@pytest.mark.parametrize("rule,lr", [("adagrad_norm", 0.1), ("adam", 0.01), ("loss_scaled", 0.1)])
def test_adaptive_rules_train(data, mlp, rule, lr):
    s = FedMedHeter(adaptive_lr=rule, learning_rate=lr, compression=None, server_optimizer=None)
    res = run_federated(data, strategy=s, model=mlp, rounds=5, seed=0, record_transcript=False)
    assert res.history[-1].test_loss < res.history[0].test_loss
    assert res.settings["strategy"]["adaptive_lr"] == rule


def test_validation_messages():
    with pytest.raises(ConfigurationError, match="adaptive_lr must be"):
        FedMedHeter(adaptive_lr="rmsprop")
    with pytest.raises(ConfigurationError, match="client_weighting"):
        FedMedHeter(client_weighting="loss")
    with pytest.raises(ConfigurationError, match="weight_bounds"):
        FedMedHeter(weight_bounds=(0.0, 2.0))
    with pytest.raises(ConfigurationError, match="server_optimizer"):
        FedMedHeter(server_optimizer="yogi")
    with pytest.raises(ConfigurationError, match="compression must implement"):
        FedMedHeter(compression="quant8")
    with pytest.raises(ConfigurationError, match="proximal_mu"):
        FedMedHeter(proximal_mu=-1)
    with pytest.raises(ConfigurationError, match="unknown component"):
        FedMedHeter().without("dp")
