import numpy as np

from securefed import FedAvg, FedProx, ModelSpec, run_federated
from securefed.data import pima_federation


def test_same_seed_same_run():
    data = pima_federation(seed=0)
    spec = ModelSpec("mlp", n_features=data.num_features)
    a = run_federated(data, strategy=FedAvg(), model=spec, rounds=3, seed=7)
    b = run_federated(data, strategy=FedAvg(), model=spec, rounds=3, seed=7)
    np.testing.assert_array_equal(a.final_params, b.final_params)
    c = run_federated(data, strategy=FedAvg(), model=spec, rounds=3, seed=8)
    assert not np.array_equal(a.final_params, c.final_params)


def test_fedprox_mu_zero_is_fedavg():
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    a = run_federated(data, strategy=FedAvg(), model=spec, rounds=3, seed=1)
    b = run_federated(data, strategy=FedProx(proximal_mu=0.0), model=spec, rounds=3, seed=1)
    np.testing.assert_array_equal(a.final_params, b.final_params)
