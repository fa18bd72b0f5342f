"""Fixed-point encoding of float updates into the group Z_{2^b} used by secure aggregation.

Masking works in a finite group, so every client turns its float vector into integers
modulo ``R = 2^b`` before adding masks (Bonawitz et al., CCS 2017: inputs are
vectors in ``Z_R^m``).  The encoding here is:

1. clip every coordinate to the declared range ``[-clip_range, clip_range]`` (the weight
   coordinate must lie in ``[0, max_weight]`` and is refused, not clipped, when it does not);
2. multiply by ``scale``;
3. round *stochastically and without bias*: ``v -> floor(v) + Bernoulli(v - floor(v))``, so
   ``E[round(v)] = v`` and the quantisation error of a sum of ``n`` clients has zero mean and
   standard deviation at most ``sqrt(n) / (2 scale)`` per coordinate;
4. wrap into ``Z_{2^b}`` (two's complement).

The server decodes the *sum* by reading it as a centred representative in
``[-2^(b-1), 2^(b-1))`` and dividing by ``scale``.  This is exact as long as the true integer
sum lies in that interval, which is guaranteed when ::

    n * (clip_range * scale + 1) <= 2^(b-1) - 1      (update coordinates)
    n * (max_weight * scale + 1) <= 2^(b-1) - 1      (weight coordinate)

(the ``+ 1`` covers rounding up).  :meth:`FixedPointEncoder.check_overflow` refuses any
parameter set that breaks either bound and says which one.  Worked number: ``b = 32``,
``n = 10``, ``clip_range = 100`` and ``max_weight = 1000`` allow a scale up to
``(2^31 - 1) / 10 / 1001 ~ 214,534``; :func:`choose_scale` picks the largest power of two
below it, ``2^17 = 131,072``.

>>> enc = FixedPointEncoder(clip_range=1.0, max_weight=1.0, scale=2.0**10, bits=16)
>>> enc.check_overflow(num_clients=31)
>>> enc.check_overflow(num_clients=32)
Traceback (most recent call last):
...
securefed.errors.ConfigurationError: fixed-point overflow: num_clients * (clip_range * scale + 1) = 32 * (1.0 * 1024.0 + 1) = 32800 exceeds the largest centred value of Z_2^16, 2^15 - 1 = 32767; lower scale, clip_range or num_clients, or raise bits
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from securefed.errors import ConfigurationError, InvalidDataError

__all__ = ["FixedPointEncoder", "choose_scale", "uint_dtype", "stochastic_round"]


def uint_dtype(bits: int) -> np.dtype:
    """The unsigned dtype used in memory for ``Z_{2^bits}`` (uint32 up to 32 bits, else uint64)."""
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def wire_dtype(bits: int) -> np.dtype:
    """The smallest unsigned dtype that holds ``bits`` bits (what travels on the wire)."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if bits <= 8 * np.dtype(dt).itemsize:
            return np.dtype(dt)
    raise ConfigurationError(f"bits must be <= 64, got {bits}")


def _check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 64:
        raise ConfigurationError(f"bits must be an integer in [2, 64], got {bits!r}")


def stochastic_round(values: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """Round each entry to ``floor(v)`` or ``floor(v) + 1`` with ``E[result] = v`` (int64)."""
    fl = np.floor(values)
    up = rng.random(values.shape) < (values - fl)
    return fl.astype(np.int64) + up.astype(np.int64)


def choose_scale(*, clip_range: float, max_weight: float, bits: int, num_clients: int) -> float:
    """Largest power of two ``scale`` with which ``num_clients`` encoded inputs cannot overflow.

    >>> choose_scale(clip_range=100.0, max_weight=1000.0, bits=32, num_clients=10)
    131072.0
    """
    _check_bits(bits)
    if num_clients < 1:
        raise ConfigurationError(f"num_clients must be >= 1, got {num_clients}")
    bound = max(float(clip_range), float(max_weight))
    limit = (2 ** (bits - 1) - 1) / num_clients - 1
    if limit <= 0 or bound <= 0:
        raise ConfigurationError(
            f"no positive scale fits {num_clients} clients in Z_2^{bits} "
            f"(range {bound}); raise bits or lower num_clients"
        )
    exponent = math.floor(math.log2(limit / bound))
    scale = 2.0**exponent
    while num_clients * (bound * scale + 1) > 2 ** (bits - 1) - 1:  # float log2 edge cases
        scale /= 2
    return scale


@dataclass(frozen=True)
class FixedPointEncoder:
    """Clip, scale, round without bias and wrap into ``Z_{2^bits}``.

    Parameters
    ----------
    clip_range:
        Declared bound on the absolute value of every (weight-scaled) update coordinate.
    max_weight:
        Declared bound on the client weight, which travels as one more coordinate.
    scale:
        Fixed-point scale: one unit of the integer encoding is ``1 / scale``.
    bits:
        ``b`` in ``Z_{2^b}`` (default 32).
    """

    clip_range: float
    max_weight: float
    scale: float
    bits: int = 32

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        for name in ("clip_range", "max_weight", "scale"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a finite value > 0, got {value!r}")

    @property
    def modulus(self) -> int:
        return 1 << int(self.bits)

    @property
    def dtype(self) -> np.dtype:
        return uint_dtype(int(self.bits))

    def check_overflow(self, *, num_clients: int) -> None:
        """Refuse parameters for which the sum of ``num_clients`` inputs could wrap around."""
        top = 2 ** (int(self.bits) - 1) - 1
        for label, bound in (("clip_range", self.clip_range), ("max_weight", self.max_weight)):
            worst = num_clients * (bound * self.scale + 1)
            if worst > top:
                raise ConfigurationError(
                    f"fixed-point overflow: num_clients * ({label} * scale + 1) = "
                    f"{num_clients} * ({bound} * {self.scale} + 1) = {worst:.15g} exceeds the "
                    f"largest centred value of Z_2^{self.bits}, 2^{self.bits - 1} - 1 = {top}; "
                    f"lower scale, {label} or num_clients, or raise bits"
                )

    def encode_signed(
        self, vector: np.ndarray, weight: float, *, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """Clip and round ``vector`` (int64 array) and ``weight`` (int) before wrapping.

        Raises :class:`InvalidDataError` on NaN/inf or a weight outside ``[0, max_weight]``.
        """
        v = np.asarray(vector, dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise InvalidDataError("update contains NaN or inf; expected finite values")
        if not (np.isfinite(weight) and 0 <= weight <= self.max_weight):
            raise InvalidDataError(
                f"client weight {weight!r} is outside the declared range [0, {self.max_weight}]"
            )
        clipped = np.clip(v, -self.clip_range, self.clip_range)
        ints = stochastic_round(clipped * self.scale, rng=rng)
        w = int(stochastic_round(np.array([weight * self.scale]), rng=rng)[0])
        return ints, w

    def wrap(self, signed: np.ndarray) -> np.ndarray:
        """Map signed integers into ``Z_{2^bits}`` (two's complement, in :attr:`dtype`)."""
        u = np.asarray(signed, dtype=np.int64).astype(np.uint64)
        if self.bits < 64:
            u &= np.uint64(self.modulus - 1)
        return u.astype(self.dtype)

    def unwrap(self, values: np.ndarray) -> np.ndarray:
        """Centred representative in ``[-2^(b-1), 2^(b-1))`` of each entry (int64)."""
        u = np.asarray(values).astype(np.uint64)
        if self.bits < 64:
            u &= np.uint64(self.modulus - 1)
            signed = u.astype(np.int64)
            half = 1 << (int(self.bits) - 1)
            signed[signed >= half] -= self.modulus
            return signed
        return u.view(np.int64)

    def decode(self, values: np.ndarray) -> np.ndarray:
        """Float value of a (summed) encoded vector: centred representative / scale."""
        return self.unwrap(values).astype(np.float64) / self.scale
