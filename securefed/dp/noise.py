"""Where DP noise comes from: the operating system's CSPRNG (default) or, on request, a stream
reproducible from a seed.

* **Secure** (default): noise is drawn from ``os.urandom`` (the OS CSPRNG).  Nobody who knows
  the run's seed, which every result file records, can regenerate the noise and subtract it
  again.  A seed is refused: a seeded stream is exactly what this mode exists to rule out.
* **Reproducible** (``reproducible_noise=True``): noise is drawn from a ``numpy`` generator,
  either one built from the ``seed`` given here or, without a seed, the stream the engine
  hands to each phase (spawned from the run's root seed).  Runs repeat bit for bit, and for
  the same reason **they are not private**: anyone holding the seed recomputes the noise.
  Every epsilon such a run reports is marked ``"not private: noise reproducible from the
  seed"`` (:data:`NOT_PRIVATE`).

Floating point (Mironov, CCS 2012).  Real-valued secure noise (central and local DP, DP-SGD)
is the Box-Muller transform (Box and Muller 1958) of 53-bit uniform doubles built from OS
random bytes.  The transform is exact in real arithmetic; in IEEE doubles the set of values a
noisy output can take depends on the value before noise, and Mironov showed for the Laplace
mechanism that those low-order bits can reveal it.  These three modes are therefore *exposed*
to floating-point attacks of that kind: their epsilon is the epsilon of the ideal Gaussian
mechanism, not a proof about the doubles computed here.  Distributed DP is not exposed: its
noise is an integer drawn by an exact sampler (:mod:`securefed.dp.distributed`) and added to
integers.  ``docs/dp.md`` states this beside every mode.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from securefed.errors import ConfigurationError

__all__ = [
    "GaussianNoise",
    "NOT_PRIVATE",
    "resolve_noise_mode",
    "secure_uniform01",
    "secure_standard_normal",
    "secure_generator",
]

#: The mark every epsilon of a run with reproducible noise carries.
NOT_PRIVATE = "not private: noise reproducible from the seed"


def secure_uniform01(size: int) -> np.ndarray:
    """``size`` uniform doubles in (0, 1] with 53 random bits each, from ``os.urandom``."""
    raw = np.frombuffer(os.urandom(8 * int(size)), dtype=np.uint64)
    return ((raw >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 9007199254740992.0)


def secure_standard_normal(size: int) -> np.ndarray:
    """``size`` standard normal samples by Box-Muller from OS random bits."""
    size = int(size)
    half = (size + 1) // 2
    u1 = secure_uniform01(half)
    u2 = secure_uniform01(half)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]


def secure_generator() -> np.random.Generator:
    """A ``numpy`` generator seeded with 256 bits from ``os.urandom``: a stream nobody can
    recompute, for randomness that must be secret but is drawn in bulk (Poisson batch masks,
    the canaries of an audit)."""
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(os.urandom(32), "big")))


def resolve_noise_mode(
    *, reproducible_noise: bool, seed: int | None, secure: bool | None = None
) -> bool:
    """Whether noise is reproducible, from the keyword arguments every DP class takes.

    ``secure`` is the old name of the switch (``secure=False`` meant reproducible); it still
    works with a :class:`DeprecationWarning`.  A seed without ``reproducible_noise=True`` is
    refused: secure noise takes no seed.
    """
    if secure is not None:
        warnings.warn(
            "secure= is deprecated: noise is secure (OS CSPRNG) by default; pass "
            "reproducible_noise=True for noise reproducible from the seed (not private)",
            DeprecationWarning, stacklevel=3)
        if not secure:
            reproducible_noise = True
        elif reproducible_noise:
            raise ConfigurationError(
                "secure=True and reproducible_noise=True contradict each other; pass only "
                "reproducible_noise")
    if seed is not None and not reproducible_noise:
        raise ConfigurationError(
            f"secure noise is drawn from the OS CSPRNG and refuses a seed; got seed={seed!r}, "
            "expected seed=None (or reproducible_noise=True for noise reproducible from the "
            "seed, which is not private)")
    return bool(reproducible_noise)


class GaussianNoise:
    """Isotropic Gaussian noise ``N(0, std^2 I)`` from the OS CSPRNG or a reproducible stream.

    Parameters
    ----------
    reproducible_noise:
        Draw from a seeded ``numpy`` generator instead of the OS CSPRNG (not private).
    seed:
        Reproducible mode only: a private stream for this noise, independent of the
        engine's.  Without it, :meth:`sample` uses the ``rng`` it is given.
    secure:
        Deprecated spelling: ``secure=False`` is ``reproducible_noise=True``.
    """

    def __init__(self, *, reproducible_noise: bool = False, seed: int | None = None,
                 secure: bool | None = None) -> None:
        self.reproducible = resolve_noise_mode(reproducible_noise=reproducible_noise, seed=seed,
                                               secure=secure)
        self.seed = seed
        self._rng = np.random.default_rng(seed) if (self.reproducible and seed is not None) else None

    @property
    def secure(self) -> bool:
        """True when the noise comes from the OS CSPRNG."""
        return not self.reproducible

    def sample(self, size: int, *, std: float, rng: np.random.Generator | None = None) -> np.ndarray:
        """``size`` draws of ``N(0, std^2)`` as float64 (``rng`` is ignored in secure mode)."""
        if not std >= 0:
            raise ConfigurationError(f"noise std must be >= 0, got {std!r}")
        if not self.reproducible:
            return std * secure_standard_normal(size)
        gen = self._rng if self._rng is not None else rng
        if gen is None:
            raise ConfigurationError(
                "reproducible noise needs a seed or an rng (numpy Generator); got neither")
        return gen.normal(0.0, std, size=int(size))

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"noise": "reproducible" if self.reproducible else "csprng",
                                  "secure": self.secure, "seed": self.seed}
        if self.reproducible:
            out["warning"] = NOT_PRIVATE
        return out
