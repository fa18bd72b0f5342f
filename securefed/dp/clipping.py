"""Client-level L2 clipping, and the bound on what actually leaves a client.

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018, Algorithm 1, ``ClipFn``) scales each client's model update ``Delta`` to
``Delta * min(1, C / ||Delta||_2)``.  After clipping, adding or removing one client
changes the (uniformly weighted) sum of updates by at most ``C`` in L2 norm: that bound,
the *sensitivity*, is what the Gaussian noise is calibrated to.

Clipping the raw update is not enough when the strategy transforms it before upload:
stochastic quantisation rounds every coordinate to a level between the vector's minimum and
maximum (a 2-bit code can multiply the norm by several times at high dimension), error
feedback adds the residual of earlier rounds, and float32 encoding rounds each entry.  So
:func:`bound_release` projects *the encoded message itself*, the thing the server decodes,
back into the ``C``-ball, by rescaling the fields whose decoding is linear in them, and
checks the decoded norm afterwards.  The sensitivity then holds by construction for every
strategy and codec, not by assumption.
"""

from __future__ import annotations

import math

import numpy as np

from securefed.codec import Codec, Float32Codec
from securefed.errors import ConfigurationError, InvalidDataError

__all__ = ["clip_l2", "bound_release", "check_codec_scalable", "check_clip_norm", "check_delta",
           "check_noise_multiplier"]


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


def check_codec_scalable(codec: Codec) -> Codec:
    """Refuse a codec whose messages :func:`bound_release` cannot rescale.

    Float32 messages are rescaled directly; any other codec must offer
    ``scale_fields(fields, factor) -> fields`` whose decoding is ``factor`` times the original
    (up to rounding, which :func:`bound_release` checks).
    """
    if isinstance(codec, Float32Codec) or callable(getattr(codec, "scale_fields", None)):
        return codec
    raise ConfigurationError(
        f"codec {getattr(codec, 'name', type(codec).__name__)!r} has no scale_fields(fields, "
        "factor) method, so differential privacy cannot bound what it sends; expected the "
        "float32 codec or a codec of securefed.compression")


def _scale(codec: Codec, fields: dict, factor: float) -> dict:
    if isinstance(codec, Float32Codec):
        u = np.asarray(fields["u"], dtype=np.float32)
        return {**fields, "u": (u * np.float32(factor)).astype(np.float32)}
    return codec.scale_fields(fields, factor)  # type: ignore[attr-defined]


def bound_release(
    payload: dict, *, codec: Codec, dim: int, clip_norm: float
) -> tuple[np.ndarray, dict, float]:
    """Rescale an encoded message so that what the server decodes has L2 norm <= ``clip_norm``.

    Returns ``(decoded, payload, factor)``: the decoded vector the server will see, the
    (possibly rescaled) payload and the factor applied (1.0 when the message was inside the
    ball).  The factor starts at ``C / ||decoded||`` and, while rounding in the encoded form
    still lands above ``C``, shrinks by a relative step that starts at 2^-45 and doubles.

    >>> from securefed.codec import Float32Codec
    >>> vec, fields, f = bound_release({"u": np.array([3.0, 4.0], dtype=np.float32)},
    ...                                codec=Float32Codec(), dim=2, clip_norm=1.0)
    >>> bool(np.linalg.norm(vec) <= 1.0), round(f, 6)
    (True, 0.2)
    """
    clip_norm = check_clip_norm(clip_norm)
    decoded = np.asarray(codec.decode(payload, dim=dim), dtype=np.float64)
    if not np.all(np.isfinite(decoded)):
        raise InvalidDataError("the encoded update decodes to NaN or inf; it cannot be bounded")
    norm = float(np.linalg.norm(decoded))
    if norm <= clip_norm:
        return decoded, payload, 1.0
    factor = clip_norm / norm
    step = 2.0 ** -45
    while True:
        scaled = _scale(codec, payload, factor)
        out = np.asarray(codec.decode(scaled, dim=dim), dtype=np.float64)
        if float(np.linalg.norm(out)) <= clip_norm:
            return out, scaled, factor
        if step >= 1.0:  # pragma: no cover - a zero message always fits
            raise InvalidDataError(
                f"could not bring the encoded update inside the L2 ball of radius {clip_norm}")
        factor *= 1.0 - step
        step *= 2.0
