"""CKKS against a server that deviates (point 6 of the threat analysis, and point 7).

The key authority (``CKKSKeyAuthority``) is the only party with the secret key; the tests
play the server by hand and show each attack refused with ``MessageRejected`` or
``ProtocolAbort``.
"""

from __future__ import annotations

import numpy as np
import pytest

from securefed.errors import ConfigurationError, KeyMaterialError, MessageRejected, ProtocolAbort
from securefed.federated import DropoutPlan, Float32Codec, Upload
from securefed.he import CKKSChannel, CKKSKeyAuthority, CKKSKeyHolder, CKKSParameters
from securefed.he.seal_ops import Blobs, Party
from securefed.he.uploads import encrypt_upload, release, reveal_grid
from securefed.identity import generate_identities

SESSION = b"s" * 16


@pytest.fixture(scope="module")
def world():
    identities, roster = generate_identities(range(4))
    authority = CKKSKeyAuthority(CKKSKeyHolder.generate(), roster=roster)
    public = authority.public_context()
    return identities, roster, authority, public


def _upload(public, identities, cid, values, round_index, session=SESSION, sign=True):
    return encrypt_upload(public, np.asarray(values, dtype=np.float64), round_index=round_index,
                          client_id=cid, identity=identities[cid] if sign else None,
                          session=session)


# ----------------------------------------------------------------- 6a. minimum contributors
def test_6a_one_contributor_is_never_decrypted(world):
    identities, _, authority, public = world
    one = {0: _upload(public, identities, 0, [1.0, 2.0], 10)}
    with pytest.raises(ProtocolAbort, match="1 upload\\(s\\) for round 10, below the key authority's minimum of 3"):
        authority.decrypt_aggregate(one, session=SESSION, round_index=10, n_values=2)
    ups = [Upload(client_id=0, vector=np.ones(2), weight=1.0, payload={})]
    with pytest.raises(ProtocolAbort, match="1 contributor\\(s\\), below the minimum of 3"):
        CKKSChannel().aggregate(ups, round_index=0, dim=2, codec=Float32Codec(),
                                dropouts=DropoutPlan(), rng=np.random.default_rng(0))


def test_6a_server_padding_with_its_own_encryptions_is_refused(world):
    """Anyone with the public key can encrypt zeros: two such 'uploads' plus the target's
    would make a sum of one hospital.  Unsigned, or signed by no hospital, they are refused."""
    identities, _, authority, public = world
    target = _upload(public, identities, 0, [5.0, 1.0], 11)
    fakes = {1: _upload(public, identities, 1, [0.0, 0.0], 11, sign=False),
             2: _upload(public, identities, 2, [0.0, 0.0], 11, sign=False)}
    with pytest.raises(MessageRejected, match="CKKS upload from client 1 is not signed"):
        authority.decrypt_aggregate({0: target, **fakes}, session=SESSION, round_index=11, n_values=2)
    other_ids, _ = generate_identities(range(4))  # keys outside the pinned roster
    forged = {1: _upload(public, other_ids, 1, [0.0, 0.0], 11),
              2: _upload(public, other_ids, 2, [0.0, 0.0], 11)}
    with pytest.raises(MessageRejected, match="signature of client 1 does not verify"):
        authority.decrypt_aggregate({0: target, **forged}, session=SESSION, round_index=11, n_values=2)
    # an upload replayed from another round or session is refused too
    old = {c: _upload(public, identities, c, [1.0, 1.0], 3) for c in (1, 2)}
    with pytest.raises(MessageRejected, match="for round 3 from client 1, expected round 11"):
        authority.decrypt_aggregate({0: target, **old}, session=SESSION, round_index=11, n_values=2)


def test_6a_one_decryption_per_round(world):
    """Two subsets of one round ({0,1,2} and {0,1,2,3}) would reveal hospital 3's update."""
    identities, _, authority, public = world
    ups = {c: _upload(public, identities, c, [float(c + 1), 1.0], 12) for c in range(4)}
    first = authority.decrypt_aggregate({c: ups[c] for c in (0, 1, 2)}, session=SESSION,
                                        round_index=12, n_values=2)
    assert abs(first[0] - 6.0) < 4 * reveal_grid(authority.parameters, 3)
    with pytest.raises(MessageRejected, match="round 12 of this session was already decrypted"):
        authority.decrypt_aggregate(ups, session=SESSION, round_index=12, n_values=2)


def test_6a_a_restarted_authority_remembers_the_rounds_it_decrypted(world, tmp_path):
    """With a record, the one-decryption-per-round rule survives a restart of the authority
    (same key, loaded again): the second subset of round 13 is still refused.  A record of
    another key, or one that cannot be read, stops the authority from starting."""
    identities, roster, authority, public = world
    holder = authority.key_holder
    record = tmp_path / "authority-record.json"
    ups = {c: _upload(public, identities, c, [float(c + 1), 1.0], 13) for c in range(4)}
    first = CKKSKeyAuthority(holder, roster=roster, record=record)
    first.decrypt_aggregate({c: ups[c] for c in (0, 1, 2)}, session=SESSION, round_index=13,
                            n_values=2)
    assert (record.stat().st_mode & 0o777) == 0o600
    restarted = CKKSKeyAuthority(holder, roster=roster, record=record)
    with pytest.raises(MessageRejected, match="round 13 of this session was already decrypted"):
        restarted.decrypt_aggregate(ups, session=SESSION, round_index=13, n_values=2)
    # without the record the restarted authority would have released the second subset
    forgetful = CKKSKeyAuthority(holder, roster=roster)
    forgetful.decrypt_aggregate(ups, session=SESSION, round_index=13, n_values=2)
    with pytest.raises(ConfigurationError, match="belongs to key"):
        CKKSKeyAuthority(CKKSKeyHolder.generate(), roster=roster, record=record)
    record.write_text("{not json")
    with pytest.raises(ConfigurationError, match="cannot be read"):
        CKKSKeyAuthority(holder, roster=roster, record=record)


# ----------------------------------------------------------------- 6b. who holds the key
def test_6b_hospitals_and_server_hold_no_secret_key(world):
    """The hospitals encrypt with the public context; neither they nor the server can decrypt,
    so a server colluding with one hospital decrypts nothing.  The authority decrypts no
    ciphertext outside its two checked paths."""
    identities, _, authority, public = world
    assert not public.context.has_secret_key()
    ch = CKKSChannel()
    assert not ch.server_context.context.has_secret_key()
    vec = public.encrypt_vector([1.0, 2.0])
    with pytest.raises(ValueError):
        vec.decrypt()  # TenSEAL: no secret key in this context
    with pytest.raises(MessageRejected, match="decrypts only checked aggregates"):
        authority.decrypt_vector(vec)


def test_a_party_without_the_secret_key_cannot_decrypt(training):
    """The server's SEAL party (public context only) refuses to decrypt with a named error."""
    holder, public = training
    party = Party(public.context, holder.parameters, secret=False)
    ct = party.encrypt(np.array([1.0, 2.0]))
    with pytest.raises(KeyMaterialError, match="no secret key"):
        party.decrypt(ct)
    owner = Party(holder.context, holder.parameters, secret=True)
    assert owner.decrypt(ct)[:2] == pytest.approx([1.0, 2.0], abs=1e-5)


# ----------------------------------------------------------------- 6c. exact decryptions
@pytest.fixture(scope="module")
def training():
    holder = CKKSKeyHolder.generate(CKKSParameters.training(), galois_keys=True)
    return holder, holder.public_context()


def _at_epoch_end(holder, public, values_per_ct):
    """Ciphertexts as the server would send them after an epoch: mod-switched to level 0."""
    party = Party(public.context, holder.parameters, secret=False)
    blobs = Blobs()
    out = []
    for vals in values_per_ct:
        ct = party.lower(party.encrypt(np.asarray(vals, dtype=np.float64)), 0)
        out.append(blobs.dump(ct))
    return out


def test_6c_refreshed_weights_are_never_exact_decryptions(training):
    holder, public = training
    ka = CKKSKeyAuthority(holder, require_signatures=False, max_training_epochs=1)
    ka.begin_training(epochs=1, n_weights=2, level=0)
    slots = holder.parameters.slots
    values = [0.123456789, -0.987654321]
    blobs = _at_epoch_end(holder, public, [np.full(slots, v) for v in values])
    # what an exact decryption would release, and the grid calibrated on each ciphertext's
    # own error (the spread of its replicated slots), computed here independently
    party = Party(holder.context, holder.parameters, secret=True)
    store = Blobs()
    slots_of = [party.decrypt(store.load(party.ctx, b, what="x")) for b in blobs]
    released, fresh = ka.refresh_weights(blobs, epoch=0)
    for r, s_, v in zip(released, slots_of, values, strict=True):
        exact = float(np.mean(s_))
        spread = float(np.max(np.abs(s_ - np.median(s_))))
        grid = 2.0 ** np.ceil(np.log2(4 * spread))
        assert grid >= 4 * spread and r == np.round(exact / grid) * grid
        assert r != exact  # never the exact decryption
        assert abs(r - v) <= grid  # and still the value, within the grid
    assert len(fresh) == 2


def test_6c_flooding_is_unbiased_on_its_grid():
    g = 2.0**-10
    v = np.full(20_000, 0.3)
    out = release(v, grid=g, reveal="flooded", flood_bits=4)
    gf = g * 16
    assert np.all(np.round(out / gf) * gf == out)
    # E[out] = v: the mean of 20,000 draws is within 5 standard errors (each draw is
    # v rounded down or up by at most gf)
    assert abs(out.mean() - 0.3) < 5 * gf / np.sqrt(20_000)


# ----------------------------------------------------------------- 6d. the refresh step
def test_6d_refresh_decrypts_only_declared_replicated_weights(training):
    holder, public = training
    ka = CKKSKeyAuthority(holder, require_signatures=False, max_training_epochs=1)
    slots = holder.parameters.slots
    weights = _at_epoch_end(holder, public, [np.full(slots, 0.5)] * 3)
    with pytest.raises(MessageRejected, match="no encrypted training was declared"):
        ka.refresh_weights(weights, epoch=0)
    ka.begin_training(epochs=1, n_weights=3, level=0)
    column = _at_epoch_end(holder, public,
                           [np.random.default_rng(0).normal(size=slots)] + [np.full(slots, 0.5)] * 2)
    with pytest.raises(MessageRejected, match="weight 0 to refresh is not one value replicated"):
        ka.refresh_weights(column, epoch=0)
    with pytest.raises(MessageRejected, match="refresh of 2 ciphertexts, expected the 3 weights"):
        ka.refresh_weights(weights[:2], epoch=0)
    party = Party(public.context, holder.parameters, secret=False)
    store = Blobs()
    fresh = [store.dump(party.encrypt(np.full(slots, 0.5))) for _ in range(3)]  # top level
    with pytest.raises(MessageRejected, match="at level 4, expected level 0"):
        ka.refresh_weights(fresh, epoch=0)
    with pytest.raises(MessageRejected, match="refresh for epoch 1, expected epoch 0"):
        ka.refresh_weights(weights, epoch=1)
    ka.refresh_weights(weights, epoch=0)
    with pytest.raises(MessageRejected, match="no encrypted training was declared"):
        ka.refresh_weights(weights, epoch=1)  # the declared epochs are used up
    # nor can the server declare another training: the authority's own budget is spent
    with pytest.raises(MessageRejected, match="grants 0 more weight refreshes"):
        ka.begin_training(epochs=1, n_weights=3, level=0)


def test_6d_the_server_cannot_restart_or_extend_the_refresh_budget(training):
    """The epochs are the authority's to grant: a declaration beyond its budget, or a second
    one mid-run (which would restart the count), is refused; an authority configured
    without a budget refuses encrypted training altogether."""
    holder, public = training
    with pytest.raises(MessageRejected, match="grants 0 more weight refreshes"):
        CKKSKeyAuthority(holder, require_signatures=False).begin_training(
            epochs=1, n_weights=3, level=0)
    ka = CKKSKeyAuthority(holder, require_signatures=False, max_training_epochs=3)
    with pytest.raises(MessageRejected, match="of 4 epochs declared, but this key authority grants 3"):
        ka.begin_training(epochs=4, n_weights=3, level=0)
    ka.begin_training(epochs=2, n_weights=3, level=0)
    weights = _at_epoch_end(holder, public, [np.full(holder.parameters.slots, 0.5)] * 3)
    ka.refresh_weights(weights, epoch=0)
    with pytest.raises(MessageRejected, match="already running \\(1 of its 2 refreshes done\\)"):
        ka.begin_training(epochs=1, n_weights=3, level=0)
    ka.refresh_weights(weights, epoch=1)
    with pytest.raises(MessageRejected, match="of 2 epochs declared, but this key authority grants 1"):
        ka.begin_training(epochs=2, n_weights=3, level=0)
    with pytest.raises(ConfigurationError, match="max_training_epochs must be an integer >= 0"):
        CKKSKeyAuthority(holder, require_signatures=False, max_training_epochs=-1)


def test_6d_a_restarted_authority_keeps_counting_granted_refreshes(training, tmp_path):
    """The refresh budget is a lifetime budget: an authority restarted on its record grants
    only what is left of it."""
    holder, _ = training
    record = tmp_path / "authority-record.json"
    CKKSKeyAuthority(holder, require_signatures=False, max_training_epochs=3,
                     record=record).begin_training(epochs=2, n_weights=3, level=0)
    restarted = CKKSKeyAuthority(holder, require_signatures=False, max_training_epochs=3,
                                 record=record)
    assert restarted.training_epochs_left == 1
    with pytest.raises(MessageRejected, match="of 2 epochs declared, but this key authority grants 1"):
        restarted.begin_training(epochs=2, n_weights=3, level=0)


# ----------------------------------------------------------------- 7. two participants
def test_7_two_participants_are_refused(world):
    identities, _, authority, public = world
    two = {c: _upload(public, identities, c, [1.0, 1.0], 20) for c in (0, 1)}
    with pytest.raises(ProtocolAbort, match="2 upload\\(s\\) for round 20, below"):
        authority.decrypt_aggregate(two, session=SESSION, round_index=20, n_values=2)


def test_a_minimum_below_three_is_accepted_only_with_a_warning() -> None:
    """As for secure aggregation: lowering the minimum is an explicit, visible choice."""
    with pytest.warns(UserWarning, match="min_contributors = 2 lets the key authority release "
                                         "the sum of 2 hospital"):
        ka = CKKSKeyAuthority(CKKSKeyHolder.generate(), require_signatures=False, min_contributors=2)
    assert ka.min_contributors == 2
