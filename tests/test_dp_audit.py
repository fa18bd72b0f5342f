"""The one-run empirical audit (Steinke, Nasr and Jagielski 2023): its bound against an
independent computation, and the audit against a correct and a broken mechanism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from securefed import FedAvg
from securefed.dp import CentralDP, audit_one_run, epsilon_lower_bound, one_run_p_value
from securefed.errors import ConfigurationError

torch.set_num_threads(1)


def _p_value_by_hand(m, r, v, eps, delta):
    """The same bound written with exact binomial sums (math.comb), term by term."""
    p = math.exp(eps) / (1 + math.exp(eps))

    def pmf(k):
        return math.comb(r, k) * p ** k * (1 - p) ** (r - k)

    tail = sum(pmf(k) for k in range(v, r + 1))
    alpha = max(sum(pmf(k) for k in range(v - i, v)) / i for i in range(1, v + 1))
    return min(1.0, tail + 2 * m * delta * alpha)


@pytest.mark.parametrize("m,r,v,eps,delta", [
    (100, 20, 17, 0.5, 0.0), (100, 20, 17, 0.5, 1e-4), (1000, 60, 55, 2.0, 1e-5),
    (50, 10, 10, 0.0, 1e-3), (200, 40, 25, 1.2, 1e-6),
])
def test_p_value_matches_the_formula_computed_by_hand(m, r, v, eps, delta):
    ours = one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)
    assert ours == pytest.approx(_p_value_by_hand(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


def test_lower_bound_for_all_correct_guesses_is_the_closed_form():
    # delta = 0, every guess right: P[V >= r] = p^r, so the bound solves p^r = beta
    for r, conf in ((50, 0.95), (200, 0.99)):
        p = (1 - conf) ** (1 / r)
        b = epsilon_lower_bound(canaries=1000, guesses=r, correct=r, delta=0.0, confidence=conf)
        assert b == pytest.approx(math.log(p / (1 - p)), rel=1e-6)
    # guessing at chance level proves nothing
    assert epsilon_lower_bound(canaries=1000, guesses=100, correct=50, delta=1e-5) == 0.0
    with pytest.raises(ConfigurationError, match="correct <= guesses"):
        one_run_p_value(canaries=10, guesses=5, correct=6, epsilon=1.0, delta=0.0)


@pytest.mark.parametrize("mechanism", ["central", "local", "distributed"])
def test_audit_of_a_correct_mechanism_stays_below_the_accountant(mechanism):
    audit = audit_one_run(mechanism, clip_norm=0.5, noise_multiplier=1.0, rounds=5,
                          canaries=200, rng=np.random.default_rng(1))
    assert audit.upper.unit == "hospital"
    assert audit.upper.neighbouring == ("replace-one" if mechanism == "local" else "add/remove")
    assert 0.0 < audit.epsilon_lower <= audit.upper.epsilon
    assert audit.consistent and audit.correct <= audit.guesses <= 200


def test_audit_catches_noise_smaller_than_claimed():
    class Broken(CentralDP):
        @property
        def noise_std(self) -> float:  # claims z = 4, adds a hundredth of that
            return 0.01 * self.noise_multiplier * self.clip_norm

    broken = Broken(FedAvg(), clip_norm=0.5, noise_multiplier=4.0)
    audit = audit_one_run("central", clip_norm=0.5, noise_multiplier=4.0, rounds=5, canaries=200,
                          wrapper=broken, rng=np.random.default_rng(2))
    assert audit.epsilon_lower > audit.upper.epsilon
    assert not audit.consistent
    honest = audit_one_run("central", clip_norm=0.5, noise_multiplier=4.0, rounds=5,
                           canaries=200, rng=np.random.default_rng(2))
    assert honest.consistent


def test_audit_for_a_run_uses_its_settings_and_matches_its_epsilon():
    import json

    from securefed import ModelSpec, run_federated
    from securefed.data import pima_federation
    from securefed.dp import LocalDP, audit_for_run

    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    dp = LocalDP(FedAvg(), clip_norm=0.5, target_epsilon=30.0, rounds=4)  # calibrated z
    run = run_federated(data, strategy=dp, model=spec, rounds=4, seed=0, record_transcript=False)
    audit = audit_for_run(json.loads(json.dumps(run.to_dict())), canaries=100,
                          rng=np.random.default_rng(3))
    assert audit.mechanism == "local" and audit.rounds == 4
    assert audit.noise_multiplier == dp.noise_multiplier
    assert audit.upper.epsilon == pytest.approx(run.final.extra["epsilon"], rel=1e-9)
    assert audit.consistent
    plain = run_federated(data, strategy=FedAvg(), model=spec, rounds=1, seed=0)
    assert audit_for_run(plain) is None
