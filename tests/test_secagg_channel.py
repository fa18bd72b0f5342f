"""SecAggChannel inside the round engine: same model as in the clear up to quantisation."""

import numpy as np
import pytest

from securefed import FedAvg, FedProx, ModelSpec, PlainChannel, run_federated
from securefed.data import pima_federation
from securefed.errors import ConfigurationError, InvalidDataError, ProtocolAbort
from securefed.federated import DropoutPlan, Float32Codec, Upload
from securefed.secagg import FixedPointEncoder, SecAggChannel


def _uploads(n=5, dim=20, seed=0, weights=None):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w = float(weights[i]) if weights is not None else float(rng.integers(10, 100))
        v = w * rng.normal(0, 0.05, dim)
        out.append(Upload(client_id=10 + i, vector=v, weight=w, payload={}))
    return out


def _aggregate(channel, uploads, dim, drops=None, seed=0):
    return channel.aggregate(uploads, round_index=0, dim=dim, codec=Float32Codec(),
                             dropouts=DropoutPlan(drops or {}), rng=np.random.default_rng(seed))


def test_channel_sum_within_quantisation_bound():
    ups = _uploads()
    ch = SecAggChannel(clip_range=50.0, max_weight=200.0)
    res = _aggregate(ch, ups, 20)
    scale = res.revealed["scale"]
    exact = sum(u.vector for u in ups)
    # each client's stochastic rounding moves a coordinate by less than 1 / scale
    assert np.max(np.abs(res.weighted_sum - exact)) < len(ups) / scale
    assert abs(res.weight_sum - sum(u.weight for u in ups)) < len(ups) / scale
    assert res.contributors == tuple(u.client_id for u in ups)
    assert set(res.timings) >= {"client_mean", "server_total", "client.masked_input", "server.unmask"}


def test_channel_dropouts_after_sharing_and_before_unmask():
    ups = _uploads(n=7)
    ch = SecAggChannel(clip_range=50.0, max_weight=200.0)  # t = 7 // 2 + 1 = 4
    res = _aggregate(ch, ups, 20, drops={11: "masked_input", 12: "unmask", 13: "share_keys"})
    assert res.contributors == (10, 12, 14, 15, 16)  # 12 sent its masked input, then dropped
    exact = sum(u.vector for u in ups if u.client_id in res.contributors)
    assert np.max(np.abs(res.weighted_sum - exact)) < 7 / res.revealed["scale"]
    assert res.revealed["dropped_after_sharing"] == (11,)
    assert res.bytes_up[13] < res.bytes_up[11] < res.bytes_up[12] < res.bytes_up[10]
    with pytest.raises(ProtocolAbort, match="below the threshold t = 4"):
        _aggregate(ch, ups, 20, drops=dict.fromkeys([10, 11, 12, 13], "masked_input"))


def test_channel_received_holds_only_masked_and_encrypted_data():
    ups = _uploads(n=4, dim=3000)
    res = _aggregate(SecAggChannel(clip_range=50.0, max_weight=200.0), ups, 3000)
    stages = {m.stage for m in res.received}
    assert stages == set(SecAggChannel.stages)
    masked = [m for m in res.received if m.stage == "masked_input"]
    assert len(masked) == 4
    for m in masked:
        y = m.content["masked"]
        assert y.shape == (3001,) and y.dtype == np.uint32
        assert m.nbytes <= 4 * 3001 + 100
    for m in res.received:
        assert "update" not in m.content and "vector" not in m.content
    # bandwidth: what a client sends over the raw d * b / 8 bytes of its input
    assert max(res.bytes_up.values()) / (3000 * 4) < 1.1


def test_bad_uploads_are_refused():
    ch = SecAggChannel(clip_range=50.0, max_weight=200.0)
    ups = _uploads(n=3)
    with pytest.raises(InvalidDataError, match="duplicate client id"):
        _aggregate(ch, ups + [ups[0]], 20)
    bad = Upload(client_id=99, vector=np.full(20, np.nan), weight=1.0, payload={})
    with pytest.raises(InvalidDataError, match="NaN or inf"):
        _aggregate(ch, ups + [bad], 20)
    short = Upload(client_id=99, vector=np.zeros(19), weight=1.0, payload={})
    with pytest.raises(InvalidDataError, match="shape"):
        _aggregate(ch, ups + [short], 20)
    heavy = Upload(client_id=99, vector=np.zeros(20), weight=500.0, payload={})
    with pytest.raises(InvalidDataError, match="weight"):
        _aggregate(ch, ups + [heavy], 20)
    with pytest.raises(ConfigurationError, match="fixed-point overflow"):
        _aggregate(SecAggChannel(clip_range=50.0, max_weight=200.0, scale=2.0**30), ups, 20)


def test_clipping_warns():
    ups = _uploads(n=3)
    with pytest.warns(UserWarning, match="clipped"):
        _aggregate(SecAggChannel(clip_range=0.01, max_weight=200.0), ups, 20)


class _RecordingNoise:
    """Integer noise that remembers what it handed out (the DP hook's interface)."""

    def __init__(self):
        self.calls = []

    def sample(self, dim, *, scale, num_clients, rng):
        z = rng.integers(-1000, 1000, dim).astype(np.int64)
        self.calls.append((dim, scale, num_clients, z))
        return z


def test_integer_noise_hook_adds_noise_to_update_coordinates_only():
    ups = _uploads(n=4)
    noise = _RecordingNoise()
    ch = SecAggChannel(clip_range=50.0, max_weight=200.0, scale=2.0**12, integer_noise=noise)
    res = _aggregate(ch, ups, 20)
    assert len(noise.calls) == 4
    assert all(c[0] == 20 and c[1] == 2.0**12 and c[2] == 4 for c in noise.calls)
    total_noise = sum(c[3] for c in noise.calls) / 2.0**12
    exact = sum(u.vector for u in ups)
    assert np.max(np.abs(res.weighted_sum - exact - total_noise)) < 4 / 2.0**12
    assert abs(res.weight_sum - sum(u.weight for u in ups)) < 4 / 2.0**12


def test_secagg_plus_mode_in_channel():
    ups = _uploads(n=30, dim=10)
    ch = SecAggChannel(clip_range=50.0, max_weight=200.0, secagg_plus=True, degree=8, threshold=5)
    res = _aggregate(ch, ups, 10, drops={10: "masked_input", 20: "unmask"})
    assert res.revealed["degree"] == 8
    exact = sum(u.vector for u in ups if u.client_id != 10)
    assert np.max(np.abs(res.weighted_sum - exact)) < 30 / res.revealed["scale"]


def _strategies():
    from securefed.federated import FedMedHeter

    return [("fedavg", FedAvg()), ("fedprox", FedProx(proximal_mu=0.1)),
            ("fedmedheter", FedMedHeter())]


@pytest.mark.parametrize("name,strategy", _strategies(), ids=[n for n, _ in _strategies()])
def test_engine_same_model_as_in_the_clear(name, strategy):
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    ch = SecAggChannel(clip_range=20.0, max_weight=100.0)
    plain1 = run_federated(data, strategy=strategy, model=spec, rounds=1, seed=3, channel=PlainChannel())
    sec1 = run_federated(data, strategy=strategy, model=spec, rounds=1, seed=3, channel=ch)
    n = len(data.clients)
    scale = ch.encoder_for(n).scale
    # weighted mean S / W; each client's rounding moves S and W by < 1 / scale per coordinate:
    # |S'/W' - S/W| <= (n / scale) (1 + max|S/W|) / (W - n / scale)
    W = sum(m.content["weight"] for m in plain1.transcript[0].received)
    mean = plain1.transcript[0].revealed_update
    bound = (n / scale) * (1 + np.max(np.abs(mean))) / (W - n / scale)
    assert np.max(np.abs(sec1.transcript[0].revealed_update - mean)) <= bound
    if name != "fedmedheter":  # plain server step w + mean: the same bound on the model
        assert np.max(np.abs(sec1.final_params - plain1.final_params)) <= bound
    assert sec1.transcript[0].contributors == tuple(range(n))
    tr = sec1.transcript[0]
    assert {m.stage for m in tr.received} == set(SecAggChannel.stages)
    assert sec1.history[-1].bytes_up > 0 and sec1.channel == "secagg"


def test_engine_multi_round_close_and_reproducible():
    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    ch = SecAggChannel(clip_range=20.0, max_weight=100.0)
    plain = run_federated(data, strategy=FedAvg(), model=spec, rounds=2, seed=3, channel=PlainChannel())
    sec = run_federated(data, strategy=FedAvg(), model=spec, rounds=2, seed=3, channel=ch)
    again = run_federated(data, strategy=FedAvg(), model=spec, rounds=2, seed=3, channel=ch)
    np.testing.assert_array_equal(sec.final_params, again.final_params)
    # the per-round error (bound of the test above, < 1e-6 here) is carried into round 2 by
    # local training, a smooth map with step 0.1: allow ten times the one-round bound per round
    n, W = len(data.clients), sum(c.num_examples for c in data.clients)
    scale = ch.encoder_for(n).scale
    top = max(np.max(np.abs(r.revealed_update)) for r in plain.transcript)
    bound = (n / scale) * (1 + top) / (W - n / scale)
    assert np.max(np.abs(sec.final_params - plain.final_params)) <= 2 * 10 * bound
    assert sec.history[-1].bytes_up > 0 and sec.channel == "secagg"
    tr = sec.transcript[-1]
    assert {m.stage for m in tr.received} == set(SecAggChannel.stages)


def test_small_rounds():
    """Fewer than the minimum of 3 contributors: refused by default; accepted only when the
    minimum is lowered explicitly (with a warning).  Six clients in SecAgg+ mode fall back
    to the complete graph with a majority threshold, and say so."""
    for n in (1, 2):
        with pytest.raises(ProtocolAbort, match=f"{n} contributor\\(s\\), below the minimum of 3"):
            _aggregate(SecAggChannel(clip_range=50.0, max_weight=200.0), _uploads(n=n), 20)
    one = _uploads(n=1)
    with pytest.warns(UserWarning, match="min_clients = 1"):
        ch = SecAggChannel(clip_range=50.0, max_weight=200.0, min_clients=1)
    # one contributor means t = 1, which malicious mode refuses even with the minimum lowered
    with pytest.raises(ConfigurationError, match="threshold t = 1: .*malicious mode requires t >= 2"):
        _aggregate(ch, one, 20)
    with pytest.warns(UserWarning, match="min_clients = 1"):
        ch = SecAggChannel(clip_range=50.0, max_weight=200.0, min_clients=1,
                           mode="honest-but-curious")
    res = _aggregate(ch, one, 20)
    assert np.max(np.abs(res.weighted_sum - one[0].vector)) < 1 / res.revealed["scale"]
    ups = _uploads(n=6)
    with pytest.warns(UserWarning, match="complete graph"):
        res = _aggregate(SecAggChannel(clip_range=50.0, max_weight=200.0, secagg_plus=True), ups, 20)
    assert res.revealed["degree"] == 5 and res.revealed["threshold"] == 4
    exact = sum(u.vector for u in ups)
    assert np.max(np.abs(res.weighted_sum - exact)) < 6 / res.revealed["scale"]


def test_honest_but_curious_mode_is_explicit_and_cheaper():
    ups = _uploads(n=5)
    mal = _aggregate(SecAggChannel(clip_range=50.0, max_weight=200.0), ups, 20)
    hbc_ch = SecAggChannel(clip_range=50.0, max_weight=200.0, mode="honest-but-curious")
    hbc = _aggregate(hbc_ch, ups, 20)
    assert mal.revealed["mode"] == "malicious" and hbc.revealed["mode"] == "honest-but-curious"
    assert "consistency" in SecAggChannel().stages and "consistency" not in hbc_ch.stages
    assert {m.stage for m in hbc.received} == set(hbc_ch.stages)
    # no signatures, no consistency round: fewer bytes per client
    assert all(hbc.bytes_up[c] < mal.bytes_up[c] for c in hbc.bytes_up)
    exact = sum(u.vector for u in ups)
    for res in (mal, hbc):
        assert np.max(np.abs(res.weighted_sum - exact)) < 5 / res.revealed["scale"]


def test_identities_persist_across_rounds_and_can_be_given():
    from securefed.identity import generate_identities

    ids, roster = generate_identities([10, 11, 12, 13])
    ch = SecAggChannel(clip_range=50.0, max_weight=200.0, identities=ids, roster=roster)
    ups = _uploads(n=4)
    _aggregate(ch, ups, 20)
    assert ch._pki_for([10, 11])[1] is roster
    from securefed.errors import KeyMaterialError

    with pytest.raises(KeyMaterialError, match="no identity key for clients \\[14\\]"):
        _aggregate(ch, ups + _uploads(n=5)[4:], 20)
    with pytest.raises(KeyMaterialError, match="both identities and roster"):
        SecAggChannel(roster=roster)


def test_client_side_randomness_comes_from_each_client_never_from_the_server_generator():
    """Rounding and noise shares draw from each upload's own generator: the server's stream
    (which central DP draws from next) is left untouched, the same client streams give the
    same sum, and other client streams another."""
    import dataclasses

    from securefed.federated.round import seed_streams

    ups = _uploads(n=4, dim=200)
    streams = seed_streams(7, 14)

    def with_streams(round_index):
        return [dataclasses.replace(u, rng=streams.channel_rng(u.client_id, round_index))
                for u in ups]

    noise = _RecordingNoise()
    ch = SecAggChannel(clip_range=50.0, max_weight=200.0, scale=2.0**12, integer_noise=noise)
    server = np.random.default_rng(3)
    before = server.bit_generator.state
    first = ch.aggregate(with_streams(0), round_index=0, dim=200, codec=Float32Codec(),
                         dropouts=DropoutPlan(), rng=server)
    assert server.bit_generator.state == before
    again = ch.aggregate(with_streams(0), round_index=0, dim=200, codec=Float32Codec(),
                         dropouts=DropoutPlan(), rng=np.random.default_rng(99))
    np.testing.assert_array_equal(first.weighted_sum, again.weighted_sum)
    other = ch.aggregate(with_streams(1), round_index=0, dim=200, codec=Float32Codec(),
                         dropouts=DropoutPlan(), rng=server)
    assert not np.array_equal(first.weighted_sum, other.weighted_sum)
    # each client's share came from its own stream: rounding first, then the share
    for k, u in enumerate(ups):
        own = streams.channel_rng(u.client_id, 0)
        enc = FixedPointEncoder(clip_range=50.0, max_weight=200.0, scale=2.0**12, bits=32)
        enc.encode_signed(np.asarray(u.vector), float(u.weight), rng=own)
        np.testing.assert_array_equal(noise.calls[k][3], own.integers(-1000, 1000, 200))


def test_channel_streams_leave_the_client_stream_alone():
    from securefed.federated.round import seed_streams

    s = seed_streams(5, 3)
    plain = s.client_rng(1).random(5)
    rng = s.client_rng(1)
    s.channel_rng(1, 0).random(5)
    np.testing.assert_array_equal(rng.random(5), plain)
    draws = {(c, r): s.channel_rng(c, r).random() for c in range(3) for r in range(3)}
    assert len(set(draws.values())) == 9  # one stream per client and round
    # a client's own spawned children (personalisation) are other streams
    child = s.client_rng(1).spawn(1)[0].random()
    assert child not in draws.values()
    with pytest.raises(ConfigurationError, match="round_index must be an integer >= 0, got -1"):
        s.channel_rng(0, -1)
    with pytest.raises(ConfigurationError, match=r"client id must be in \[0, 3\), got 3"):
        s.channel_rng(3, 0)
