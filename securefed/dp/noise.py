"""Where DP noise comes from: a seeded simulation stream or the operating system's CSPRNG.

Two modes, after Opacus's ``secure_mode``:

* **simulation** (default): noise is drawn from a ``numpy.random.Generator``, either one
  built from the ``seed`` given here or, without a seed, the stream the engine hands to each
  phase (itself spawned from the run's root seed).  Runs are reproducible bit for bit.
* **secure**: noise is drawn from ``os.urandom`` (the OS CSPRNG), so nobody who knows the
  simulation seed can subtract the noise again.  A seed is refused: a seeded stream is
  exactly what secure mode exists to rule out.

Gaussian samples in secure mode are produced by the Box-Muller transform (Box and Muller,
1958) from 53-bit uniform doubles built from OS random bytes.  The transform is exact in
real arithmetic; in floating point the low-order bits of a sample are not perfectly
distributed (Mironov, CCS 2012, showed this can leak for the Laplace mechanism).  Where that
matters, use the integer mechanism of :mod:`securefed.dp.distributed`, whose discrete
Gaussian sampler works in exact integer/rational arithmetic.
"""

from __future__ import annotations

import os

import numpy as np

from securefed.errors import ConfigurationError

__all__ = ["GaussianNoise", "secure_uniform01", "secure_standard_normal"]


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


class GaussianNoise:
    """Isotropic Gaussian noise ``N(0, std^2 I)`` from a seeded or a secure source.

    Parameters
    ----------
    secure:
        Draw from the OS CSPRNG; ``seed`` must then be ``None``.
    seed:
        Simulation only: a private stream for this noise, independent of the engine's.
        Without it, :meth:`sample` uses the ``rng`` it is given.
    """

    def __init__(self, *, secure: bool = False, seed: int | None = None) -> None:
        if secure and seed is not None:
            raise ConfigurationError(
                f"secure mode draws noise from the OS CSPRNG and refuses a seed; got seed={seed!r}, "
                "expected seed=None (or secure=False for a reproducible simulation)"
            )
        self.secure = bool(secure)
        self.seed = seed
        self._rng = None if (secure or seed is None) else np.random.default_rng(seed)

    def sample(self, size: int, *, std: float, rng: np.random.Generator | None = None) -> np.ndarray:
        """``size`` draws of ``N(0, std^2)`` as float64."""
        if not std >= 0:
            raise ConfigurationError(f"noise std must be >= 0, got {std!r}")
        if self.secure:
            return std * secure_standard_normal(size)
        gen = self._rng if self._rng is not None else rng
        if gen is None:
            raise ConfigurationError(
                "simulation noise needs a seed or an rng (numpy Generator); got neither")
        return gen.normal(0.0, std, size=int(size))

    def describe(self) -> dict[str, object]:
        return {"secure": self.secure, "seed": self.seed}
