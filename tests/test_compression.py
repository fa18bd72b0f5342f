"""Codecs of securefed.compression: unbiasedness, wire size, error feedback, round trips."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.codec import Codec
from securefed.compression import (
    StochasticQuantizer,
    TopKSparsifier,
    error_feedback_step,
    pack_bits,
    unpack_bits,
)
from securefed.errors import ConfigurationError, InvalidDataError
from securefed.wire import pack, unpack


def test_codecs_implement_protocol():
    assert isinstance(StochasticQuantizer(bits=4), Codec)
    assert isinstance(TopKSparsifier(k_fraction=0.2), Codec)


@given(bits=st.integers(1, 16), n=st.integers(0, 200), seed=st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_pack_bits_round_trip(bits, n, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, size=n)
    packed = pack_bits(codes, bits)
    assert packed.nbytes == math.ceil(n * bits / 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_quantizer_is_unbiased(bits):
    rng = np.random.default_rng(0)
    v = rng.normal(size=64)
    q = StochasticQuantizer(bits=bits)
    draws = 4000
    total = np.zeros_like(v)
    for _ in range(draws):
        total += q.decode(q.encode(v, rng=rng), dim=v.size)
    mean_err = total / draws - v
    # per-entry variance <= s^2/4 with s the level spacing: allow 5 standard errors
    s = (v.max() - v.min()) / (2**bits - 1)
    assert np.max(np.abs(mean_err)) < 5 * (s / 2) / math.sqrt(draws) + 1e-9
    # and the error of one draw is really random (not a deterministic rounding) for b < 8
    one = q.decode(q.encode(v, rng=rng), dim=v.size)
    assert np.max(np.abs(one - v)) <= s + 1e-9


def test_quantizer_bias_check_detects_a_biased_rounding():
    """Control for the unbiasedness test: deterministic rounding-down fails the same bound."""
    v = np.random.default_rng(1).normal(size=64)
    bits = 2
    s = (v.max() - v.min()) / (2**bits - 1)
    floor = v.min() + np.floor((v - v.min()) / s) * s
    assert np.max(np.abs(floor - v)) > 5 * (s / 2) / math.sqrt(4000)


@pytest.mark.parametrize("bits", [1, 3, 8, 12])
def test_quantizer_wire_size_is_b_bits_per_value_plus_header(bits):
    q = StochasticQuantizer(bits=bits)
    rng = np.random.default_rng(0)
    sizes = {d: len(pack(q.encode(rng.normal(size=d), rng=rng))) for d in (1, 100, 1000)}
    header = sizes[1] - math.ceil(bits / 8)
    for d, size in sizes.items():
        assert size == header + math.ceil(d * bits / 8)
    # the fixed header: magic+count (5) + q_lo, q_hi (1+4+1+8 each) + q_codes array header
    assert header == 5 + 2 * 14 + (1 + 7 + 3 + 4)


def test_quantizer_survives_the_wire_and_handles_constants():
    q = StochasticQuantizer(bits=8)
    rng = np.random.default_rng(3)
    v = rng.normal(size=50)
    fields = unpack(pack(q.encode(v, rng=rng)))
    out = q.decode(fields, dim=50)
    assert np.max(np.abs(out - v)) <= (v.max() - v.min()) / 255 + 1e-9
    const = np.full(7, 0.25)
    np.testing.assert_array_equal(q.decode(q.encode(const, rng=rng), dim=7), const)
    assert q.decode(q.encode(np.zeros(0), rng=rng), dim=0).shape == (0,)


def test_quantizer_rejects_bad_input():
    with pytest.raises(ConfigurationError, match="bits must be"):
        StochasticQuantizer(bits=0)
    q = StochasticQuantizer(bits=4)
    with pytest.raises(InvalidDataError, match="NaN or inf"):
        q.encode(np.array([1.0, np.nan]), rng=np.random.default_rng(0))
    with pytest.raises(InvalidDataError, match="expected"):
        q.decode(q.encode(np.ones(10), rng=np.random.default_rng(0)), dim=11)
    with pytest.raises(InvalidDataError, match="q_lo"):
        q.decode({}, dim=3)


def test_topk_keeps_largest_and_counts_bytes():
    t = TopKSparsifier(k_fraction=0.1)
    rng = np.random.default_rng(0)
    v = rng.normal(size=200)
    fields = t.encode(v, rng=rng)
    out = t.decode(unpack(pack(fields)), dim=200)
    kept = np.flatnonzero(out)
    assert kept.size == 20
    assert set(kept) == set(np.argsort(-np.abs(v))[:20])
    np.testing.assert_allclose(out[kept], v[kept], rtol=1e-6)
    # 20 uint16 indices + 20 float32 values instead of 200 float32
    assert fields["k_idx"].nbytes + fields["k_val"].nbytes == 20 * (2 + 4)
    tq = TopKSparsifier(k_fraction=0.1, value_bits=4)
    fq = tq.encode(v, rng=rng)
    assert fq["q_codes"].nbytes == 10
    assert np.count_nonzero(tq.decode(fq, dim=200)) <= 20


def test_topk_rejects_bad_input():
    with pytest.raises(ConfigurationError, match="k_fraction"):
        TopKSparsifier(k_fraction=0)
    t = TopKSparsifier(k_fraction=0.5)
    with pytest.raises(InvalidDataError, match="indices"):
        t.decode({"k_idx": np.zeros(3, np.uint16), "k_val": np.zeros(3, np.float32)}, dim=10)
    with pytest.raises(InvalidDataError, match="out of range"):
        t.decode({"k_idx": np.array([0, 99], np.uint16), "k_val": np.zeros(2, np.float32)}, dim=4)


@pytest.mark.parametrize(
    "codec", [TopKSparsifier(k_fraction=0.05), StochasticQuantizer(bits=2),
              TopKSparsifier(k_fraction=0.2, value_bits=3)], ids=lambda c: c.name
)
def test_error_feedback_conserves_the_sum(codec):
    """sum of transmitted vectors + final residual == sum of true vectors."""
    rng = np.random.default_rng(11)
    residual = None
    sent = np.zeros(100)
    true = np.zeros(100)
    for _ in range(25):
        v = rng.normal(size=100) * rng.uniform(0.1, 3.0)
        decoded, payload, residual = error_feedback_step(v, residual, codec, rng=rng)
        np.testing.assert_array_equal(decoded, codec.decode(payload, dim=100))
        sent += decoded
        true += v
    np.testing.assert_allclose(sent + residual, true, atol=1e-9)
    # without memory the transmitted sum misses mass (top-k drops it for good)
    if isinstance(codec, TopKSparsifier):
        assert np.linalg.norm(sent - true) > 1e-3


def test_error_feedback_shape_check():
    with pytest.raises(InvalidDataError, match="residual"):
        error_feedback_step(np.ones(3), np.ones(4), StochasticQuantizer(bits=4),
                            rng=np.random.default_rng(0))
