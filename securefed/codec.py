"""Codecs: how a client's update vector is encoded for the wire and decoded by the server.

A codec turns a float vector into named fields for :func:`securefed.wire.pack`
and back.  The plain channel transmits exactly these fields, so the byte counter counts the
encoded form.  Compressing codecs (quantisation, sparsification) live with the strategies
that use them; they implement the same two methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from securefed.errors import InvalidDataError

__all__ = ["Codec", "Float32Codec"]


@runtime_checkable
class Codec(Protocol):
    """Encode a float vector into wire fields, and decode them back."""

    name: str

    def encode(self, vector: np.ndarray, *, rng: np.random.Generator) -> dict[str, Any]: ...

    def decode(self, fields: Mapping[str, Any], *, dim: int) -> np.ndarray: ...


class Float32Codec:
    """The uncompressed default: the update as float32 (4 bytes per parameter)."""

    name = "float32"

    def encode(self, vector: np.ndarray, *, rng: np.random.Generator) -> dict[str, Any]:
        return {"u": np.asarray(vector, dtype=np.float32)}

    def decode(self, fields: Mapping[str, Any], *, dim: int) -> np.ndarray:
        u = fields.get("u")
        if not isinstance(u, np.ndarray) or u.shape != (dim,):
            got = None if u is None else getattr(u, "shape", type(u).__name__)
            raise InvalidDataError(f"float32 update must have shape ({dim},), got {got}")
        return u.astype(np.float64)
