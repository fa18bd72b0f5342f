"""Distributed DP: integer noise shares, their sum, accounting and the wrapper."""

import math

import dp_accounting
import numpy as np
import pytest
import torch

from securefed import FedAvg, ModelSpec, PlainChannel, run_federated
from securefed.channel import AggregationChannel, ChannelResult, Upload, check_uploads
from securefed.data import pima_federation
from securefed.dp import (
    DiscreteGaussianNoise,
    DistributedDP,
    distributed_discrete_gaussian_rho,
    sample_discrete_gaussian,
    secure_discrete_gaussian,
)
from securefed.errors import ConfigurationError, ProtocolAbort

torch.set_num_threads(1)


class IntegerSumChannel(AggregationChannel):
    """Test stand-in for the ``integer_noise`` contract of the secure-aggregation channel:
    fixed-point encode each upload, add that client's noise share, sum the integers.  It
    does no masking; it checks the DP side of the contract only."""

    name = "integer-sum"
    stages = ("upload",)

    def __init__(self, integer_noise, *, scale: float = 2.0 ** 12) -> None:
        self.integer_noise = integer_noise
        self.scale = scale

    def aggregate(self, uploads, *, round_index, dim, codec, dropouts, rng):
        check_uploads(uploads, dim=dim)
        total = np.zeros(dim, dtype=np.int64)
        alive = [u for u in uploads if dropouts.alive_at(u.client_id, "upload", self.stages)]
        for up in alive:
            enc = np.rint(np.asarray(up.vector) * self.scale).astype(np.int64)
            total += enc + self.integer_noise.sample(dim, scale=self.scale,
                                                     num_clients=len(uploads), rng=rng)
        return ChannelResult(weighted_sum=total / self.scale,
                             weight_sum=float(sum(u.weight for u in alive)),
                             contributors=tuple(u.client_id for u in alive), bytes_up={},
                             bytes_down={}, received=(), timings={})


def test_simulated_shares_of_n_clients_sum_to_target_variance():
    noise = DiscreteGaussianNoise(noise_multiplier=0.9, clip_norm=1.5, reproducible_noise=True,
                                  seed=0)
    dim, scale, n = 30_000, 2.0 ** 10, 5
    total = sum(noise.sample(dim, scale=scale, num_clients=n) for _ in range(n))
    target = noise.target_variance(dim, scale=scale)
    assert target == pytest.approx((0.9 * (scale * 1.5 + math.sqrt(dim))) ** 2)
    assert total.dtype == np.int64
    assert total.var() == pytest.approx(target, rel=0.03)
    assert abs(total.mean()) < 4 * math.sqrt(target / dim)
    one = noise.sample(dim, scale=scale, num_clients=n)
    assert one.var() == pytest.approx(target / n, rel=0.03)


def test_secure_shares_of_n_clients_sum_to_target_variance():
    noise = DiscreteGaussianNoise(noise_multiplier=1.0, clip_norm=1.0)  # secure: the default
    dim, scale, n = 1500, 64.0, 3
    shares = [noise.sample(dim, scale=scale, num_clients=n, rng=None) for _ in range(n)]
    total = np.sum(shares, axis=0)
    # standard error of a variance estimate from 1500 draws is about 3.7%
    assert total.var() == pytest.approx(noise.target_variance(dim, scale=scale), rel=0.15)
    assert not np.array_equal(shares[0], shares[1])


def test_exact_sampler_matches_discrete_gaussian_moments_at_small_variance():
    # For small sigma^2 the discrete Gaussian's variance differs from sigma^2; compare with
    # the exact value computed from its probability mass function.
    sigma2 = 0.8
    ks = np.arange(-40, 41)
    pmf = np.exp(-ks ** 2 / (2 * sigma2))
    pmf /= pmf.sum()
    exact_var = float((pmf * ks ** 2).sum())
    sim = sample_discrete_gaussian(sigma2, 200_000, rng=np.random.default_rng(3))
    assert sim.var() == pytest.approx(exact_var, rel=0.02)
    sec = secure_discrete_gaussian(sigma2, 3000)
    assert sec.var() == pytest.approx(exact_var, rel=0.12)
    assert set(np.unique(sec)) <= set(ks)


def test_dropout_tolerance_keeps_target_with_that_many_dropouts():
    noise = DiscreteGaussianNoise(noise_multiplier=1.0, clip_norm=1.0, dropout_tolerance=0.25,
                                  reproducible_noise=True, seed=1)
    dim, scale, n = 30_000, 256.0, 4
    survivors = sum(noise.sample(dim, scale=scale, num_clients=n) for _ in range(3))
    assert survivors.var() == pytest.approx(noise.target_variance(dim, scale=scale), rel=0.03)


def test_rho_is_gaussian_value_when_tau_negligible_and_grows_otherwise():
    rho = distributed_discrete_gaussian_rho(l2_sensitivity=50.0, client_variance=2500.0,
                                            num_clients=4, dim=100)
    assert rho == pytest.approx(50.0 ** 2 / (2 * 4 * 2500.0), rel=1e-12)
    small = distributed_discrete_gaussian_rho(l2_sensitivity=1.0, client_variance=0.05,
                                              num_clients=4, dim=100)
    assert small > 1.0 / (2 * 4 * 0.05)


def test_secure_noise_refuses_seed_and_bad_arguments():
    with pytest.raises(ConfigurationError, match="refuses a seed"):
        DiscreteGaussianNoise(noise_multiplier=1.0, clip_norm=1.0, seed=0)
    with pytest.raises(ConfigurationError, match="refuses a seed"):
        DistributedDP(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, num_clients=3, seed=0)
    assert DiscreteGaussianNoise(noise_multiplier=1.0, clip_norm=1.0).secure  # the default
    with pytest.raises(ConfigurationError, match="clip_norm"):
        DiscreteGaussianNoise(noise_multiplier=1.0, clip_norm=0.0)
    noise = DiscreteGaussianNoise(noise_multiplier=1.0, clip_norm=1.0, reproducible_noise=True,
                                  seed=0)
    with pytest.raises(ConfigurationError, match="num_clients"):
        noise.sample(10, scale=16.0, num_clients=0)


def test_noisy_aggregate_has_configured_variance():
    dp = DistributedDP(FedAvg(), clip_norm=0.5, noise_multiplier=1.2, num_clients=3,
                       reproducible_noise=True, seed=7)
    channel = IntegerSumChannel(dp.integer_noise, scale=2.0 ** 14)
    dim = 20_000
    uploads = [Upload(client_id=i, vector=np.zeros(dim), weight=1.0, payload={}) for i in range(3)]
    from securefed.channel import DropoutPlan
    res = channel.aggregate(uploads, round_index=0, dim=dim, codec=None, dropouts=DropoutPlan(),
                            rng=np.random.default_rng(0))
    expected_std = 1.2 * (0.5 + math.sqrt(dim) / 2.0 ** 14)
    assert res.weighted_sum.std() == pytest.approx(expected_std, rel=0.03)


def test_distributed_dp_trains_and_accounts_like_the_library():
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    z = 0.05
    dp = DistributedDP(FedAvg(), clip_norm=0.5, noise_multiplier=z, num_clients=3)
    channel = IntegerSumChannel(dp.integer_noise)
    res = run_federated(data, strategy=dp, channel=channel, model=spec, rounds=8, seed=0,
                        record_transcript=False)
    for r, rec in enumerate(res.history):
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_accounting.GaussianDpEvent(z), r + 1)
        assert rec.extra["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    majority = max(data.y_test.mean(), 1 - data.y_test.mean())
    assert res.final.test_accuracy > majority + 0.02


def test_distributed_dp_on_a_channel_without_noise_aborts():
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    dp = DistributedDP(FedAvg(), clip_norm=0.5, noise_multiplier=1.0, num_clients=3)
    with pytest.raises(ProtocolAbort, match="no integer noise"):
        run_federated(data, strategy=dp, channel=PlainChannel(), model=spec, rounds=1, seed=0)


def test_distributed_dp_needs_the_rdp_accountant():
    with pytest.raises(ConfigurationError, match="rdp"):
        DistributedDP(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, num_clients=3,
                      accountant="pld")
