"""Deprecated: moved to :mod:`securefed.wire`."""

from __future__ import annotations

from typing import Any

_MOVED = {"pack": "securefed.wire", "unpack": "securefed.wire"}


def __getattr__(name: str) -> Any:
    from securefed._compat import moved

    return moved(__name__, name, _MOVED)
