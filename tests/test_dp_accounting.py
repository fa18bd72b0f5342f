"""Accounting: securefed's epsilon is the dp-accounting library's for the same events."""

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import NeighboringRelation

from securefed import FedAvg, ModelSpec, run_federated
from securefed.channel import ChannelResult
from securefed.data import pima_federation
from securefed.dp import (
    CentralDP,
    LocalDP,
    RoundAccountant,
    calibrate_noise_multiplier,
    compute_epsilon,
    max_rounds_within,
)
from securefed.errors import ConfigurationError

# Tiny models: torch's intra-op thread pool only adds contention on a shared 2-core machine.
torch.set_num_threads(1)


def _library_epsilon(event, count, delta, relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                     kind="rdp"):
    acc = (dp_accounting.rdp.RdpAccountant(neighboring_relation=relation) if kind == "rdp"
           else dp_accounting.pld.PLDAccountant(neighboring_relation=relation))
    acc.compose(event, count)
    return acc.get_epsilon(delta)


def test_abadi_setting_matches_library_rdp_and_pld():
    # Abadi et al. 2016, Section 5: q = 0.01, sigma = 4, 10,000 steps, delta = 1e-5.
    event = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(4.0))
    for kind in ("rdp", "pld"):
        ours = compute_epsilon(noise_multiplier=4.0, sampling_rate=0.01, rounds=10_000,
                               delta=1e-5, accountant=kind)
        assert ours == pytest.approx(_library_epsilon(event, 10_000, 1e-5, kind=kind), rel=1e-12)
    # The paper's moments accountant reported about 1.26; the RDP/PLD bounds are tighter.
    rdp = compute_epsilon(noise_multiplier=4.0, sampling_rate=0.01, rounds=10_000, delta=1e-5)
    assert 0.8 < rdp < 1.26


def test_round_ledger_equals_library_event_by_event():
    led = RoundAccountant()
    lib = dp_accounting.rdp.RdpAccountant()
    events = [dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
              for q, z in [(0.5, 1.1), (0.5, 1.1), (0.25, 2.0), (1.0, 3.0)]]
    for e in events:
        led.compose(e)
        lib.compose(e)
        assert led.epsilon(delta=1e-6) == pytest.approx(lib.get_epsilon(1e-6), rel=1e-12)
    before = led.epsilon(delta=1e-6)
    trial = led.epsilon_if(events[0], delta=1e-6, count=3)
    lib.compose(events[0], 3)
    assert trial == pytest.approx(lib.get_epsilon(1e-6), rel=1e-12)
    assert led.epsilon(delta=1e-6) == before  # a what-if spends nothing


def test_run_history_reports_library_epsilon_each_round():
    """The engine samples 2 of 3 hospitals with a fixed size, from the seeded server
    generator, and records the sample: no amplification by sampling is claimed (the old
    accounting used the Poisson-subsampled event, a smaller epsilon that did not hold)."""
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    k = len(data.clients)
    dp = CentralDP(FedAvg(), clip_norm=0.5, noise_multiplier=1.3, clients_per_round=2, delta=1e-5)
    res = run_federated(data, strategy=dp, model=spec, rounds=3, seed=0, clients_per_round=2)
    event = dp_accounting.GaussianDpEvent(1.3)
    amplified = dp_accounting.PoissonSampledDpEvent(2 / k, dp_accounting.GaussianDpEvent(1.3))
    for r, rec in enumerate(res.history):
        assert rec.extra["epsilon"] == pytest.approx(_library_epsilon(event, r + 1, 1e-5), rel=1e-12)
        assert rec.extra["epsilon"] > 1.1 * _library_epsilon(amplified, r + 1, 1e-5)
        assert rec.extra["delta"] == 1e-5


def test_without_replacement_and_local_use_replace_one_events():
    ours = compute_epsilon(noise_multiplier=2.0, sampling_rate=0.5, rounds=7, delta=1e-5,
                           sampling="without_replacement", population=4)
    event = dp_accounting.SampledWithoutReplacementDpEvent(4, 2, dp_accounting.GaussianDpEvent(1.0))
    assert ours == pytest.approx(_library_epsilon(event, 7, 1e-5, NeighboringRelation.REPLACE_ONE))
    # local DP: replace-one, sensitivity 2C, written out as GaussianDpEvent(z / 2) and read
    # by the library under add/remove (the PLD accountant would double it again under its
    # REPLACE_ONE relation)
    local = LocalDP(FedAvg(), clip_norm=1.0, noise_multiplier=4.0, num_clients=3)
    zero = ChannelResult(weighted_sum=np.zeros(2), weight_sum=3.0, contributors=(0, 1, 2),
                         bytes_up={}, bytes_down={}, received=(), timings={})
    for r in range(2):
        local.before_round(r)
        local.server_aggregate(zero, rng=np.random.default_rng(0))
        local.end_round(r, completed=True)
    lib = _library_epsilon(dp_accounting.GaussianDpEvent(2.0), 2, 1e-5)
    assert local.epsilon() == pytest.approx(lib, rel=1e-12)


@pytest.mark.parametrize("kind,rate,rounds", [("rdp", 1.0, 20)])
def test_calibration_hits_target_from_below(kind, rate, rounds):
    z = calibrate_noise_multiplier(target_epsilon=3.0, delta=1e-5, rounds=rounds,
                                   sampling_rate=rate, accountant=kind)
    eps = compute_epsilon(noise_multiplier=z, rounds=rounds, delta=1e-5, sampling_rate=rate,
                          accountant=kind)
    assert eps <= 3.0
    assert eps > 2.99  # the smallest multiplier that fits: nearly all the budget is used
    assert compute_epsilon(noise_multiplier=z * 0.99, rounds=rounds, delta=1e-5,
                           sampling_rate=rate, accountant=kind) > 3.0


def test_wrapper_calibrates_from_target():
    dp = CentralDP(FedAvg(), clip_norm=1.0, target_epsilon=4.0, rounds=10, num_clients=3)
    assert dp.calibrated
    assert compute_epsilon(noise_multiplier=dp.noise_multiplier, rounds=10, delta=1e-5) <= 4.0


def test_max_rounds_within_brackets_the_target():
    t = max_rounds_within(target_epsilon=5.0, delta=1e-5, noise_multiplier=2.0)
    assert compute_epsilon(noise_multiplier=2.0, rounds=t, delta=1e-5) <= 5.0
    assert compute_epsilon(noise_multiplier=2.0, rounds=t + 1, delta=1e-5) > 5.0


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 1.5, float("nan")])
def test_delta_outside_open_unit_interval_is_refused(delta):
    with pytest.raises(ConfigurationError, match="delta"):
        compute_epsilon(noise_multiplier=1.0, rounds=1, delta=delta)
    with pytest.raises(ConfigurationError, match="delta"):
        CentralDP(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, num_clients=3, delta=delta)


def test_unreachable_targets_are_clear_errors():
    with pytest.raises(ConfigurationError, match="cannot be reached"):
        calibrate_noise_multiplier(target_epsilon=1e-4, delta=1e-5, rounds=50)
    with pytest.raises(ConfigurationError, match="cannot reach the target"):
        CentralDP(FedAvg(), clip_norm=1.0, noise_multiplier=0.3, target_epsilon=1.0, num_clients=3)
    with pytest.raises(ConfigurationError, match="noise_multiplier"):
        CentralDP(FedAvg(), clip_norm=1.0, num_clients=3)  # neither multiplier nor target
    with pytest.raises(ConfigurationError, match="accountant"):
        compute_epsilon(noise_multiplier=1.0, rounds=1, delta=1e-5, accountant="moments")
    with pytest.raises(ConfigurationError, match="noise_multiplier"):
        compute_epsilon(noise_multiplier=0.0, rounds=1, delta=1e-5)
    assert np.isfinite(compute_epsilon(noise_multiplier=0.5, rounds=1, delta=1e-5))
