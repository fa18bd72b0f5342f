"""The masking protocol: exact recovery under dropouts, aborts, and refusal of bad messages.

The attacks of a server that deviates from the protocol are in
``tests/test_secagg_malicious.py``."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from securefed.errors import InvalidDataError, MessageRejected, ProtocolAbort
from securefed.identity import generate_identities
from securefed.secagg import (
    HONEST_BUT_CURIOUS,
    MALICIOUS,
    STAGES,
    SecAggClient,
    SecAggServer,
    harary_graph,
    run_round,
)
from securefed.secagg.messages import SHARE_CIPHERTEXT_BYTES, ShareDelivery


def _alive(drops):
    def alive(cid, stage):
        return cid not in drops or STAGES.index(stage) < STAGES.index(drops[cid])
    return alive


def _inputs(ids, length, bits, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.uint32 if bits <= 32 else np.uint64
    return {i: (rng.integers(0, 2**63, length, dtype=np.uint64) >> np.uint64(64 - bits)).astype(dt)
            for i in ids}


def _expected(xs, ids, bits):
    total = 0
    for i in ids:
        total = total + xs[i].astype(object)
    return np.array([int(v) % (1 << bits) for v in np.atleast_1d(total)], dtype=object)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 7),
    data=st.data(),
    length=st.integers(1, 12),
    bits=st.sampled_from([8, 16, 31, 32, 64]),
)
def test_recovered_sum_is_exact_for_any_dropouts(n, data, length, bits):
    """Honest-but-curious mode, named explicitly: any threshold 1 <= t <= n and no minimum
    number of contributors (both are only allowed in this mode and with min_clients=1)."""
    t = data.draw(st.integers(1, n), label="t")
    ids = sorted(data.draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True)))
    stages = tuple(s for s in STAGES if s != "consistency")
    drops = {i: s for i in ids
             if (s := data.draw(st.sampled_from((None,) + stages), label=f"drop{i}")) is not None}
    xs = _inputs(ids, length, bits)
    alive = _alive(drops)
    sets = [[i for i in ids if alive(i, s)] for s in stages]  # U1, U2, U3, U5
    kw = dict(round_index=5, threshold=t, bits=bits, length=length, alive=alive,
              mode=HONEST_BUT_CURIOUS, min_clients=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sub-majority thresholds warn in this mode
        if any(len(u) < t for u in sets):
            with pytest.raises(ProtocolAbort, match=f"threshold t = {t}"):
                run_round(ids, xs.__getitem__, **kw)
            return
        out = run_round(ids, xs.__getitem__, **kw)
    assert list(out.survivors) == sets[2]
    assert [int(v) for v in out.total] == list(_expected(xs, sets[2], bits))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 7), data=st.data(), length=st.integers(1, 8))
def test_malicious_mode_recovers_the_sum_or_aborts(n, data, length):
    """The default mode, with every majority threshold and dropouts at any of its five
    stages (including the consistency round): the exact sum over U3, or an abort naming the
    threshold or the minimum of 3 contributors."""
    t = data.draw(st.integers(n // 2 + 1, n), label="t")
    ids = list(range(n))
    drops = {i: s for i in ids
             if (s := data.draw(st.sampled_from((None,) + STAGES), label=f"drop{i}")) is not None}
    xs = _inputs(ids, length, 32)
    alive = _alive(drops)
    sets = [[i for i in ids if alive(i, s)] for s in STAGES]  # U1, U2, U3, U4, U5
    if any(len(u) < max(t, 3) for u in sets):
        with pytest.raises(ProtocolAbort, match=f"threshold t = {t}|minimum of 3"):
            run_round(ids, xs.__getitem__, round_index=1, threshold=t, bits=32, length=length,
                      alive=alive)
        return
    out = run_round(ids, xs.__getitem__, round_index=1, threshold=t, bits=32, length=length,
                    alive=alive)
    assert out.mode == MALICIOUS and list(out.signed) == sets[3]
    assert list(out.survivors) == sets[2]
    assert [int(v) for v in out.total] == list(_expected(xs, sets[2], 32))


@pytest.mark.parametrize("drop_stage", ["share_keys", "masked_input", "unmask"])
def test_secagg_plus_graph_recovers_the_sum(drop_stage):
    ids = list(range(40))
    graph = harary_graph(ids, degree=10)
    xs = _inputs(ids, 30, 32, seed=3)
    drops = {i: drop_stage for i in (2, 11, 17, 29)}
    out = run_round(ids, xs.__getitem__, round_index=0, threshold=6, bits=32, length=30,
                    graph=graph, alive=_alive(drops))
    survivors = [i for i in ids if i not in drops or drop_stage == "unmask"]
    assert list(out.survivors) == survivors
    assert [int(v) for v in out.total] == list(_expected(xs, survivors, 32))
    # each client only talks to its neighbours: about 10 ciphertexts, not 39
    share_msgs = [m for m in out.received if m.stage == "share_keys"]
    assert all(m.content["count"] == 10 for m in share_msgs)


def test_abort_names_the_counts():
    ids = list(range(6))
    xs = _inputs(ids, 4, 32)
    drops = {0: "masked_input", 1: "masked_input", 2: "masked_input"}
    with pytest.raises(ProtocolAbort, match=r"only 3 clients sent masked inputs, below the threshold t = 4"):
        run_round(ids, xs.__getitem__, round_index=0, threshold=4, bits=32, length=4,
                  alive=_alive(drops))
    drops = {0: "unmask", 1: "unmask", 2: "unmask"}
    with pytest.raises(ProtocolAbort, match=r"only 3 clients answered the unmask stage"):
        run_round(ids, xs.__getitem__, round_index=0, threshold=4, bits=32, length=4,
                  alive=_alive(drops))


def test_masked_vector_is_indistinguishable_from_uniform():
    """One client's masked input, for a constant input, passes a chi-square test of
    uniformity on Z_256; the same test rejects the unmasked input and a weak mask."""
    ids, length, bits = [0, 1, 2], 60_000, 8
    xs = {i: np.full(length, 7, dtype=np.uint32) for i in ids}
    out = run_round(ids, xs.__getitem__, round_index=0, threshold=2, bits=bits, length=length)
    ys = [m.content["masked"] for m in out.received if m.stage == "masked_input"]
    assert len(ys) == 3
    for y in ys:
        assert chisquare(np.bincount(y, minlength=256)).pvalue > 1e-5
    assert chisquare(np.bincount(xs[0], minlength=256)).pvalue < 1e-12
    weak = (xs[0] + (np.random.default_rng(0).integers(0, 16, length))) % 256  # 4-bit mask
    assert chisquare(np.bincount(weak, minlength=256)).pvalue < 1e-12
    # and the sum is still exact
    assert (out.total == (7 * 3) % 256).all()


def test_server_transcript_holds_no_plaintext():
    ids = list(range(4))
    xs = {i: np.full(16, 1000 + i, dtype=np.uint32) for i in ids}
    out = run_round(ids, xs.__getitem__, round_index=0, threshold=3, bits=32, length=16)
    for m in out.received:
        for value in m.content.values():
            raw = value.tobytes() if isinstance(value, np.ndarray) else bytes(value)
            for x in xs.values():
                assert x.tobytes()[:8] not in raw


# ----------------------------------------------------------------------------- bad messages

class _Round:
    """A hand-driven round, to inject bad messages between the stages."""

    def __init__(self, n=4, t=3, length=8, round_index=0, mode=MALICIOUS):
        self.ids = list(range(n))
        self.length = length
        self.identities, self.roster = generate_identities(self.ids)
        kw = {} if mode != MALICIOUS else {"roster": self.roster}
        self.server = SecAggServer(self.ids, round_index=round_index, threshold=t, bits=32,
                                   length=length, mode=mode, **kw)
        self.clients = {i: SecAggClient(i, session=self.server.session, round_index=round_index,
                                        bits=32, length=length, mode=mode,
                                        **({} if mode != MALICIOUS else
                                           {"identity": self.identities[i], "roster": self.roster}))
                        for i in self.ids}

    def advertise(self):
        for i, c in self.clients.items():
            self.server.receive(i, c.advertise_keys())
        return self.server.close_advertise_keys()

    def share(self):
        dirs = self.advertise()
        for i, c in self.clients.items():
            self.server.receive(i, c.share_keys(dirs[i]))
        return self.server.close_share_keys()

    def mask(self):
        deliveries = self.share()
        for i, c in self.clients.items():
            self.server.receive(i, c.masked_input(deliveries[i], np.full(self.length, i, np.uint32)))
        return self.server.close_masked_input()

    def consistency(self):
        requests = self.mask()
        for i, c in self.clients.items():
            self.server.receive(i, c.consistency(requests[i]))
        return self.server.close_consistency()


def test_wrong_stage_round_session_and_sender_are_rejected():
    r = _Round()
    adv = r.clients[0].advertise_keys()
    with pytest.raises(MessageRejected, match="from client 1"):
        r.server.receive(1, adv)  # claims sender 0, arrives from 1
    r.server.receive(0, adv)
    with pytest.raises(MessageRejected, match="duplicate"):
        r.server.receive(0, adv)
    for i in (1, 2, 3):
        r.server.receive(i, r.clients[i].advertise_keys())
    dirs = r.server.close_advertise_keys()
    with pytest.raises(MessageRejected, match="expected 'share_keys'"):
        r.server.receive(0, adv)  # an advertise message during share_keys
    with pytest.raises(MessageRejected, match="at stage 'share_keys'"):
        r.clients[0].unmask(dirs[0])
    other = _Round(round_index=1)
    other_adv = other.clients[0].advertise_keys()
    with pytest.raises(MessageRejected):
        r.server.receive(0, other_adv)
    with pytest.raises(MessageRejected, match="addressed to client 1"):
        r.clients[0].share_keys(dirs[1])


def test_message_from_another_round_is_rejected():
    a, b = _Round(round_index=0), _Round(round_index=1)
    b.server.session = a.server.session  # even with the same session id
    for c in b.clients.values():
        c.session = a.server.session
    with pytest.raises(MessageRejected, match="for round 0, expected round 1"):
        b.server.receive(0, a.clients[0].advertise_keys())


def test_tampered_and_replayed_share_ciphertexts_are_rejected():
    r = _Round()
    deliveries = r.share()
    d = ShareDelivery.from_bytes(deliveries[0])
    ct = bytearray(d.ciphertexts)
    ct[30] ^= 0x01
    tampered = ShareDelivery(d.session, d.round_index, d.recipient, d.senders, bytes(ct)).to_bytes()
    with pytest.raises(MessageRejected, match="authentication failed"):
        r.clients[0].masked_input(tampered, np.zeros(8, np.uint32))
    # the same ciphertext delivered twice
    dup = ShareDelivery(d.session, d.round_index, d.recipient,
                        np.concatenate([d.senders, d.senders[:1]]),
                        d.ciphertexts + d.ciphertexts[:SHARE_CIPHERTEXT_BYTES]).to_bytes()
    with pytest.raises(MessageRejected, match="replay"):
        r.clients[0].masked_input(dup, np.zeros(8, np.uint32))
    # a ciphertext meant for client 1, re-addressed to client 0
    d1 = ShareDelivery.from_bytes(deliveries[1])
    j = list(d1.senders).index(2)
    i = list(d.senders).index(2)
    swapped = bytearray(d.ciphertexts)
    swapped[i * SHARE_CIPHERTEXT_BYTES:(i + 1) * SHARE_CIPHERTEXT_BYTES] = d1.ciphertext(j)
    moved = ShareDelivery(d.session, d.round_index, 0, d.senders, bytes(swapped)).to_bytes()
    with pytest.raises(MessageRejected, match="authentication failed"):
        r.clients[0].masked_input(moved, np.zeros(8, np.uint32))
    # a ciphertext replayed from a previous round (another key, another AD)
    old = _Round()
    old_d = ShareDelivery.from_bytes(old.share()[0])
    replay = ShareDelivery(d.session, d.round_index, 0, old_d.senders, old_d.ciphertexts).to_bytes()
    with pytest.raises(MessageRejected, match="authentication failed"):
        r.clients[0].masked_input(replay, np.zeros(8, np.uint32))
    # the genuine delivery still works afterwards: the round can complete
    r.server.receive(0, r.clients[0].masked_input(deliveries[0], np.zeros(8, np.uint32)))


def test_wrong_length_and_bad_values_are_rejected():
    r = _Round()
    deliveries = r.share()
    with pytest.raises(InvalidDataError, match="shape"):
        r.clients[0].masked_input(deliveries[0], np.zeros(7, np.uint32))
    from securefed.secagg.messages import MaskedInput
    bad = MaskedInput(r.server.session, 0, 1, np.zeros(9, np.uint32)).to_bytes()
    with pytest.raises(MessageRejected, match="length 9, expected 8"):
        r.server.receive(1, bad)


def test_honest_client_never_reveals_both_shares():
    """What a client reveals is derived from the survivor set: seed shares of survivors, key
    shares of dropped partners, never both; and it answers once per round."""
    r = _Round(n=5, t=3)
    deliveries = r.share()
    for i, c in r.clients.items():
        if i != 4:  # client 4 shared its keys, then dropped
            r.server.receive(i, c.masked_input(deliveries[i], np.full(8, i, np.uint32)))
    requests = r.server.close_masked_input()
    for i in requests:
        r.server.receive(i, r.clients[i].consistency(requests[i]))
    unmask = r.server.close_consistency()
    from securefed.secagg.messages import UnmaskResponse

    resp = UnmaskResponse.from_bytes(r.clients[0].unmask(unmask[0]))
    assert resp.seed_shares.shape == (4, 5) and resp.key_shares.shape == (1, 5)  # 0..3 | 4
    with pytest.raises(MessageRejected, match="at stage 'done'"):
        r.clients[0].unmask(unmask[0])  # no second answer in the same round
    for i in (1, 2, 3):
        r.server.receive(i, r.clients[i].unmask(unmask[i]))
    assert [int(v) for v in r.server.finish()] == [0 + 1 + 2 + 3] * 8


def test_duplicate_and_invalid_client_ids():
    with pytest.raises(InvalidDataError, match="duplicate"):
        SecAggServer([1, 2, 2], round_index=0, threshold=2, bits=32, length=4)
    with pytest.raises(InvalidDataError, match="client id"):
        SecAggServer([-1, 2], round_index=0, threshold=2, bits=32, length=4)


@pytest.mark.parametrize("mode", [MALICIOUS, HONEST_BUT_CURIOUS])
def test_client_state_survives_export_and_restore_at_every_stage(mode):
    """A node that runs each message in a fresh process keeps its client state as bytes;
    a round driven through export/restore between every stage recovers the same sum."""
    import os as _os

    n, d, t = 4, 6, 3
    session = _os.urandom(16)
    rng = np.random.default_rng(0)
    inputs = {cid: rng.integers(0, 2**32, size=d + 1, dtype=np.uint64).astype(np.uint32)
              for cid in range(n)}
    identities, roster = generate_identities(range(n))
    keys = {cid: ({"identity": identities[cid], "roster": roster} if mode == MALICIOUS else {})
            for cid in range(n)}

    def hop(client: SecAggClient) -> SecAggClient:
        return SecAggClient.restore_state(client.export_state(), **keys[client.client_id])

    clients = {cid: SecAggClient(cid, session=session, round_index=0, bits=32, length=d + 1,
                                 mode=mode, **keys[cid]) for cid in range(n)}
    server = SecAggServer(list(range(n)), round_index=0, threshold=t, session=session,
                          bits=32, length=d + 1, mode=mode,
                          roster=roster if mode == MALICIOUS else None)
    for cid in range(n):
        server.receive(cid, clients[cid].advertise_keys())
        clients[cid] = hop(clients[cid])
    directory = server.close_advertise_keys()
    for cid in range(n):
        server.receive(cid, clients[cid].share_keys(directory[cid]))
        clients[cid] = hop(clients[cid])
    deliveries = server.close_share_keys()
    for cid in range(n):
        server.receive(cid, clients[cid].masked_input(deliveries[cid], inputs[cid]))
        clients[cid] = hop(clients[cid])
    requests = server.close_masked_input()
    if mode == MALICIOUS:
        for cid in requests:
            server.receive(cid, clients[cid].consistency(requests[cid]))
            clients[cid] = hop(clients[cid])
        requests = server.close_consistency()
    for cid in requests:
        server.receive(cid, clients[cid].unmask(requests[cid]))
    total = server.finish()
    expected = sum(v.astype(np.uint64) for v in inputs.values()) % (2**32)
    np.testing.assert_array_equal(np.asarray(total, dtype=np.uint64), expected)
