"""Clipping, central and local Gaussian noise, secure mode, budget enforcement."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from securefed import FedAvg, ModelSpec, PrivacyBudgetExceeded, run_federated
from securefed.channel import ChannelResult
from securefed.data import pima_federation
from securefed.dp import (
    CentralDP,
    GaussianNoise,
    LocalDP,
    clip_l2,
    max_rounds_within,
    save_partial_result,
)
from securefed.errors import ConfigurationError
from securefed.federated.types import LocalResult

torch.set_num_threads(1)


@settings(max_examples=200, deadline=None)
@given(
    update=arrays(np.float64, st.integers(1, 40),
                  elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    clip_norm=st.floats(1e-3, 1e3),
)
def test_clipping_bounds_every_update(update, clip_norm):
    clipped, norm = clip_l2(update, clip_norm=clip_norm)
    assert np.linalg.norm(clipped) <= clip_norm
    assert norm == pytest.approx(np.linalg.norm(update))
    if norm <= clip_norm:
        np.testing.assert_array_equal(clipped, update)
    else:  # direction kept
        np.testing.assert_allclose(clipped * norm / np.linalg.norm(clipped), update, rtol=1e-9,
                                   atol=1e-9 * norm)


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, float("inf"), float("nan"), "abc"])
def test_bad_clip_norm_is_refused(clip_norm):
    with pytest.raises(ConfigurationError, match="clip_norm"):
        clip_l2(np.ones(3), clip_norm=clip_norm)
    with pytest.raises(ConfigurationError, match="clip_norm"):
        CentralDP(FedAvg(), clip_norm=clip_norm, noise_multiplier=1.0, num_clients=3)


def _zero_result(dim: int, contributors=(0, 1, 2)) -> ChannelResult:
    return ChannelResult(weighted_sum=np.zeros(dim), weight_sum=float(len(contributors)),
                         contributors=tuple(contributors), bytes_up={}, bytes_down={},
                         received=(), timings={})


@pytest.mark.parametrize("reproducible", [False, True])
def test_central_noise_std_matches_configuration(reproducible):
    dp = CentralDP(FedAvg(), clip_norm=0.7, noise_multiplier=1.5, num_clients=10,
                   clients_per_round=4, reproducible_noise=reproducible)
    dp.before_round(0)
    mean = dp.server_aggregate(_zero_result(40_000), rng=np.random.default_rng(0))
    # fixed denominator: the expected number of clients per round (4)
    noise_on_sum = mean * 4
    assert noise_on_sum.std() == pytest.approx(1.5 * 0.7, rel=0.02)
    assert abs(noise_on_sum.mean()) < 0.03


@pytest.mark.parametrize("reproducible", [False, True])
def test_local_noise_std_matches_configuration(reproducible):
    dp = LocalDP(FedAvg(), clip_norm=2.0, noise_multiplier=0.8, num_clients=3,
                 reproducible_noise=reproducible)
    update = np.zeros(40_000)
    vec, payload = dp.client_process(update, 1.0, client_state={}, rng=np.random.default_rng(1))
    assert vec.std() == pytest.approx(0.8 * 2.0, rel=0.02)
    # the payload (what travels) carries the same noisy vector, not the clean one
    np.testing.assert_allclose(payload["u"], vec, rtol=1e-6)


def test_client_side_clips_before_weighting_with_uniform_weights():
    dp = CentralDP(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, num_clients=3)
    local = LocalResult(update=np.full(5, 10.0), num_examples=500, train_loss=0.0,
                        initial_loss=0.0, label_balance=0.5, steps=1)
    w = dp.client_weight(local, client_state={})
    assert w == 1.0
    state: dict = {}
    vec, _ = dp.client_process(local.update, w, client_state=state, rng=np.random.default_rng(0))
    assert np.linalg.norm(vec) <= 1.0 + 1e-6  # float32 payload rounding only
    assert state["dp_clipped"] and state["dp_last_norm"] == pytest.approx(np.sqrt(500.0))


def test_secure_mode_refuses_a_seed_and_reproducible_mode_is_reproducible():
    with pytest.raises(ConfigurationError, match="refuses a seed"):
        GaussianNoise(seed=3)
    with pytest.raises(ConfigurationError, match="refuses a seed"):
        CentralDP(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, num_clients=3, seed=1)
    a = GaussianNoise(reproducible_noise=True, seed=5).sample(10, std=1.0)
    b = GaussianNoise(reproducible_noise=True, seed=5).sample(10, std=1.0)
    np.testing.assert_array_equal(a, b)
    s1 = GaussianNoise().sample(10, std=1.0, rng=np.random.default_rng(0))
    s2 = GaussianNoise().sample(10, std=1.0, rng=np.random.default_rng(0))
    assert not np.array_equal(s1, s2)  # the engine's rng is not used for secure noise
    with pytest.warns(DeprecationWarning, match="secure= is deprecated"):
        assert GaussianNoise(secure=False).reproducible  # the old spelling still works


def test_dp_run_is_reproducible_from_the_seed_only_when_asked():
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)

    def run(seed):
        dp = LocalDP(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, reproducible_noise=True)
        return run_federated(data, strategy=dp, model=spec, rounds=2, seed=seed,
                             record_transcript=False).final_params

    np.testing.assert_array_equal(run(4), run(4))
    assert not np.array_equal(run(4), run(5))


def test_budget_enforcement_stops_at_the_right_round(tmp_path):
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    target, z = 5.0, 2.0
    allowed = max_rounds_within(target_epsilon=target, delta=1e-5, noise_multiplier=z)
    assert 1 <= allowed < 10
    dp = CentralDP(FedAvg(), clip_norm=1.0, noise_multiplier=z, target_epsilon=target,
                   num_clients=3)
    with pytest.raises(PrivacyBudgetExceeded, match="target_epsilon=5.0") as info:
        run_federated(data, strategy=dp, model=spec, rounds=10, seed=0, record_transcript=False)
    partial = info.value.partial
    assert len(partial.history) == allowed
    eps = [r.extra["epsilon"] for r in partial.history]
    assert eps == sorted(eps) and eps[-1] <= target
    path = save_partial_result(info.value, tmp_path / "partial.json")
    saved = json.loads(path.read_text())
    assert len(saved["history"]) == allowed
    assert saved["stopped"]["rounds_completed"] == allowed
    assert saved["history"][-1]["epsilon"] == pytest.approx(eps[-1])
    np.testing.assert_allclose(saved["final_params"], partial.final_params)
    # a second run with the same wrapper starts from a fresh ledger
    with pytest.raises(PrivacyBudgetExceeded) as again:
        run_federated(data, strategy=dp, model=spec, rounds=10, seed=1, record_transcript=False)
    assert len(again.value.partial.history) == allowed


def test_central_dp_trains_at_small_noise():
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    dp = CentralDP(FedAvg(), clip_norm=0.5, noise_multiplier=0.05, num_clients=3)
    res = run_federated(data, strategy=dp, model=spec, rounds=8, seed=0, record_transcript=False)
    majority = max(data.y_test.mean(), 1 - data.y_test.mean())
    assert res.final.test_accuracy > majority + 0.02
    assert res.final.test_loss < res.history[0].test_loss


def test_cli_stops_at_budget_and_saves_partial_result(tmp_path, capsys):
    from securefed.cli import main

    rc = main(["train", "--dp", "central", "--clip-norm", "0.5", "--noise-multiplier", "2",
               "--target-epsilon", "5", "--rounds", "8", "--quiet", "--out", str(tmp_path)])
    assert rc == 3
    saved = json.loads((tmp_path / "fedavg-dp-central-seed0-partial.json").read_text())
    allowed = max_rounds_within(target_epsilon=5.0, delta=1e-5, noise_multiplier=2.0)
    assert len(saved["history"]) == allowed
    assert "target_epsilon=5.0" in capsys.readouterr().err


def test_more_contributors_than_accounted_for_is_refused_when_amplifying():
    from securefed.federated.types import FederationFacts

    dp = CentralDP(FedAvg(), clip_norm=1.0, noise_multiplier=1.0)
    dp.start_run(FederationFacts(num_clients=3, clients_per_round=2, sampling="poisson",
                                 sample_secret=True, sample_published=False))
    assert dp.amplified
    dp.before_round(0)
    with pytest.raises(ConfigurationError, match="clients_per_round=2"):
        dp.server_aggregate(_zero_result(4, contributors=(0, 1, 2)), rng=np.random.default_rng(0))


def test_public_names():
    import securefed
    import securefed.dp as dp

    assert set(dp.__all__) == {n for n in dp.__all__ if hasattr(dp, n)}
    for name in ("CentralDP", "LocalDP", "DistributedDP", "DPSGD"):
        assert name in securefed.__all__ and getattr(securefed, name) is getattr(dp, name)
