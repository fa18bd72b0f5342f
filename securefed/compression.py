"""Compressed uploads: unbiased stochastic quantisation, top-k sparsification, error feedback.

Each codec implements the :class:`securefed.codec.Codec` protocol: ``encode``
turns a float vector into named wire fields (what :func:`securefed.wire.pack`
serialises and the plain channel counts), ``decode`` turns them back into floats.

Codecs
------
:class:`StochasticQuantizer`
    Stochastic uniform ``b``-bit quantisation between the vector's minimum and maximum
    (Suresh, Yu, Kumar, McMahan, "Distributed mean estimation with limited communication",
    ICML 2017, sec. 3, "stochastic k-level quantization" with ``k = 2**b`` levels).  Each
    entry ``x`` with ``lo <= x <= hi`` is rounded to one of its two neighbouring levels
    ``lo + j * s`` and ``lo + (j+1) * s``, ``s = (hi - lo) / (2**b - 1)``, the upper one
    with probability ``(x - lo - j s) / s``.  Hence ``E[Q(x)] = x``: the quantiser is
    **unbiased**, and its variance per entry is at most ``s**2 / 4``.  The codes are packed
    ``b`` bits per entry, so a message costs ``ceil(d * b / 8)`` bytes plus a fixed header.

:class:`TopKSparsifier`
    Keeps the ``k = ceil(k_fraction * d)`` entries of largest magnitude and sends their
    indices and values (values as float32, or quantised as above).  Top-k is *biased*; with
    error feedback it still converges (Stich, Cordonnier, Jaggi, "Sparsified SGD with
    memory", NeurIPS 2018; Karimireddy et al., "Error feedback fixes SignSGD", ICML 2019).

Error feedback
--------------
:func:`error_feedback_step` implements the memory of Stich et al. (2018, Alg. 1): the
client compresses ``p = v + e`` (its vector plus the residual left over from earlier
rounds), transmits ``C(p)`` and keeps ``e' = p - C(p)``.  Summing over rounds,
``sum_t C(p_t) + e_T = sum_t v_t`` exactly (telescoping), so nothing is lost, only delayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from securefed.codec import Codec
from securefed.errors import ConfigurationError, InvalidDataError

__all__ = [
    "StochasticQuantizer",
    "TopKSparsifier",
    "error_feedback_step",
    "quantize_stochastic",
    "dequantize",
    "pack_bits",
    "unpack_bits",
]

_MAX_BITS = 16


def _check_bits(bits: int) -> None:
    if not (isinstance(bits, (int, np.integer)) and 1 <= int(bits) <= _MAX_BITS):
        raise ConfigurationError(f"bits must be an integer in [1, {_MAX_BITS}], got {bits!r}")


def _as_finite_vector(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim != 1:
        raise InvalidDataError(f"expected a 1-d vector, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InvalidDataError("cannot compress a vector with NaN or inf entries")
    return v


# --------------------------------------------------------------------------- pure functions
def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative integer ``codes`` (each ``< 2**bits``) into ``ceil(n*bits/8)`` bytes.

    >>> pack_bits(np.array([1, 2, 3]), 2).tolist()   # 01 10 11 (little-endian bit order)
    [57]
    """
    _check_bits(bits)
    codes = np.asarray(codes, dtype=np.uint32)
    planes = ((codes[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` for ``count`` codes.

    >>> unpack_bits(np.array([57], dtype=np.uint8), 2, 3).tolist()
    [1, 2, 3]
    """
    _check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8)
    need = math.ceil(count * bits / 8)
    if packed.shape != (need,):
        raise InvalidDataError(
            f"packed codes have shape {packed.shape}, expected ({need},) for {count} codes of {bits} bits"
        )
    flat = np.unpackbits(packed, count=count * bits, bitorder="little")
    planes = flat.reshape(count, bits).astype(np.int64)
    return planes @ (np.int64(1) << np.arange(bits, dtype=np.int64))


def quantize_stochastic(
    vector: np.ndarray, bits: int, *, rng: np.random.Generator
) -> tuple[np.ndarray, float, float]:
    """Unbiased stochastic rounding of ``vector`` onto ``2**bits`` levels in ``[min, max]``.

    Returns ``(codes, lo, hi)``; :func:`dequantize` maps them back.  ``lo`` and ``hi`` are
    rounded to float32 first (that is what travels), so the levels the client uses are
    exactly the ones the server reconstructs.
    """
    _check_bits(bits)
    v = _as_finite_vector(vector)
    if v.size == 0:
        return np.zeros(0, dtype=np.int64), 0.0, 0.0
    lo = float(np.float32(v.min()))
    hi = float(np.float32(v.max()))
    # float32 rounding may move lo above min(v) / hi below max(v) by half an ulp: widen.
    if lo > v.min():
        lo = float(np.nextafter(np.float32(lo), np.float32(-np.inf)))
    if hi < v.max():
        hi = float(np.nextafter(np.float32(hi), np.float32(np.inf)))
    levels = (1 << int(bits)) - 1
    if hi == lo:
        return np.zeros(v.size, dtype=np.int64), lo, hi
    scaled = (v - lo) / (hi - lo) * levels
    low = np.floor(scaled)
    frac = scaled - low
    codes = low + (rng.random(v.size) < frac)
    return np.clip(codes, 0, levels).astype(np.int64), lo, hi


def dequantize(codes: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """``lo + codes * (hi - lo) / (2**bits - 1)`` as float64."""
    levels = (1 << int(bits)) - 1
    codes = np.asarray(codes, dtype=np.float64)
    if hi == lo:
        return np.full(codes.shape, lo, dtype=np.float64)
    return lo + codes * ((hi - lo) / levels)


def error_feedback_step(
    vector: np.ndarray,
    residual: np.ndarray | None,
    codec: Codec,
    *,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """One round of compression with memory (Stich et al. 2018, Alg. 1).

    Compresses ``p = vector + residual`` and returns ``(decoded, payload, new_residual)``
    with ``new_residual = p - decoded``, so that
    ``decoded + new_residual == vector + residual`` (up to float64 rounding).
    """
    v = _as_finite_vector(vector)
    if residual is None:
        residual = np.zeros_like(v)
    residual = np.asarray(residual, dtype=np.float64)
    if residual.shape != v.shape:
        raise InvalidDataError(
            f"error-feedback residual has shape {residual.shape}, expected {v.shape}"
        )
    p = v + residual
    payload = codec.encode(p, rng=rng)
    decoded = codec.decode(payload, dim=v.shape[0])
    return decoded, payload, p - decoded


# --------------------------------------------------------------------------- codecs
class StochasticQuantizer:
    """Unbiased ``bits``-bit stochastic uniform quantiser (Suresh et al., ICML 2017, sec. 3).

    Wire fields: ``q_lo``, ``q_hi`` (float64 scalars holding float32 values) and ``q_codes``
    (``ceil(d * bits / 8)`` bytes).  With ``bits = 8`` a ``d``-vector costs ``d`` bytes
    instead of the ``4 d`` of :class:`~securefed.codec.Float32Codec`.

    >>> import numpy as np
    >>> from securefed.wire import pack
    >>> q = StochasticQuantizer(bits=4)
    >>> fields = q.encode(np.linspace(-1, 1, 100), rng=np.random.default_rng(0))
    >>> fields["q_codes"].nbytes            # 100 values x 4 bits
    50
    """

    def __init__(self, *, bits: int = 8) -> None:
        _check_bits(bits)
        self.bits = int(bits)
        self.name = f"quant{self.bits}"

    def encode(self, vector: np.ndarray, *, rng: np.random.Generator) -> dict[str, Any]:
        codes, lo, hi = quantize_stochastic(vector, self.bits, rng=rng)
        return {"q_lo": lo, "q_hi": hi, "q_codes": pack_bits(codes, self.bits)}

    def decode(self, fields: Mapping[str, Any], *, dim: int) -> np.ndarray:
        try:
            lo, hi, packed = float(fields["q_lo"]), float(fields["q_hi"]), fields["q_codes"]
        except KeyError as exc:
            raise InvalidDataError(
                f"quantised update lacks field {exc.args[0]!r}; expected q_lo, q_hi, q_codes"
            ) from exc
        codes = unpack_bits(packed, self.bits, dim)
        return dequantize(codes, lo, hi, self.bits)

    def scale_fields(self, fields: Mapping[str, Any], factor: float) -> dict[str, Any]:
        """Fields whose decoding is ``factor`` times that of ``fields`` (up to float64 rounding).

        Decoding is ``lo + code * (hi - lo) / (2**b - 1)``, linear in ``(lo, hi)``, so scaling
        both scales every entry; the codes are untouched.  ``lo`` and ``hi`` travel as float64,
        so the scaled values reach the server exactly.  Differential privacy uses this to bound
        the norm of what leaves a client (:func:`securefed.dp.clipping.bound_release`).
        """
        f = float(factor)
        return {**fields, "q_lo": float(fields["q_lo"]) * f, "q_hi": float(fields["q_hi"]) * f}

    def __repr__(self) -> str:
        return f"StochasticQuantizer(bits={self.bits})"


class TopKSparsifier:
    """Send only the ``ceil(k_fraction * d)`` largest-magnitude entries (indices + values).

    Indices travel as ``uint16`` when ``d <= 65536`` (else ``uint32``); values as float32,
    or through an unbiased :class:`StochasticQuantizer` when ``value_bits`` is given.
    Ties in magnitude are broken by the lower index, so encoding is deterministic.
    Use it with error feedback (:func:`error_feedback_step`): top-k alone is biased.

    >>> import numpy as np
    >>> t = TopKSparsifier(k_fraction=0.5)
    >>> f = t.encode(np.array([0.1, -3.0, 2.0, 0.0]), rng=np.random.default_rng(0))
    >>> t.decode(f, dim=4).tolist()
    [0.0, -3.0, 2.0, 0.0]
    """

    def __init__(self, *, k_fraction: float = 0.1, value_bits: int | None = None) -> None:
        if not (isinstance(k_fraction, (int, float)) and 0 < k_fraction <= 1):
            raise ConfigurationError(f"k_fraction must be in (0, 1], got {k_fraction!r}")
        self.k_fraction = float(k_fraction)
        self.value_bits = None if value_bits is None else int(value_bits)
        self._quantizer = None if value_bits is None else StochasticQuantizer(bits=value_bits)
        suffix = "" if value_bits is None else f"-q{self.value_bits}"
        self.name = f"top{self.k_fraction:g}{suffix}"

    def k_for(self, dim: int) -> int:
        """Number of entries kept for a vector of ``dim`` entries (at least 1)."""
        return max(1, min(dim, math.ceil(self.k_fraction * dim)))

    def encode(self, vector: np.ndarray, *, rng: np.random.Generator) -> dict[str, Any]:
        v = _as_finite_vector(vector)
        d = v.shape[0]
        k = self.k_for(d)
        order = np.argsort(-np.abs(v), kind="stable")[:k]
        idx = np.sort(order)
        idx_dtype = np.uint16 if d <= 65536 else np.uint32
        fields: dict[str, Any] = {"k_idx": idx.astype(idx_dtype)}
        if self._quantizer is None:
            fields["k_val"] = v[idx].astype(np.float32)
        else:
            fields.update(self._quantizer.encode(v[idx], rng=rng))
        return fields

    def decode(self, fields: Mapping[str, Any], *, dim: int) -> np.ndarray:
        idx = fields.get("k_idx")
        k = self.k_for(dim)
        if not isinstance(idx, np.ndarray) or idx.shape != (k,):
            got = None if idx is None else getattr(idx, "shape", type(idx).__name__)
            raise InvalidDataError(f"top-k update must carry {k} indices, got {got}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= dim):
            raise InvalidDataError(f"top-k index out of range [0, {dim}): {idx.min()}..{idx.max()}")
        if self._quantizer is None:
            vals = fields.get("k_val")
            if not isinstance(vals, np.ndarray) or vals.shape != (k,):
                raise InvalidDataError(f"top-k update must carry {k} float32 values")
            values = vals.astype(np.float64)
        else:
            values = self._quantizer.decode(fields, dim=k)
        out = np.zeros(dim, dtype=np.float64)
        out[idx] = values
        return out

    def scale_fields(self, fields: Mapping[str, Any], factor: float) -> dict[str, Any]:
        """Fields whose decoding is ``factor`` times that of ``fields`` (same indices; values
        scaled in float32, or through the value quantiser's :meth:`StochasticQuantizer.scale_fields`)."""
        if self._quantizer is not None:
            return self._quantizer.scale_fields(fields, factor)
        vals = np.asarray(fields["k_val"], dtype=np.float32)
        return {**fields, "k_val": (vals * np.float32(factor)).astype(np.float32)}

    def __repr__(self) -> str:
        return f"TopKSparsifier(k_fraction={self.k_fraction}, value_bits={self.value_bits})"
