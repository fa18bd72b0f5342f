"""Distributed DP composed with pairwise-masking secure aggregation (SecAggChannel)."""

import math

import dp_accounting
import numpy as np
import pytest
import torch

from securefed import FedAvg, ModelSpec, run_federated
from securefed.channel import DropoutPlan, Upload
from securefed.codec import Float32Codec
from securefed.data import pima_federation
from securefed.dp import DistributedDP
from securefed.secagg import SecAggChannel, secagg_channel_for

torch.set_num_threads(1)


def test_noisy_secure_aggregate_has_the_configured_variance():
    dp = DistributedDP(FedAvg(), clip_norm=0.5, noise_multiplier=1.2, num_clients=4,
                       reproducible_noise=True, seed=11)
    channel = secagg_channel_for(dp)
    assert isinstance(channel, SecAggChannel)
    dim = 6000
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=dim) for _ in range(4)]
    vectors = [v * min(1.0, 0.5 / np.linalg.norm(v)) for v in vectors]
    uploads = [Upload(client_id=i, vector=v, weight=1.0, payload={}) for i, v in enumerate(vectors)]
    res = channel.aggregate(uploads, round_index=0, dim=dim, codec=Float32Codec(),
                            dropouts=DropoutPlan(), rng=np.random.default_rng(1))
    noise = res.weighted_sum - np.sum(vectors, axis=0)
    scale = dp.integer_noise.calls[-1].scale
    expected_std = 1.2 * (0.5 + math.sqrt(dim) / scale)
    assert noise.std() == pytest.approx(expected_std, rel=0.05)
    assert abs(noise.mean()) < 4 * expected_std / math.sqrt(dim)
    assert res.weight_sum == pytest.approx(4.0)
    # what the server received from each client is masked: far from that client's own input
    for msg in res.received:
        assert "update" not in msg.content


def test_distributed_dp_trains_under_secagg_and_reports_library_epsilon():
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    z = 0.05
    dp = DistributedDP(FedAvg(), clip_norm=0.5, noise_multiplier=z, num_clients=3)
    res = run_federated(data, strategy=dp, channel=secagg_channel_for(dp), model=spec, rounds=8,
                        seed=0, record_transcript=False)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(z), 8)
    assert res.final.extra["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    majority = max(data.y_test.mean(), 1 - data.y_test.mean())
    assert res.final.test_accuracy > majority + 0.02


def test_a_client_dropping_before_masked_input_is_accounted_for():
    z, dim = 1.0, 3000
    dp = DistributedDP(FedAvg(), clip_norm=0.5, noise_multiplier=z, num_clients=4,
                       reproducible_noise=True, seed=3)
    channel = secagg_channel_for(dp)
    uploads = [Upload(client_id=i, vector=np.zeros(dim), weight=1.0, payload={}) for i in range(4)]
    dp.before_round(0)
    res = channel.aggregate(uploads, round_index=0, dim=dim, codec=Float32Codec(),
                            dropouts=DropoutPlan({3: "masked_input"}), rng=np.random.default_rng(2))
    assert res.contributors == (0, 1, 2)
    # three of the four noise shares reached the sum: 3/4 of the target variance ...
    scale = dp.integer_noise.calls[-1].scale
    target_std = z * (0.5 + math.sqrt(dim) / scale)
    assert res.weighted_sum.std() == pytest.approx(target_std * math.sqrt(3 / 4), rel=0.06)
    # ... and the round is charged rho = 4/3 of the Gaussian value 1 / (2 z^2)
    dp.server_aggregate(res, rng=np.random.default_rng(0))
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.ZCDpEvent((4 / 3) / (2 * z * z)))
    assert dp.epsilon() == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


def test_cli_distributed_dp_runs_under_secagg(tmp_path):
    import json

    from securefed.cli import main

    rc = main(["train", "--dp", "distributed", "--clip-norm", "0.2", "--noise-multiplier", "2",
               "--rounds", "2", "--quiet", "--out", str(tmp_path)])
    assert rc == 0
    saved = json.loads((tmp_path / "fedavg-dp-distributed-seed0.json").read_text())
    assert saved["channel"] == "secagg"
    # every hospital survived: each round is charged the Gaussian zCDP value 1 / (2 z^2), z = 2
    want = []
    for rounds in (1, 2):
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_accounting.ZCDpEvent(1 / (2 * 2.0**2)), rounds)
        want.append(acc.get_epsilon(saved["history"][0]["delta"]))
    assert [r["epsilon"] for r in saved["history"]] == pytest.approx(want, rel=1e-6)
