"""Deprecated: moved to :mod:`securefed.channel`."""

from __future__ import annotations

from typing import Any

_MOVED = {"AggregationChannel": "securefed.channel", "PlainChannel": "securefed.channel", "check_uploads": "securefed.channel"}


def __getattr__(name: str) -> Any:
    from securefed._compat import moved

    return moved(__name__, name, _MOVED)
