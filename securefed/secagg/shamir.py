"""Shamir secret sharing (Shamir, CACM 1979), vectorised with numpy over GF(p), p = 2^31 - 1.

Why this field: products of two elements are below ``2^62``, so a multiply-then-reduce fits
in ``int64`` without any Python big integers, and a whole batch of secrets, shares and
evaluation points is handled by a few array operations.  A byte string is read as one
little-endian integer and cut into 30-bit limbs (each below ``2^30 < p``); each limb is
shared with its own independent random polynomial, which keeps Shamir's perfect secrecy
limb by limb.  A 16-byte seed is 5 field elements, so one client's two secrets (its
self-mask seed and its mask-key seed) are 10.

The random coefficients come from the operating system's CSPRNG (``os.urandom``), drawn
uniformly in ``[0, p)`` by rejection.  Evaluation points are ``client_id + 1`` (never 0,
where the secret sits).

Cost: sharing ``m`` elements to ``h`` holders with threshold ``t`` is a table of powers
``x_i^j`` and two exact int64 products with the ``(t, m)`` coefficients, taken a few hundred
holders at a time so the table stays below 16 MB (about 3 ms of CPU under ``cProfile`` for
``h = 500``, ``t = 263``, ``m = 10``: ``python benchmarks/secagg_profile.py``); reconstruction with a shared set of ``t`` points costs one ``O(t^2)`` Lagrange-coefficient
computation plus one multiply-add per share.

>>> import numpy as np
>>> secret = secret_to_elements(b"sixteen byte key")
>>> points = np.arange(1, 6)
>>> shares = split(secret, threshold=3, points=points)
>>> elements_to_secret(combine(points[[0, 2, 4]], shares[[0, 2, 4]]), 16)
b'sixteen byte key'
"""

from __future__ import annotations

import os

import numpy as np

from securefed.errors import ConfigurationError, InvalidDataError

__all__ = [
    "PRIME",
    "LIMB_BITS",
    "elements_for",
    "secret_to_elements",
    "elements_to_secret",
    "random_elements",
    "split",
    "lagrange_at_zero",
    "combine",
    "combine_many",
]

PRIME = (1 << 31) - 1
LIMB_BITS = 30
_P = np.int64(PRIME)


def elements_for(nbytes: int) -> int:
    """Number of field elements that carry a secret of ``nbytes`` bytes."""
    return -(-8 * nbytes // LIMB_BITS)


def secret_to_elements(secret: bytes) -> np.ndarray:
    """Cut ``secret`` (read as a little-endian integer) into 30-bit limbs (int64)."""
    value = int.from_bytes(bytes(secret), "little")
    mask = (1 << LIMB_BITS) - 1
    return np.array([(value >> (LIMB_BITS * i)) & mask for i in range(elements_for(len(secret)))],
                    dtype=np.int64)


def elements_to_secret(elements: np.ndarray, nbytes: int) -> bytes:
    """Inverse of :func:`secret_to_elements`; refuses elements that cannot be its limbs."""
    e = np.asarray(elements, dtype=np.int64)
    m = elements_for(nbytes)
    if e.shape != (m,):
        raise InvalidDataError(f"expected {m} elements, got shape {e.shape}")
    top_bits = 8 * nbytes - LIMB_BITS * (m - 1)
    if np.any((e < 0) | (e >= 1 << LIMB_BITS)) or int(e[-1]) >> top_bits:
        raise InvalidDataError("reconstructed value is not a limb of a secret: inconsistent shares")
    value = 0
    for i in range(m - 1, -1, -1):
        value = (value << LIMB_BITS) | int(e[i])
    return value.to_bytes(nbytes, "little")


def random_elements(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform elements of GF(p) from the OS CSPRNG (31-bit draws, rejecting ``p`` itself)."""
    count = int(np.prod(shape, dtype=np.int64))
    out = np.frombuffer(os.urandom(4 * count), dtype="<u4").astype(np.int64) & PRIME
    bad = np.flatnonzero(out == PRIME)
    while bad.size:
        out[bad] = np.frombuffer(os.urandom(4 * bad.size), dtype="<u4").astype(np.int64) & PRIME
        bad = bad[out[bad] == PRIME]
    return out.reshape(shape)


def _check_points(points: np.ndarray) -> np.ndarray:
    x = np.asarray(points, dtype=np.int64)
    if x.ndim != 1 or x.size == 0:
        raise InvalidDataError(f"points must be a non-empty 1-D array, got shape {x.shape}")
    if np.any((x <= 0) | (x >= PRIME)):
        raise InvalidDataError(f"evaluation points must lie in [1, {PRIME - 1}]")
    if np.unique(x).size != x.size:
        raise InvalidDataError("evaluation points must be distinct (duplicate share holder)")
    return x


def split(elements: np.ndarray, *, threshold: int, points: np.ndarray) -> np.ndarray:
    """Share each element of ``elements`` (shape ``(m,)``) ``threshold``-out-of-``len(points)``.

    Returns an ``(h, m)`` int64 array: row ``i`` is the share held at ``points[i]``.  Any
    ``threshold`` rows determine the secret; fewer reveal nothing about it.
    """
    x = _check_points(points)
    s = np.asarray(elements, dtype=np.int64)
    if s.ndim != 1 or np.any((s < 0) | (s >= PRIME)):
        raise InvalidDataError("secret elements must be a 1-D array of values in [0, p)")
    if not 1 <= threshold <= x.size:
        raise ConfigurationError(
            f"threshold must be in [1, {x.size}] (the number of holders), got {threshold}"
        )
    coeffs = random_elements((threshold - 1, s.size))  # a_1 .. a_{t-1}
    a = np.vstack([s[None, :], coeffs])  # (t, m): row j is the coefficient of x^j
    rows = max(1, _TABLE_ENTRIES // threshold)  # holders per table of powers
    return np.vstack([_evaluate(a, x[i:i + rows]) for i in range(0, x.size, rows)])


_BLOCK = 1 << 15  # rows per product: 2^15 * 2^16 * 2^31 = 2^62 < 2^63
_TABLE_ENTRIES = 1 << 21  # int64 entries of one table of powers (16 MB)


def _powers(x: np.ndarray, count: int) -> np.ndarray:
    """``(h, count)`` array of ``x_i^j mod p`` for ``j < count``: 16 columns one by one,
    then whole blocks of 16 at a time (times ``x^16``)."""
    v = np.empty((x.size, count), dtype=np.int64)
    v[:, 0] = 1
    for j in range(1, min(16, count)):
        v[:, j] = v[:, j - 1] * x % _P
    if count > 16:
        x16 = v[:, 15] * x % _P
        for k in range(16, count, 16):
            w = min(16, count - k)
            v[:, k:k + w] = v[:, k - 16:k - 16 + w] * x16[:, None] % _P
    return v


def _evaluate(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``sum_j a[j] x_i^j mod p`` for every point, as two exact int64 matrix products.

    The powers are split into their low 16 and high 15 bits, so each product of a power part
    and a coefficient is below ``2^47`` and a sum of ``2^15`` of them stays below ``2^63``.
    """
    v = _powers(x, a.shape[0])
    out = np.zeros((x.size, a.shape[1]), dtype=np.int64)
    for k in range(0, a.shape[0], _BLOCK):
        vb, ab = v[:, k:k + _BLOCK], a[k:k + _BLOCK]
        lo = ((vb & 0xFFFF) @ ab) % _P
        hi = ((vb >> 16) @ ab) % _P
        out = (out + lo + (hi << 16) % _P) % _P
    return out


def _inverse(values: np.ndarray) -> np.ndarray:
    """Elementwise inverse in GF(p) by Fermat's little theorem (square-and-multiply)."""
    result = np.ones_like(values)
    base = values % _P
    e = PRIME - 2
    while e:
        if e & 1:
            result = (result * base) % _P
        base = (base * base) % _P
        e >>= 1
    return result


def lagrange_at_zero(points: np.ndarray) -> np.ndarray:
    """Coefficients ``l_i = prod_{j != i} x_j / (x_j - x_i)`` that interpolate at 0.

    ``points`` is ``(t,)`` or a batch ``(g, t)`` of point sets; the result has its shape.
    """
    pts = np.asarray(points, dtype=np.int64)
    batch = pts.reshape(-1, pts.shape[-1]) if pts.ndim else pts
    if pts.ndim not in (1, 2):
        raise InvalidDataError(f"points must be (t,) or (g, t), got shape {pts.shape}")
    x = batch if pts.ndim == 2 else pts[None, :]
    if x.size == 0 or np.any((x <= 0) | (x >= PRIME)):
        raise InvalidDataError(f"evaluation points must lie in [1, {PRIME - 1}] (and be non-empty)")
    if np.any(np.diff(np.sort(x, axis=1), axis=1) == 0):
        raise InvalidDataError("evaluation points must be distinct (duplicate share holder)")
    t = x.shape[1]
    num = np.ones_like(x)
    den = np.ones_like(x)
    for j in range(t):
        fn = np.repeat(x[:, j : j + 1], t, axis=1)
        fd = (x[:, j : j + 1] - x) % _P
        fn[:, j] = 1
        fd[:, j] = 1
        num = (num * fn) % _P
        den = (den * fd) % _P
    lam = (num * _inverse(den)) % _P
    return lam if pts.ndim == 2 else lam[0]


def combine(points: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Reconstruct the elements from ``shares`` (shape ``(t, m)``) held at ``points``."""
    return combine_many(points, np.asarray(shares, dtype=np.int64)[None])[0]


def combine_many(points: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Reconstruct many secrets whose shares sit at the same ``points``.

    ``shares`` has shape ``(s, t, m)`` (secret, holder, element); returns ``(s, m)``.
    """
    lam = lagrange_at_zero(points)
    sh = np.asarray(shares, dtype=np.int64)
    if sh.ndim != 3 or sh.shape[1] != lam.size:
        raise InvalidDataError(
            f"shares must have shape (secrets, {lam.size}, elements), got {sh.shape}"
        )
    if np.any((sh < 0) | (sh >= PRIME)):
        raise InvalidDataError("share values must lie in [0, p)")
    return ((sh * lam[None, :, None]) % _P).sum(axis=1) % _P
