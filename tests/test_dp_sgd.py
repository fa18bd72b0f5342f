"""DP-SGD: per-example gradients against Opacus, clipping and noise, example-level epsilon."""

import dp_accounting
import numpy as np
import pytest
import torch

from securefed import FedAvg, ModelSpec, run_federated
from securefed.data import pima_federation
from securefed.dp import DPSGD, CentralDP, GaussianNoise, per_example_gradients
from securefed.dp.dpsgd import clip_and_noise
from securefed.errors import ConfigurationError

torch.set_num_threads(1)


@pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_per_example_gradients_match_opacus(kind):
    import opacus  # the "dpsgd" extra, installed by scripts/setup.sh
    data = pima_federation(seed=0)
    spec = ModelSpec(kind, n_features=data.num_features)
    X = torch.as_tensor(data.clients[0].X[:12])
    y = torch.as_tensor(data.clients[0].y[:12])
    ours = per_example_gradients(spec.build(seed=3), X, y)
    gsm = opacus.GradSampleModule(spec.build(seed=3))
    torch.nn.functional.binary_cross_entropy_with_logits(gsm(X), y).backward()
    theirs = torch.cat([p.grad_sample.reshape(12, -1) for p in gsm.parameters()], dim=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_clip_and_noise_bounds_and_noise_scale():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(50, 8)) * 10
    clean = clip_and_noise(g, max_grad_norm=1.0, noise_multiplier=1e-12, expected_batch_size=1.0,
                           noise=GaussianNoise(), rng=rng)
    assert np.linalg.norm(clean) <= 50 * 1.0 + 1e-9  # 50 clipped examples of norm <= 1
    pure_noise = clip_and_noise(np.zeros((0, 40_000)), max_grad_norm=2.0, noise_multiplier=1.5,
                                expected_batch_size=4.0, noise=GaussianNoise(), rng=rng)
    assert pure_noise.std() == pytest.approx(1.5 * 2.0 / 4.0, rel=0.02)


def test_example_epsilon_is_the_library_value_for_the_steps_taken():
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    dpsgd = DPSGD(FedAvg(batch_size=16), max_grad_norm=1.0, noise_multiplier=1.2)
    res = run_federated(data, strategy=dpsgd, model=spec, rounds=2, seed=0,
                        record_transcript=False)
    worst = 0.0
    for client in data.clients:
        n = client.num_examples
        q = 16 / n
        steps = 2 * int(np.ceil(n / 16))
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.2)), steps)
        worst = max(worst, acc.get_epsilon(1e-5))
    assert res.final.extra["example_epsilon"] == pytest.approx(worst, rel=1e-9)
    assert np.all(np.isfinite(res.final_params))


def test_dpsgd_composes_with_client_level_dp():
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    both = CentralDP(DPSGD(FedAvg(), max_grad_norm=1.0, noise_multiplier=1.0), clip_norm=1.0,
                     noise_multiplier=1.0, num_clients=3)
    res = run_federated(data, strategy=both, model=spec, rounds=1, seed=0, record_transcript=False)
    assert {"epsilon", "example_epsilon"} <= set(res.final.extra)
    with pytest.raises(ConfigurationError, match="clip_norm"):
        DPSGD(FedAvg(), max_grad_norm=-1.0, noise_multiplier=1.0)
