"""The guarantees behind every epsilon: one test (or more) per way an epsilon could fail to
hold.  Each test fails on the accounting this package had before these checks existed.

1. what leaves a client has L2 norm <= C for every strategy x codec x DP mode;
2. noise nobody can recompute from the seed (unless reproducible noise is asked for, and then
   the run says it is not private);
3. the number of clients comes from the data;
4. no amplification by sampling unless the sample is Poisson, secret and unpublished;
5. the ledger travels with the model, and a target epsilon is a hard stop in every mode;
6. local DP with the PLD accountant: calibration and ledger agree;
7. every epsilon says what it protects;
8. distributed DP states what collusion with the server does.
"""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
import torch

from securefed import FedAvg, ModelSpec, PrivacyBudgetExceeded, run_federated
from securefed.channel import AggregationChannel, PlainChannel
from securefed.codec import Float32Codec
from securefed.compression import StochasticQuantizer, TopKSparsifier
from securefed.data import pima_federation
from securefed.dp import (
    DP_MECHANISMS,
    DPSGD,
    NOT_PRIVATE,
    CentralDP,
    DistributedDP,
    LocalDP,
    PrivacyLedger,
    make_dp_strategy,
    privacy_report,
)
from securefed.errors import ConfigurationError
from securefed.federated.fedmedheter import FedMedHeter
from securefed.federated.registry import STRATEGIES
from securefed.federated.types import FederationFacts
from securefed.secagg import secagg_channel_for

torch.set_num_threads(1)

DATA = pima_federation(seed=0)
MLP = ModelSpec("mlp", n_features=DATA.num_features, hidden=(16,))
LOGREG = ModelSpec("logreg", n_features=DATA.num_features)


def _rdp(event, count: int = 1, delta: float = 1e-5) -> float:
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(event, count)
    return acc.get_epsilon(delta)


def _pld(event, count: int = 1, delta: float = 1e-5) -> float:
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(event, count)
    return acc.get_epsilon(delta)


def _channel_for(dp) -> AggregationChannel:
    return secagg_channel_for(dp) if isinstance(dp, DistributedDP) else PlainChannel()


class SpyChannel(AggregationChannel):
    """Records every upload, then lets the real channel aggregate."""

    def __init__(self, inner: AggregationChannel) -> None:
        self.inner = inner
        self.name = inner.name
        self.stages = inner.stages
        self.uploads: list = []

    def aggregate(self, uploads, **kwargs):  # type: ignore[override]
        self.uploads.extend(uploads)
        return self.inner.aggregate(uploads, **kwargs)

    def broadcast_bytes(self, params, *, round_index):  # type: ignore[override]
        return self.inner.broadcast_bytes(params, round_index=round_index)


# ------------------------------------------------------------------------------ 1. sensitivity
CODECS = {
    "float32": Float32Codec(),
    "quant1": StochasticQuantizer(bits=1),
    "quant2": StochasticQuantizer(bits=2),
    "quant8": StochasticQuantizer(bits=8),
    "top0.3": TopKSparsifier(k_fraction=0.3),
    "top0.3-q2": TopKSparsifier(k_fraction=0.3, value_bits=2),
}


def _strategy(name: str, codec: str) -> object:
    if name == "fedmedheter":  # its own compression path, with error feedback
        return STRATEGIES.get(name)(compression=None if codec == "float32" else CODECS[codec],
                                    learning_rate=1.0)
    strategy = STRATEGIES.get(name)(learning_rate=1.0)
    strategy.codec = CODECS[codec]
    return strategy


@pytest.mark.parametrize("mode", sorted(DP_MECHANISMS))
@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_what_leaves_a_client_is_inside_the_clip_ball(strategy, codec, mode):
    """Real runs (an MLP of 145 parameters, 3 rounds, learning rate 1 so that updates are far
    outside the ball): every upload the channel receives decodes to a vector of norm <= C.
    For local DP, what the noise is added to has norm <= C and the wrapped strategy only ever
    sees the noisy vector."""
    C = 0.05
    dp = make_dp_strategy(mode, _strategy(strategy, codec), clip_norm=C,
                          noise_multiplier=0.5)
    spy = SpyChannel(_channel_for(dp))
    seen_by_inner: list[np.ndarray] = []
    noises: list[np.ndarray] = []
    if mode == "local":
        inner_process, sample = dp.inner.client_process, dp.noise.sample

        def record_inner(update, weight, **kw):
            seen_by_inner.append(np.array(update))
            return inner_process(update, weight, **kw)

        def record_noise(size, **kw):
            noises.append(sample(size, **kw))
            return noises[-1]

        dp.inner.client_process = record_inner
        dp.noise.sample = record_noise
    run_federated(DATA, strategy=dp, model=MLP, rounds=3, seed=0, channel=spy,
                  record_transcript=False)
    assert len(spy.uploads) == 3 * len(DATA.clients)
    codec_used = dp.codec
    for up in spy.uploads:
        decoded = codec_used.decode(up.payload, dim=MLP.num_params())
        np.testing.assert_array_equal(decoded, up.vector)  # the payload is what was bounded
        if mode != "local":
            assert np.linalg.norm(up.vector) <= C
    if mode == "local":
        assert len(seen_by_inner) == len(noises) == len(spy.uploads)
        for noisy, noise in zip(seen_by_inner, noises, strict=True):
            assert np.linalg.norm(noisy - noise) <= C * (1 + 1e-12)


def test_two_bit_quantisation_with_error_feedback_is_what_needed_the_bound():
    """FedMedHeter's default codec (2-bit stochastic quantisation, error feedback) pushes the
    clipped update out of the ball; the bound on the encoded message brings it back."""
    dp = CentralDP(FedMedHeter(learning_rate=1.0), clip_norm=0.05, noise_multiplier=0.5)
    spy = SpyChannel(PlainChannel())
    states = []
    inner_process = dp.inner.client_process

    def keep_state(update, weight, *, client_state, rng):
        out = inner_process(update, weight, client_state=client_state, rng=rng)
        states.append(float(np.linalg.norm(out[0])))
        return out

    dp.inner.client_process = keep_state
    run_federated(DATA, strategy=dp, model=MLP, rounds=3, seed=0, channel=spy,
                  record_transcript=False)
    assert max(states) > 1.2 * 0.05  # the codec's output left the ball ...
    assert max(np.linalg.norm(u.vector) for u in spy.uploads) <= 0.05  # ... what left did not


def test_a_codec_that_cannot_be_rescaled_is_refused():
    class Opaque:
        name = "opaque"

        def encode(self, vector, *, rng):
            return {"u": np.asarray(vector)}

        def decode(self, fields, *, dim):
            return np.asarray(fields["u"])

    strategy = FedAvg()
    strategy.codec = Opaque()
    with pytest.raises(ConfigurationError, match="cannot bound what it sends"):
        CentralDP(strategy, clip_norm=1.0, noise_multiplier=1.0)


# ------------------------------------------------------------------------------ 2. noise
@pytest.mark.parametrize("mode", sorted(DP_MECHANISMS))
def test_same_seed_draws_different_noise_unless_reproducible(mode):
    def run(**kw):
        dp = make_dp_strategy(mode, FedAvg(), clip_norm=0.5, noise_multiplier=1.0, **kw)
        return run_federated(DATA, strategy=dp, model=LOGREG, rounds=2, seed=3,
                             channel=_channel_for(dp), record_transcript=False)

    a, b = run(), run()
    assert not np.array_equal(a.final_params, b.final_params)
    assert privacy_report(a).private and privacy_report(a).client.warning is None
    c, d = run(reproducible_noise=True), run(reproducible_noise=True)
    np.testing.assert_array_equal(c.final_params, d.final_params)
    report = privacy_report(c)
    assert not report.private
    assert report.client.warning == NOT_PRIVATE and report.record.warning == NOT_PRIVATE
    assert c.settings["strategy"]["dp"]["warning"] == NOT_PRIVATE


def test_cli_default_noise_is_secure_and_the_reproducible_run_says_it_is_not_private(tmp_path):
    from securefed.cli import main

    args = ["train", "--dp", "central", "--clip-norm", "0.5", "--noise-multiplier", "1",
            "--rounds", "2", "--quiet"]
    finals = []
    for k in range(2):
        assert main([*args, "--out", str(tmp_path / f"s{k}")]) == 0
        saved = json.loads((tmp_path / f"s{k}" / "fedavg-dp-central-seed0.json").read_text())
        assert "warning" not in saved and saved["privacy"]["private"] is True
        finals.append(saved["final_params"])
    assert finals[0] != finals[1]
    assert main([*args, "--reproducible-noise", "--out", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "fedavg-dp-central-seed0.json").read_text())
    assert saved["warning"] == NOT_PRIVATE
    assert saved["privacy"]["client"]["warning"] == NOT_PRIVATE


def test_distributed_shares_never_come_from_the_server_generator():
    """Before, the simulation drew every client's share from the server's generator: the
    server could recompute the whole noise.  Now the channel's rng is ignored."""
    dp = DistributedDP(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, num_clients=3)
    a = dp.integer_noise.sample(50, scale=64.0, num_clients=3, rng=np.random.default_rng(0))
    b = dp.integer_noise.sample(50, scale=64.0, num_clients=3, rng=np.random.default_rng(0))
    assert not np.array_equal(a, b)


# ------------------------------------------------------------------------------ 3. num_clients
def test_declared_num_clients_must_match_the_federation():
    dp = CentralDP(FedAvg(), clip_norm=0.5, noise_multiplier=1.0, num_clients=300)
    with pytest.raises(ConfigurationError, match="num_clients=300 was declared .* federation "
                                                 "has 3 hospitals"):
        run_federated(DATA, strategy=dp, model=LOGREG, rounds=1, seed=0)
    undeclared = CentralDP(FedAvg(), clip_norm=0.5, noise_multiplier=1.0)
    res = run_federated(DATA, strategy=undeclared, model=LOGREG, rounds=3, seed=0,
                        record_transcript=False)
    assert undeclared.num_clients == 3
    assert res.final.extra["epsilon"] == pytest.approx(_rdp(dp_accounting.GaussianDpEvent(1.0), 3))


# ------------------------------------------------------------------------------ 4. sampling
@pytest.mark.parametrize("facts,amplified", [
    (dict(sampling="poisson", sample_secret=True, sample_published=False), True),
    (dict(sampling="poisson", sample_secret=False, sample_published=False), False),  # seeded
    (dict(sampling="poisson", sample_secret=True, sample_published=True), False),  # published
    (dict(sampling="fixed", sample_secret=True, sample_published=False), False),  # not Poisson
])
def test_amplification_only_for_a_secret_unpublished_poisson_sample(facts, amplified):
    dp = CentralDP(FedAvg(), clip_norm=1.0, noise_multiplier=1.2)
    dp.start_run(FederationFacts(num_clients=10, clients_per_round=2, **facts))
    assert dp.amplified is amplified
    gauss = dp_accounting.GaussianDpEvent(1.2)
    expected = dp_accounting.PoissonSampledDpEvent(0.2, gauss) if amplified else gauss
    dp.before_round(0)
    from securefed.channel import ChannelResult

    dp.server_aggregate(ChannelResult(weighted_sum=np.zeros(3), weight_sum=2.0,
                                      contributors=(0, 1), bytes_up={}, bytes_down={},
                                      received=(), timings={}), rng=np.random.default_rng(0))
    assert dp.epsilon() == pytest.approx(_rdp(expected), rel=1e-12)


def test_local_and_distributed_never_amplify():
    for cls in (LocalDP, DistributedDP):
        dp = cls(FedAvg(), clip_norm=1.0, noise_multiplier=1.2)
        dp.start_run(FederationFacts(num_clients=10, clients_per_round=2, sampling="poisson",
                                     sample_secret=True, sample_published=False))
        assert not dp.amplified


# ------------------------------------------------------------------------------ 5. the ledger
@pytest.mark.parametrize("mode", sorted(DP_MECHANISMS))
def test_ledger_continues_with_the_model(mode):
    def wrapper():
        return make_dp_strategy(mode, FedAvg(), clip_norm=0.5, noise_multiplier=1.0)

    dp = wrapper()
    first = run_federated(DATA, strategy=dp, model=LOGREG, rounds=4, seed=0,
                          channel=_channel_for(dp), record_transcript=False)
    saved = json.loads(json.dumps(first.to_dict()))  # what a result file holds
    dp2 = wrapper()
    with pytest.raises(ConfigurationError, match="no privacy_ledger was given"):
        run_federated(DATA, strategy=dp2, model=LOGREG, rounds=4, seed=1,
                      initial_params=np.asarray(saved["final_params"]))
    second = run_federated(DATA, strategy=dp2, model=LOGREG, rounds=4, seed=1,
                           channel=_channel_for(dp2), record_transcript=False,
                           initial_params=np.asarray(saved["final_params"]),
                           privacy_ledger=saved["privacy_ledger"])
    # eight rounds of the same mechanism, whatever run they ran in
    z = {"local": dp_accounting.GaussianDpEvent(0.5)}.get(mode, dp_accounting.GaussianDpEvent(1.0))
    assert second.history[-1].extra["epsilon"] == pytest.approx(_rdp(z, 8), rel=1e-6)
    assert privacy_report(second).client.rounds == 8
    assert second.history[0].extra["epsilon"] == pytest.approx(_rdp(z, 5), rel=1e-6)


def test_a_ledger_is_not_given_to_a_run_without_dp():
    dp = CentralDP(FedAvg(), clip_norm=0.5, noise_multiplier=1.0)
    first = run_federated(DATA, strategy=dp, model=LOGREG, rounds=1, seed=0)
    with pytest.raises(ConfigurationError, match="adds no differential privacy"):
        run_federated(DATA, strategy=FedAvg(), model=LOGREG, rounds=1, seed=0,
                      initial_params=first.final_params, privacy_ledger=first.privacy_ledger)


def test_cli_resume_carries_the_ledger(tmp_path):
    from securefed.cli import main

    base = ["train", "--dp", "central", "--clip-norm", "0.5", "--noise-multiplier", "1",
            "--rounds", "4", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    first = tmp_path / "a" / "fedavg-dp-central-seed0.json"
    assert main([*base, "--resume", str(first), "--out", str(tmp_path / "b")]) == 0
    saved = json.loads((tmp_path / "b" / "fedavg-dp-central-seed0.json").read_text())
    assert saved["privacy"]["client"]["rounds"] == 8
    assert saved["privacy"]["client"]["epsilon"] == pytest.approx(
        _rdp(dp_accounting.GaussianDpEvent(1.0), 8), rel=1e-6)


@pytest.mark.parametrize("mode", sorted(DP_MECHANISMS))
def test_target_epsilon_is_a_hard_stop_across_continued_runs(mode):
    target = 12.0
    z = 2.0 if mode == "local" else 1.0  # local: multiplier z / 2 per round (replace-one)
    per_round = dp_accounting.GaussianDpEvent(1.0)
    allowed = max(t for t in range(1, 50) if _rdp(per_round, t) <= target)
    assert allowed > 2

    def wrapper():
        return make_dp_strategy(mode, FedAvg(), clip_norm=0.5, noise_multiplier=z,
                                target_epsilon=target)

    dp = wrapper()
    first = run_federated(DATA, strategy=dp, model=LOGREG, rounds=2, seed=0,
                          channel=_channel_for(dp), record_transcript=False)
    dp2 = wrapper()
    with pytest.raises(PrivacyBudgetExceeded) as info:
        run_federated(DATA, strategy=dp2, model=LOGREG, rounds=50, seed=0,
                      channel=_channel_for(dp2), record_transcript=False,
                      initial_params=first.final_params, privacy_ledger=first.privacy_ledger)
    spent = _rdp(per_round, allowed)
    msg = str(info.value)
    assert f"stopped after {allowed} rounds of this model ({allowed - 2} in this run)" in msg
    assert f"epsilon {spent:.4g} spent" in msg and "target_epsilon=12.0" in msg
    partial = info.value.partial
    assert len(partial.history) == allowed - 2
    assert privacy_report(partial).client.rounds == allowed


def test_dpsgd_has_a_hard_stop_too():
    target = 6.0
    dp = DPSGD(FedAvg(batch_size=None), max_grad_norm=1.0, noise_multiplier=2.0,
               target_epsilon=target)
    with pytest.raises(PrivacyBudgetExceeded, match="example-level epsilon") as info:
        run_federated(DATA, strategy=dp, model=LOGREG, rounds=50, seed=0, record_transcript=False)
    # full batch: one unsampled Gaussian step per round for every hospital
    step = dp_accounting.GaussianDpEvent(2.0)
    allowed = max(t for t in range(1, 50) if _rdp(step, t) <= target)
    assert allowed > 1
    assert len(info.value.partial.history) == allowed
    assert f"stopped after {allowed} rounds" in str(info.value)
    assert f"epsilon {_rdp(step, allowed):.4g} spent" in str(info.value)
    report = privacy_report(info.value.partial)
    assert report.record.epsilon == pytest.approx(_rdp(step, allowed))
    assert math.isinf(report.client.epsilon)  # DP-SGD alone protects records, not hospitals


# ------------------------------------------------------------------------------ 6. LocalDP + PLD
@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_local_dp_calibration_and_ledger_agree(accountant):
    target, rounds = 8.0, 6
    dp = LocalDP(FedAvg(), clip_norm=0.5, target_epsilon=target, rounds=rounds,
                 accountant=accountant)
    res = run_federated(DATA, strategy=dp, model=LOGREG, rounds=rounds, seed=0,
                        record_transcript=False)
    eps = res.final.extra["epsilon"]
    assert target * 0.99 < eps <= target
    account = _pld if accountant == "pld" else _rdp
    half = dp_accounting.GaussianDpEvent(dp.noise_multiplier / 2.0)
    assert eps == pytest.approx(account(half, rounds), rel=1e-6)


# ------------------------------------------------------------------------------ 7. descriptions
def test_every_epsilon_says_what_it_protects():
    dp = CentralDP(FedAvg(), clip_norm=0.5, noise_multiplier=1.0, delta=1e-6)
    res = run_federated(DATA, strategy=dp, model=LOGREG, rounds=3, seed=0, record_transcript=False)
    report = privacy_report(json.loads(json.dumps(res.to_dict())))
    client, record = report.client, report.record
    assert (client.unit, client.neighbouring, client.delta) == ("hospital", "add/remove", 1e-6)
    assert client.accountant.startswith("RDP accountant (dp-accounting ")
    assert "server" in client.trust and client.mechanism == "central"
    assert client.epsilon == pytest.approx(_rdp(dp_accounting.GaussianDpEvent(1.0), 3, 1e-6))
    # a patient's record changes one hospital's update anywhere in the C-ball: replace-one,
    # sensitivity 2C, so the patient-level epsilon is that of multiplier z / 2
    assert (record.unit, record.neighbouring) == ("patient", "add/remove")
    assert record.epsilon == pytest.approx(_rdp(dp_accounting.GaussianDpEvent(0.5), 3, 1e-6))
    assert record.epsilon > 2 * client.epsilon
    label = client.label()
    for part in ("one hospital", "add/remove", "delta 1e-06", "RDP", "3 rounds"):
        assert part in label
    assert "against the server" in report.collusion_note


# ------------------------------------------------------------------------------ 8. collusion
def test_distributed_dp_states_the_epsilon_under_collusion():
    z, rounds = 1.0, 4
    dp = DistributedDP(FedAvg(), clip_norm=0.5, noise_multiplier=z)
    res = run_federated(DATA, strategy=dp, model=LOGREG, rounds=rounds, seed=0,
                        channel=secagg_channel_for(dp), record_transcript=False)
    report = privacy_report(res)
    rho = 0.5 / z ** 2  # tau is negligible at these variances
    assert report.client.epsilon == pytest.approx(_rdp(dp_accounting.ZCDpEvent(rho), rounds), rel=1e-6)
    assert [s.colluding_hospitals for s in report.collusion] == [1, 2]
    # the server plus one of three hospitals removes a third of the noise variance
    assert report.collusion[0].epsilon == pytest.approx(
        _rdp(dp_accounting.ZCDpEvent(rho * 3 / 2), rounds), rel=1e-6)
    assert report.collusion[1].epsilon == pytest.approx(
        _rdp(dp_accounting.ZCDpEvent(rho * 3), rounds), rel=1e-6)
    assert "colluding" in report.collusion[0].label()


def test_ledger_round_trips_through_json():
    dp = DistributedDP(FedAvg(), clip_norm=0.5, noise_multiplier=2.0)
    res = run_federated(DATA, strategy=dp, model=LOGREG, rounds=2, seed=0,
                        channel=secagg_channel_for(dp), record_transcript=False)
    ledger = PrivacyLedger.from_dict(json.loads(json.dumps(res.privacy_ledger)))
    assert ledger.report().to_dict() == privacy_report(res).to_dict()
    with pytest.raises(ConfigurationError, match="not a saved privacy ledger"):
        PrivacyLedger.from_dict({"rounds": []})
