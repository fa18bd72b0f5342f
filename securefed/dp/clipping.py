"""Client-level L2 clipping, the step that bounds each client's influence.

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018, Algorithm 1, ``ClipFn``) scales each client's model update ``Delta`` to
``Delta * min(1, C / ||Delta||_2)``.  After clipping, adding or removing one client
changes the (uniformly weighted) sum of updates by at most ``C`` in L2 norm: that bound,
the *sensitivity*, is what the Gaussian noise is calibrated to.
"""

from __future__ import annotations

import math

import numpy as np

from securefed.errors import ConfigurationError, InvalidDataError

__all__ = ["clip_l2", "check_clip_norm", "check_delta", "check_noise_multiplier"]


def check_clip_norm(clip_norm: float) -> float:
    """Validate a clipping norm: a finite number > 0."""
    try:
        value = float(clip_norm)
    except (TypeError, ValueError):
        raise ConfigurationError(f"clip_norm must be a number > 0, got {clip_norm!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
    return value


def check_delta(delta: float) -> float:
    """Validate a DP delta: strictly between 0 and 1."""
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise ConfigurationError(f"delta must be a number in (0, 1), got {delta!r}") from None
    if not 0.0 < value < 1.0:
        raise ConfigurationError(f"delta must be in the open interval (0, 1), got {delta!r}")
    return value


def check_noise_multiplier(noise_multiplier: float) -> float:
    """Validate a noise multiplier (noise std divided by sensitivity): finite and > 0."""
    try:
        value = float(noise_multiplier)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"noise_multiplier must be a number > 0, got {noise_multiplier!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(
            f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    return value


def clip_l2(update: np.ndarray, *, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scale ``update`` to L2 norm at most ``clip_norm``; return ``(clipped, original_norm)``.

    An update already inside the ball is returned unchanged (as a float64 copy).

    >>> clipped, norm = clip_l2(np.array([3.0, 4.0]), clip_norm=1.0)
    >>> clipped, norm
    (array([0.6, 0.8]), 5.0)
    """
    clip_norm = check_clip_norm(clip_norm)
    u = np.array(update, dtype=np.float64, copy=True)
    if u.ndim != 1:
        raise InvalidDataError(f"update must be a flat vector, got shape {u.shape}")
    if not np.all(np.isfinite(u)):
        raise InvalidDataError("update contains NaN or inf values; it cannot be clipped")
    norm = float(np.linalg.norm(u))
    if norm > clip_norm:
        # Dividing by the norm and multiplying by C can land a few ulps above C; the
        # nextafter step keeps the bound exact so that the sensitivity really is C.
        u *= clip_norm / norm
        while float(np.linalg.norm(u)) > clip_norm:
            u *= np.nextafter(1.0, 0.0)
    return u, norm
