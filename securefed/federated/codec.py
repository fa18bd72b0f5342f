"""Deprecated: moved to :mod:`securefed.codec`."""

from __future__ import annotations

from typing import Any

_MOVED = {"Codec": "securefed.codec", "Float32Codec": "securefed.codec"}


def __getattr__(name: str) -> Any:
    from securefed._compat import moved

    return moved(__name__, name, _MOVED)
