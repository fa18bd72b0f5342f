"""A server that deviates from the protocol, attack by attack (points 1-5 and 7 of the
threat analysis; the CKKS points are in tests/test_he_malicious.py).

Each test plays the server by hand through the public message classes, sends the honest
clients what a lying server would send, and shows the attack refused with
``MessageRejected`` or ``ProtocolAbort`` before anything that would leak is revealed.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from securefed.errors import ConfigurationError, MessageRejected, ProtocolAbort
from securefed.identity import generate_identities
from securefed.secagg import (
    HONEST_BUT_CURIOUS,
    MALICIOUS,
    SecAggChannel,
    SecAggClient,
    SecAggServer,
    choose_degree_and_threshold,
    crypto,
    harary_graph,
    model_digest,
)
from securefed.secagg.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    pack_share_plaintext,
)
from securefed.secagg.protocol import _PURPOSE_ENC, _adverts_digest

D = 6


class Round:
    """Honest clients and an honest server state machine; the tests replace what the server
    sends with what a lying server would send."""

    def __init__(self, n=7, t=4, mode=MALICIOUS, models=None):
        self.ids = list(range(n))
        self.mode = mode
        self.ident, self.roster = generate_identities(self.ids)
        self.t = t
        self.server = SecAggServer(self.ids, round_index=0, threshold=t, bits=32, length=D,
                                   mode=mode, roster=self.roster if mode == MALICIOUS else None,
                                   model_digest=model_digest(np.zeros(3)))
        self.clients = {i: self.client(i) for i in self.ids}
        self.models = models or {}

    def client(self, i):
        keys = {"identity": self.ident[i], "roster": self.roster} if self.mode == MALICIOUS else {}
        return SecAggClient(i, session=self.server.session, round_index=0, bits=32, length=D,
                            mode=self.mode, **keys)

    def directories(self):
        for i, c in self.clients.items():
            self.server.receive(i, c.advertise_keys())
        return self.server.close_advertise_keys()

    def deliveries(self):
        dirs = self.directories()
        for i, c in self.clients.items():
            self.server.receive(i, c.share_keys(dirs[i]))
        return self.server.close_share_keys()

    def masked(self, who=None):
        deliveries = self.deliveries()
        for i in (who if who is not None else self.ids):
            digest = model_digest(self.models.get(i, np.zeros(3)))
            self.server.receive(i, self.clients[i].masked_input(
                deliveries[i], np.full(D, 100 + i, np.uint32), model_digest=digest))
        return self.server.close_masked_input()


def _request(r, recipient, survivors):
    """The message of the stage after the masked input, naming ``survivors``."""
    s = r.server
    alive = np.asarray(sorted(survivors), dtype=np.uint32)
    if r.mode == MALICIOUS:
        return ConsistencyRequest(s.session, 0, recipient, alive).to_bytes()
    return UnmaskRequest(s.session, 0, recipient, alive, np.zeros(0, np.uint32), b"").to_bytes()


def _answer(r, i, blob):
    c = r.clients[i]
    return c.consistency(blob) if r.mode == MALICIOUS else c.unmask(blob)


# ----------------------------------------------------------------- 1. survivor set
@pytest.mark.parametrize("mode", [MALICIOUS, HONEST_BUT_CURIOUS])
def test_1_server_telling_each_client_a_different_tiny_survivor_set_is_refused(mode):
    """The published attack (n = 7, t = 4, no colluder): the server tells each client w
    'alive = {target, w}, everyone else dropped', to collect b_target and every partner's
    mask key.  Every client refuses: two survivors are below its minimum of 3 contributors
    and, with a third client named, 3 of its share holders are below t = 4."""
    r = Round(n=7, t=4, mode=mode)
    r.masked()
    target = 0
    for w in r.ids[1:]:
        with pytest.raises(ProtocolAbort, match="names 2 survivors, below this hospital's minimum of 3"):
            _answer(r, w, _request(r, w, {target, w}))
    for w in r.ids[1:]:
        extra = 1 if w != 1 else 2
        with pytest.raises(ProtocolAbort, match="keeps 3 of its share holders, below the threshold t = 4"):
            _answer(r, w, _request(r, w, {target, w, extra}))


def test_1_two_survivor_sets_cannot_both_collect_t_signatures():
    """A subtler lie: sets of size >= t, different for two groups of clients.  Each group
    signs its own set; to unmask, a client needs t signatures over *its* set, and an honest
    client signs one set per round, so the server has to pass the other group's signatures
    off as valid (refused), or name another set than the one signed (refused)."""
    r = Round(n=7, t=4)
    r.masked()
    set_a, set_b = {0, 1, 2, 3, 4, 5}, {0, 1, 2, 3, 4, 6}  # 6 'dropped' for A, 5 for B
    sigs = {}
    for w in (0, 1, 2, 5):
        sigs[w] = _answer(r, w, _request(r, w, set_a))
    for w in (3, 4, 6):
        sigs[w] = _answer(r, w, _request(r, w, set_b))
    raw = {w: ConsistencySignature.from_bytes(b).signature for w, b in sigs.items()}
    alive_a = np.asarray(sorted(set_a), dtype=np.uint32)
    # client 0 (group A) is shown 4 signatures 'over set A': two of them were over set B
    signers = np.asarray([0, 1, 3, 4], dtype=np.uint32)
    forged = UnmaskRequest(r.server.session, 0, 0, alive_a, signers,
                           b"".join(raw[int(v)] for v in signers)).to_bytes()
    with pytest.raises(MessageRejected, match="signature of client 3 does not verify"):
        r.clients[0].unmask(forged)
    # or the server names set B (which 3, 4, 6 signed) to a client that signed set A
    alive_b = np.asarray(sorted(set_b), dtype=np.uint32)
    signers = np.asarray([0, 3, 4, 6], dtype=np.uint32)
    other = UnmaskRequest(r.server.session, 0, 1, alive_b, signers,
                          b"".join(raw[int(v)] for v in signers)).to_bytes()
    with pytest.raises(MessageRejected, match="another survivor set than the one this client signed"):
        r.clients[1].unmask(other)
    # too few signatures over set A (only its own group signed it)
    signers = np.asarray([0, 1, 2], dtype=np.uint32)
    few = UnmaskRequest(r.server.session, 0, 2, alive_a, signers,
                        b"".join(raw[int(v)] for v in signers)).to_bytes()
    with pytest.raises(ProtocolAbort, match="3 signatures over the survivor set, below the threshold t = 4"):
        r.clients[2].unmask(few)


def test_1_survivor_list_naming_unknown_or_unshared_clients_is_refused():
    r = Round(n=5, t=3)
    deliveries = r.deliveries()
    d0 = ShareDelivery.from_bytes(deliveries[0])
    keep = [i for i, v in enumerate(d0.senders) if int(v) != 4]  # 4's share withheld from 0
    cut = ShareDelivery(d0.session, 0, 0, d0.senders[keep],
                        b"".join(d0.ciphertext(i) for i in keep)).to_bytes()
    r.clients[0].masked_input(cut, np.zeros(D, np.uint32))
    with pytest.raises(MessageRejected, match="neighbours whose shares never reached this client: \\[4\\]"):
        r.clients[0].consistency(_request(r, 0, {0, 1, 2, 3, 4}))
    r2 = Round(n=5, t=3)
    r2.masked()
    with pytest.raises(MessageRejected, match="outside the roster: \\[99\\]"):
        r2.clients[0].consistency(_request(r2, 0, {0, 1, 2, 99}))
    with pytest.raises(MessageRejected, match="does not name this client"):
        r2.clients[1].consistency(_request(r2, 1, {0, 2, 3, 4}))


def _round_of_three_in_a_roster_of_four():
    """Hospitals 0, 1, 2 take part (t = 2, a majority of 3, each with the default minimum of
    3 contributors); hospital 3 is in the roster but not in the round."""
    ident, roster = generate_identities(range(4))
    server = SecAggServer([0, 1, 2], round_index=0, threshold=2, bits=32, length=D, roster=roster)
    clients = {i: SecAggClient(i, session=server.session, round_index=0, bits=32, length=D,
                               identity=ident[i], roster=roster) for i in range(3)}
    for i, c in clients.items():
        server.receive(i, c.advertise_keys())
    dirs = server.close_advertise_keys()
    return server, clients, {i: ShareKeys.from_bytes(c.share_keys(dirs[i])) for i, c in clients.items()}


def test_1_survivor_list_padded_with_an_absent_roster_member_does_not_meet_the_minimum():
    """The server drops hospital 2 and names {0, 1, 3}: three survivors on paper, but 3 never
    took part, so the sum would be x0 + x1 (and x0 alone to a server colluding with 1).  A
    client counts only survivors whose shares it holds: refused at the masked input when 2's
    shares are withheld, and at the consistency round when 2 drops after sharing."""
    server, clients, sent = _round_of_three_in_a_roster_of_four()
    # each client's share ciphertexts follow its directory order without itself: 0 -> [1, 2],
    # 1 -> [0, 2], 2 -> [0, 1]
    def delivery(to, senders):
        cts = b"".join(sent[v].ciphertext(to if to < v else to - 1) for v in senders)
        return ShareDelivery(server.session, 0, to, np.asarray(senders, np.uint32), cts).to_bytes()

    with pytest.raises(ProtocolAbort, match="2 share holders left after share_keys \\(itself "
                                            "included\\), below this hospital's minimum of 3"):
        clients[0].masked_input(delivery(0, [1]), np.zeros(D, np.uint32))
    for i in (0, 1):  # 2's shares delivered, then 2 'drops' before its masked input
        clients[i].masked_input(delivery(i, [v for v in (0, 1, 2) if v != i]),
                                np.full(D, 10 + i, np.uint32))
        padded = ConsistencyRequest(server.session, 0, i, np.asarray([0, 1, 3], np.uint32))
        with pytest.raises(ProtocolAbort, match="keeps 2 of its share holders \\(itself included\\), "
                                                "below this hospital's minimum of 3"):
            clients[i].consistency(padded.to_bytes())


# ----------------------------------------------------------------- 2. directory / threshold
@pytest.mark.parametrize("mode", [MALICIOUS, HONEST_BUT_CURIOUS])
def test_2_directory_listing_only_the_client_with_t_1_is_refused(mode):
    r = Round(n=5, t=3, mode=mode)
    dirs = r.directories()
    d = KeyDirectory.from_bytes(dirs[2])
    i = list(d.ids).index(2)
    c, s, com = d.entry(i)
    alone = KeyDirectory(d.session, 0, 2, 1, np.asarray([2], np.uint32), c, s, com).to_bytes()
    with pytest.raises(ProtocolAbort, match="lists 1 clients, below this hospital's minimum of 3"):
        r.clients[2].share_keys(alone)


def test_2_sub_majority_threshold_in_the_directory_is_refused():
    """A directory of 5 with t = 2: two disjoint sets of 2 holders exist, so a server that
    lies about dropouts could collect both shares of a client.  Malicious mode refuses."""
    r = Round(n=5, t=3)
    d = KeyDirectory.from_bytes(r.directories()[0])
    low = KeyDirectory(d.session, 0, 0, 2, d.ids, d.enc_publics, d.mask_publics, d.commits)
    with pytest.raises(MessageRejected, match="threshold t = 2 is not more than half of its 5 share holders"):
        r.clients[0].share_keys(low.to_bytes())


# ----------------------------------------------------------------- 3. key substitution
def test_3_substituted_keys_give_the_server_nothing_and_are_detected():
    """The server shows the target other mask/share-channel keys for every peer (keys whose
    private halves it holds).  The target's share ciphertexts are keyed with the static
    pairwise secret of the pinned identity keys as well, so the server cannot open them;
    the genuine peers refuse them; a share the server forges into the target's inbox is
    refused before the target computes any mask with the substituted keys."""
    r = Round(n=5, t=3)
    dirs = r.directories()
    target = 0
    d = KeyDirectory.from_bytes(dirs[target])
    fake = {int(v): crypto.new_private_key()[0] for v in d.ids if int(v) != target}
    s_pks = b"".join(d.entry(i)[1] if int(v) == target else crypto.public_bytes(fake[int(v)])
                     for i, v in enumerate(d.ids))
    swapped = KeyDirectory(d.session, 0, target, d.threshold, d.ids, d.enc_publics, s_pks, d.commits)
    blob = r.clients[target].share_keys(swapped.to_bytes())
    for i, c in r.clients.items():
        if i != target:
            r.server.receive(i, c.share_keys(dirs[i]))
    r.server.receive(target, blob)
    sent = ShareKeys.from_bytes(blob)
    ids = [int(v) for v in d.ids]
    target_pk = d.entry(ids.index(target))[1]

    def ad(sender, recipient, peer):
        """The associated data the target binds to this pair: the server knows every input
        (both advertisements as it showed them to the target), so it computes it too."""
        c, s, com = swapped.entry(ids.index(peer))
        digest = _adverts_digest(target, r.clients[target]._own_advert(), peer, c + s + com)
        return crypto.share_associated_data(session=d.session, round_index=0, stage="share_keys",
                                            sender=sender, recipient=recipient, adverts=digest)

    def server_key(peer):
        """The share-channel key the server can compute: from the agreement with the key it
        substituted for ``peer`` (all the key would be without the static pairwise secret)."""
        dh = crypto.agree(fake[peer], crypto.load_public(target_pk))
        return crypto.derive_key(dh, purpose=_PURPOSE_ENC, session=d.session, round_index=0,
                                 party_a=target, party_b=peer)

    # (a) what the server can compute does not open them; the associated data is right (the
    # target's own key opens each ciphertext with it), so the key is what stops the server
    for j, v in enumerate(v for v in ids if v != target):
        crypto.open_once(r.clients[target]._enc_keys[v], sent.ciphertext(j),
                         associated_data=ad(target, v, v), sender=target, recipient=v, what="target")
        with pytest.raises(MessageRejected, match="authentication failed"):
            crypto.open_once(server_key(v), sent.ciphertext(j), associated_data=ad(target, v, v),
                             sender=target, recipient=v, what="server")
    # (b) the genuine peers refuse them (the keys each side saw differ)
    deliveries = r.server.close_share_keys()
    with pytest.raises(MessageRejected, match="share ciphertext from client 0: authentication failed"):
        r.clients[1].masked_input(deliveries[1], np.zeros(D, np.uint32))
    # (c) a share the server forges for the target, under the key it knows and with the
    # associated data the target expects, is refused
    dt = ShareDelivery.from_bytes(deliveries[target])
    forged_ct = crypto.seal_once(server_key(1), pack_share_plaintext(np.zeros(5), np.zeros(5)),
                                 associated_data=ad(1, target, 1), sender=1, recipient=target)
    cts = b"".join(forged_ct if int(v) == 1 else dt.ciphertext(i) for i, v in enumerate(dt.senders))
    forged = ShareDelivery(dt.session, 0, target, dt.senders, cts).to_bytes()
    with pytest.raises(MessageRejected, match="share ciphertext from client 1: authentication failed"):
        r.clients[target].masked_input(forged, np.zeros(D, np.uint32))


def test_3_advertisement_not_signed_by_the_pinned_key_is_refused():
    """Someone (the server itself, or an outsider) advertises keys in client 2's name with a
    key pair that is not client 2's pinned identity: refused."""
    from securefed.identity import IdentityKey, Roster

    r = Round(n=4, t=3)
    impostor = IdentityKey.generate("client-2", 2)
    its_roster = Roster(impostor.entry() if e == 2 else r.roster.entry(e) for e in r.ids)
    other = SecAggClient(2, session=r.server.session, round_index=0, bits=32, length=D,
                         identity=impostor, roster=its_roster)
    with pytest.raises(MessageRejected, match="advertisement of client 2: signature of client 2 does not verify"):
        r.server.receive(2, other.advertise_keys())


# ----------------------------------------------------------------- 4. thresholds
def test_4_parameter_finder_never_leaves_a_majority_silently():
    # at n = 500 and 30 % dropouts it used to return t = 26 of 73 holders; now a majority
    k, t = choose_degree_and_threshold(500, corrupt_fraction=0.05, dropout_fraction=0.3)
    assert 2 * t > k + 1 and (k, t) == (204, 103)
    with pytest.raises(ConfigurationError, match=r"sub-majority \(k, t\) = \(66, 24\)"):
        choose_degree_and_threshold(100, corrupt_fraction=0.05, dropout_fraction=0.3)
    with pytest.warns(UserWarning, match="sub-majority t = 24 of 67 share holders"):
        assert choose_degree_and_threshold(100, corrupt_fraction=0.05, dropout_fraction=0.3,
                                           mode=HONEST_BUT_CURIOUS) == (66, 24)
    # corrupt_fraction = 0 used to give t = 1
    k, t = choose_degree_and_threshold(300, corrupt_fraction=0.0, dropout_fraction=0.1)
    assert 2 * t > k + 1


def test_4_sub_majority_thresholds_are_refused_unless_honest_but_curious_is_named():
    ids = list(range(20))
    graph = harary_graph(ids, degree=8)
    _, roster = generate_identities(ids)
    with pytest.raises(ConfigurationError, match="threshold t = 4 is not more than half of the 9"):
        SecAggServer(ids, round_index=0, threshold=4, bits=32, length=4, graph=graph, roster=roster)
    with pytest.raises(ConfigurationError, match="threshold t = 1 is not more than half"):
        SecAggServer(ids, round_index=0, threshold=1, bits=32, length=4, roster=roster)
    with pytest.warns(UserWarning, match="honest-but-curious mode"):
        SecAggServer(ids, round_index=0, threshold=1, bits=32, length=4, mode=HONEST_BUT_CURIOUS)
    ch = SecAggChannel(threshold=1)
    from securefed.federated import DropoutPlan, Float32Codec, Upload

    ups = [Upload(client_id=i, vector=np.zeros(3), weight=1.0, payload={}) for i in range(4)]
    with pytest.raises(ConfigurationError, match="malicious mode refuses it"):
        ch.aggregate(ups, round_index=0, dim=3, codec=Float32Codec(), dropouts=DropoutPlan(),
                     rng=np.random.default_rng(0))


def test_4_lying_about_dropouts_with_a_sub_majority_threshold_is_refused_client_side():
    """The attack of point 4: t = 2 of 5 holders, then client w is told that the target
    dropped (reveal its key) while others are told it survived (reveal its seed).  The
    directory is refused before any share is made."""
    r = Round(n=5, t=3)
    d = KeyDirectory.from_bytes(r.directories()[1])
    low = KeyDirectory(d.session, 0, 1, 2, d.ids, d.enc_publics, d.mask_publics, d.commits)
    with pytest.raises(MessageRejected, match="malicious mode requires 2 t > holders"):
        r.clients[1].share_keys(low.to_bytes())


# ----------------------------------------------------------------- 5. corrupted shares
def test_5_shifted_seed_share_aborts_instead_of_a_wrong_sum():
    r = Round(n=5, t=3)
    requests = r.masked()
    for i in r.ids:
        r.server.receive(i, r.clients[i].consistency(requests[i]))
    unmask = r.server.close_consistency()
    for i in r.ids:
        blob = r.clients[i].unmask(unmask[i])
        if i == 0:  # a malicious client shifts its share of b_2 by one
            m = UnmaskResponse.from_bytes(blob)
            sh = m.seed_shares.copy()
            sh[2, 0] = (int(sh[2, 0]) + 1) % (2**31 - 1)
            blob = UnmaskResponse(m.session, 0, 0, sh, m.key_shares).to_bytes()
        r.server.receive(i, blob)
    with pytest.raises(ProtocolAbort, match="seed rebuilt for client 2 does not match its commitment"):
        r.server.finish()


def test_5_shifted_key_share_of_a_dropped_client_aborts():
    r = Round(n=5, t=3)
    requests = r.masked(who=[0, 1, 2, 3])  # 4 dropped after sharing
    for i in requests:
        r.server.receive(i, r.clients[i].consistency(requests[i]))
    unmask = r.server.close_consistency()
    for i in unmask:
        blob = r.clients[i].unmask(unmask[i])
        if i == 0:
            m = UnmaskResponse.from_bytes(blob)
            ks = m.key_shares.copy()
            ks[0, 1] = (int(ks[0, 1]) + 5) % (2**31 - 1)
            blob = UnmaskResponse(m.session, 0, 0, m.seed_shares, ks).to_bytes()
        r.server.receive(i, blob)
    with pytest.raises(ProtocolAbort, match="dropped client 4 does not match|mask-key seed failed"):
        r.server.finish()


# ----------------------------------------------------------------- model inconsistency
def test_different_models_for_different_clients_get_no_valid_signatures():
    """Pasquini et al. 2022: the server sends client 4 another model.  Its consistency
    signature covers that model's digest, so the server's check refuses it, and a server that
    skips its own check cannot give client 4 (or anyone) t signatures over one model."""
    r = Round(n=5, t=3, models={4: np.ones(3)})
    requests = r.masked()
    sigs = {i: r.clients[i].consistency(requests[i]) for i in r.ids}
    with pytest.raises(MessageRejected, match="consistency signature of client 4"):
        r.server.receive(4, sigs[4])
    from securefed.secagg.messages import ConsistencySignature

    raw = {i: ConsistencySignature.from_bytes(b).signature for i, b in sigs.items()}
    alive = np.arange(5, dtype=np.uint32)
    signers = np.asarray([0, 1, 2], dtype=np.uint32)
    to4 = UnmaskRequest(r.server.session, 0, 4, alive, signers,
                        b"".join(raw[int(v)] for v in signers)).to_bytes()
    with pytest.raises(MessageRejected, match="consistency signature"):
        r.clients[4].unmask(to4)


# ----------------------------------------------------------------- 7. two participants
def test_7_two_participants_are_refused_everywhere():
    from securefed.federated import DropoutPlan, Float32Codec, Upload

    ups = [Upload(client_id=i, vector=np.zeros(3), weight=1.0, payload={}) for i in range(2)]
    for mode in (MALICIOUS, HONEST_BUT_CURIOUS):
        with pytest.raises(ProtocolAbort, match="2 contributor\\(s\\), below the minimum of 3"):
            SecAggChannel(mode=mode).aggregate(ups, round_index=0, dim=3, codec=Float32Codec(),
                                               dropouts=DropoutPlan(), rng=np.random.default_rng(0))
    # three start, one drops before its masked input: the server aborts
    r = Round(n=3, t=2)
    with pytest.raises(ProtocolAbort, match="only 2 clients sent masked inputs, below the minimum of 3"):
        r.masked(who=[0, 1])
    # and a client refuses a survivor set of two, whatever the server's own setting
    r = Round(n=4, t=3)
    lax = SecAggServer(r.ids, round_index=0, threshold=3, bits=32, length=D, roster=r.roster,
                       min_clients=1, session=r.server.session)
    r.server = lax
    r.masked()
    with pytest.raises(ProtocolAbort, match="names 2 survivors, below this hospital's minimum of 3"):
        r.clients[0].consistency(_request(r, 0, {0, 1}))


def test_t_1_is_refused_in_malicious_mode_even_with_the_minimum_lowered():
    """With ``min_clients = 1`` a round of one is 'allowed', but its threshold would be 1:
    refused by the server and by the client in malicious mode (the mode to name for it is
    honest-but-curious)."""
    ident, roster = generate_identities([0])
    with pytest.raises(ConfigurationError, match="threshold t = 1: .*malicious mode requires t >= 2"):
        SecAggServer([0], round_index=0, threshold=1, bits=32, length=D, roster=roster, min_clients=1)
    SecAggServer([0], round_index=0, threshold=1, bits=32, length=D, mode=HONEST_BUT_CURIOUS,
                 min_clients=1)  # named explicitly: accepted
    session = crypto.new_session_id()
    lone = SecAggClient(0, session=session, round_index=0, bits=32, length=D,
                        identity=ident[0], roster=roster, min_clients=1)
    lone.advertise_keys()
    own = lone._own_advert()  # malicious mode: mask key (32 bytes) and commitment
    alone = KeyDirectory(session, 0, 0, 1, np.asarray([0], np.uint32), b"", own[:32], own[32:])
    with pytest.raises(MessageRejected, match="threshold t = 1; .*malicious mode requires t >= 2"):
        lone.share_keys(alone.to_bytes())


def test_a_low_order_public_key_is_refused_where_it_first_appears():
    """A client advertising an all-zero (low-order) X25519 key, with a valid signature, would
    make every peer's key agreement fail: the server refuses it at once, naming the client.
    A server putting one in a directory (honest-but-curious mode, no signatures) gets
    ``MessageRejected`` from the client, not a bare key error."""
    from securefed.secagg.messages import AdvertiseKeys

    r = Round(n=4, t=3)
    unsigned = AdvertiseKeys(r.server.session, 0, 1, b"", bytes(32), bytes(32), b"")
    bad = AdvertiseKeys(r.server.session, 0, 1, b"", bytes(32), bytes(32),
                        r.ident[1].sign(unsigned.signed_bytes()))
    with pytest.raises(MessageRejected, match="advertisement of client 1: its mask public key is not usable"):
        r.server.receive(1, bad.to_bytes())
    h = Round(n=4, t=3, mode=HONEST_BUT_CURIOUS)
    d = KeyDirectory.from_bytes(h.directories()[0])
    enc = b"".join(bytes(32) if int(v) == 3 else d.entry(k)[0] for k, v in enumerate(d.ids))
    forged = KeyDirectory(d.session, 0, 0, d.threshold, d.ids, enc, d.mask_publics, d.commits)
    with pytest.raises(MessageRejected, match="key directory entry of client 3 is not a usable public key"):
        h.clients[0].share_keys(forged.to_bytes())


def test_a_malformed_server_message_is_rejected_not_a_data_error():
    r = Round(n=4, t=3)
    dirs = r.directories()
    with pytest.raises(MessageRejected, match="client 0: malformed key directory from the server"):
        r.clients[0].share_keys(dirs[0][:-7])


def test_secrets_do_not_come_from_the_engine_generator(monkeypatch):
    """The engine passes its seeded generator to the channel; keys and seeds must still come
    from the OS: two rounds with the same engine seed use different session keys and seeds."""
    from securefed.federated import DropoutPlan, Float32Codec, Upload

    ups = [Upload(client_id=i, vector=np.full(3, 0.5), weight=1.0, payload={}) for i in range(3)]
    seen = []
    real = os.urandom

    def spy(n):
        out = real(n)
        seen.append(out)
        return out

    monkeypatch.setattr(os, "urandom", spy)
    ch = SecAggChannel()
    res = [ch.aggregate(ups, round_index=0, dim=3, codec=Float32Codec(), dropouts=DropoutPlan(),
                        rng=np.random.default_rng(7)) for _ in range(2)]
    keys = [m.content["mask_public"] for r in res for m in r.received if m.stage == "advertise_keys"]
    assert len(set(keys)) == 6 and len(seen) > 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(res[0].weighted_sum, res[1].weighted_sum, atol=3 / res[0].revealed["scale"])
