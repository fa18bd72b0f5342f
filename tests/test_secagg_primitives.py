"""Fixed-point encoding, Shamir sharing, key derivation, share encryption and mask expansion."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.errors import ConfigurationError, InvalidDataError, MessageRejected
from securefed.secagg import crypto, shamir
from securefed.secagg.encoding import FixedPointEncoder, choose_scale
from securefed.secagg.graph import choose_degree_and_threshold, harary_graph

# ----------------------------------------------------------------------------- encoding


def test_overflow_refused_naming_the_bound():
    enc = FixedPointEncoder(clip_range=1.0, max_weight=10.0, scale=2.0**20, bits=32)
    enc.check_overflow(num_clients=100)
    with pytest.raises(ConfigurationError, match=r"max_weight \* scale"):
        enc.check_overflow(num_clients=300)
    enc2 = FixedPointEncoder(clip_range=10.0, max_weight=1.0, scale=2.0**20, bits=32)
    with pytest.raises(ConfigurationError, match=r"clip_range \* scale"):
        enc2.check_overflow(num_clients=300)


@pytest.mark.parametrize("bits", [8, 16, 32, 48, 64])
def test_choose_scale_is_the_largest_safe_power_of_two(bits):
    n = 7
    s = choose_scale(clip_range=3.0, max_weight=5.0, bits=bits, num_clients=n)
    FixedPointEncoder(clip_range=3.0, max_weight=5.0, scale=s, bits=bits).check_overflow(num_clients=n)
    with pytest.raises(ConfigurationError):
        FixedPointEncoder(clip_range=3.0, max_weight=5.0, scale=2 * s, bits=bits).check_overflow(
            num_clients=n)


def test_stochastic_rounding_is_unbiased():
    enc = FixedPointEncoder(clip_range=1.0, max_weight=1.0, scale=4.0, bits=16)
    rng = np.random.default_rng(0)
    x = np.full(200_000, 0.3)  # 1.2 units: rounds to 1 or 2
    ints, _ = enc.encode_signed(x, 1.0, rng=rng)
    assert set(np.unique(ints)) == {1, 2}
    # mean 1.2, sd of the mean sqrt(0.16 / 2e5) ~ 9e-4: five sd
    assert abs(ints.mean() - 1.2) < 5e-3


def test_encode_wrap_sum_decode_roundtrip():
    rng = np.random.default_rng(1)
    enc = FixedPointEncoder(clip_range=2.0, max_weight=4.0, scale=2.0**10, bits=20)
    vecs = [rng.uniform(-3, 3, 50) for _ in range(5)]
    total = np.zeros(50, dtype=np.uint64)
    for v in vecs:
        ints, _ = enc.encode_signed(v, 1.0, rng=rng)
        total = (total + enc.wrap(ints).astype(np.uint64)) % (1 << 20)
    expect = sum(np.clip(v, -2, 2) for v in vecs)
    np.testing.assert_allclose(enc.decode(total), expect, atol=5 / 2.0**10)


def test_encoder_rejects_nan_inf_and_weight_out_of_range():
    enc = FixedPointEncoder(clip_range=1.0, max_weight=2.0, scale=8.0)
    rng = np.random.default_rng(0)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(InvalidDataError, match="NaN or inf"):
            enc.encode_signed(np.array([0.0, bad]), 1.0, rng=rng)
    with pytest.raises(InvalidDataError, match="outside the declared range"):
        enc.encode_signed(np.zeros(2), 3.0, rng=rng)
    with pytest.raises(ConfigurationError):
        FixedPointEncoder(clip_range=-1.0, max_weight=1.0, scale=1.0)
    with pytest.raises(ConfigurationError):
        FixedPointEncoder(clip_range=1.0, max_weight=1.0, scale=1.0, bits=65)

# ----------------------------------------------------------------------------- Shamir


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(0, 12), st.binary(min_size=1, max_size=40), st.data())
def test_shamir_any_t_shares_rebuild_the_secret(t, extra, secret, data):
    h = t + extra
    points = np.asarray(data.draw(st.lists(st.integers(1, shamir.PRIME - 1), min_size=h,
                                           max_size=h, unique=True)), dtype=np.int64)
    shares = shamir.split(shamir.secret_to_elements(secret), threshold=t, points=points)
    pick = np.asarray(data.draw(st.permutations(range(h))))[:t]
    rebuilt = shamir.combine(points[pick], shares[pick])
    assert shamir.elements_to_secret(rebuilt, len(secret)) == secret


def test_shamir_fewer_than_t_shares_are_uniform():
    # With t - 1 shares fixed at the same points, the shares of two different secrets have
    # the same (uniform) distribution; check the first share's low byte is flat for both.
    points = np.arange(1, 4)
    for secret in (b"\x00" * 3, b"\xff" * 3):
        firsts = np.array([shamir.split(shamir.secret_to_elements(secret), threshold=3,
                                        points=points)[0, 0] for _ in range(3000)])
        counts = np.bincount(firsts & 0xF, minlength=16)
        assert counts.min() > 120 and counts.max() < 260  # expected 187.5 per bin


def test_shamir_refuses_bad_points_and_thresholds():
    with pytest.raises(InvalidDataError, match="distinct"):
        shamir.split(np.array([1]), threshold=1, points=np.array([1, 1]))
    with pytest.raises(InvalidDataError):
        shamir.split(np.array([1]), threshold=1, points=np.array([0, 1]))
    with pytest.raises(ConfigurationError, match="threshold"):
        shamir.split(np.array([1]), threshold=3, points=np.array([1, 2]))


def test_lagrange_matches_python_integers():
    pts = np.array([3, 9, 27, 1000, 2**30], dtype=np.int64)
    lam = shamir.lagrange_at_zero(pts)
    p = shamir.PRIME
    for i, xi in enumerate(pts.tolist()):
        num = den = 1
        for j, xj in enumerate(pts.tolist()):
            if j != i:
                num = num * xj % p
                den = den * (xj - xi) % p
        assert int(lam[i]) == num * pow(den, -1, p) % p


@pytest.mark.parametrize("t", [1, 2, 15, 16, 17, 40, 263])
def test_shamir_shares_are_the_polynomial_evaluated_with_python_integers(t, monkeypatch):
    """The shares are s + a_1 x + ... + a_{t-1} x^{t-1} mod p at each point, with the drawn
    coefficients (recorded) and points up to p - 1 (the largest powers and products)."""
    drawn = []

    def record(shape):
        out = real(shape)
        drawn.append(out.copy())
        return out

    real = shamir.random_elements
    monkeypatch.setattr(shamir, "random_elements", record)
    p = shamir.PRIME
    ends = [1, 2, 3, 1000, 2**30, p - 2, p - 1]
    points = np.array(ends + list(range(4, 4 + max(0, t - len(ends)))), dtype=np.int64)
    secret = np.array([0, 1, p - 1, 123456789], dtype=np.int64)
    shares = None
    # as used, then with the holders taken two at a time (the bound on the table of powers)
    for entries in (shamir._TABLE_ENTRIES, 2 * t):
        monkeypatch.setattr(shamir, "_TABLE_ENTRIES", entries)
        shares = shamir.split(secret, threshold=t, points=points)
        coeffs = [secret.tolist()] + drawn[-1].tolist()  # row j: the coefficients of x^j
        for i, x in enumerate(points.tolist()):
            for k in range(secret.size):
                expected = sum(coeffs[j][k] * pow(x, j, p) for j in range(t)) % p
                assert int(shares[i, k]) == expected, (t, entries, x, k)
    # the products are cut into blocks of rows when t is large; the same with tiny blocks
    monkeypatch.setattr(shamir, "_BLOCK", 5)
    a = np.vstack([secret[None, :], drawn[-1]])
    np.testing.assert_array_equal(shamir._evaluate(a, points), shares)

# ----------------------------------------------------------------------------- crypto


def test_key_agreement_and_domain_separation():
    a, _ = crypto.new_private_key()
    b, _ = crypto.new_private_key()
    s_ab = crypto.agree(a, b.public_key())
    assert s_ab == crypto.agree(b, a.public_key())
    session = crypto.new_session_id()
    base = dict(session=session, round_index=3, party_a=1, party_b=2)
    k = crypto.derive_key(s_ab, purpose=b"pairwise-mask", **base)
    assert k == crypto.derive_key(s_ab, purpose=b"pairwise-mask", **{**base, "party_a": 2, "party_b": 1})
    others = {
        crypto.derive_key(s_ab, purpose=b"share-encryption", **base),
        crypto.derive_key(s_ab, purpose=b"pairwise-mask", **{**base, "round_index": 4}),
        crypto.derive_key(s_ab, purpose=b"pairwise-mask", **{**base, "session": crypto.new_session_id()}),
        crypto.derive_key(s_ab, purpose=b"pairwise-mask", **{**base, "party_b": 3}),
    }
    assert k not in others and len(others) == 4 and len(k) == 16


def test_share_encryption_binds_its_context():
    key = b"k" * 16
    ad = crypto.share_associated_data(session=b"s" * 16, round_index=0, stage="share_keys",
                                      sender=1, recipient=2)
    blob = crypto.seal(key, b"secret share", associated_data=ad)
    assert crypto.open_sealed(key, blob, associated_data=ad, what="t") == b"secret share"
    tampered = bytearray(blob)
    tampered[20] ^= 1
    with pytest.raises(MessageRejected, match="authentication failed"):
        crypto.open_sealed(key, bytes(tampered), associated_data=ad, what="t")
    for change in ({"round_index": 1}, {"sender": 3}, {"recipient": 1}, {"stage": "unmask"}):
        other = crypto.share_associated_data(**{**dict(session=b"s" * 16, round_index=0,
                                                        stage="share_keys", sender=1,
                                                        recipient=2), **change})
        with pytest.raises(MessageRejected):
            crypto.open_sealed(key, blob, associated_data=other, what="t")


def test_mask_expansion_is_the_aes_ctr_keystream():
    key = bytes(range(16))
    exp = crypto.MaskExpander(1000, np.dtype(np.uint32))
    mask = exp.expand(key).copy()
    assert mask.tobytes() == crypto.raw_keystream(key, 4000)
    # NIST SP 800-38A F.5.1 (CTR-AES128) uses a different key and counter; check our
    # zero-counter keystream against ECB on the counter blocks instead
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(i.to_bytes(16, "big") for i in range(3))
    assert ecb.update(blocks) == mask[:12].tobytes()
    acc = np.zeros(1000, dtype=np.uint32)
    exp.add_into(acc, key, sign=+1)
    exp.add_into(acc, key, sign=-1)
    assert not acc.any()

# ----------------------------------------------------------------------------- graph


def test_harary_graph_is_regular_symmetric_and_random():
    ids = list(range(50))
    g = harary_graph(ids, degree=6)
    assert all(len(nb) == 6 and u not in nb for u, nb in g.items())
    assert all(u in g[v] for u, nb in g.items() for v in nb)
    assert g != harary_graph(ids, degree=6)  # random labelling (equal with prob ~ 1/50!)
    assert harary_graph(list(range(5)), degree=4) == {u: frozenset(set(range(5)) - {u}) for u in range(5)}
    with pytest.raises(ConfigurationError):
        harary_graph(ids, degree=5)


def test_degree_grows_slowly_with_n():
    ks = [choose_degree_and_threshold(n, corrupt_fraction=0.05, dropout_fraction=0.1)[0]
          for n in (1000, 5000, 20000)]
    assert ks == sorted(ks) and ks[-1] < 60
    k, t = choose_degree_and_threshold(1000, corrupt_fraction=0.05, dropout_fraction=0.1)
    assert k // 2 < t <= k
    with pytest.raises(ConfigurationError, match="no degree"):
        choose_degree_and_threshold(20, corrupt_fraction=0.4, dropout_fraction=0.5)


def test_lagrange_batch_equals_one_by_one():
    rng = np.random.default_rng(0)
    pts = np.stack([rng.choice(np.arange(1, 10_000), 6, replace=False) for _ in range(5)])
    batch = shamir.lagrange_at_zero(pts)
    for row, lam in zip(pts, batch, strict=True):
        np.testing.assert_array_equal(lam, shamir.lagrange_at_zero(row))
    with pytest.raises(InvalidDataError, match="distinct"):
        shamir.lagrange_at_zero(np.array([[1, 2], [3, 3]]))


@pytest.mark.parametrize("module", ["encoding", "shamir", "graph"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"securefed.secagg.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
