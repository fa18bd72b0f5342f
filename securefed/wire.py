"""A small, explicit binary format for messages, so that byte counts are real.

Every message exchanged by the simulation engine is serialised with :func:`pack` and the
number of bytes that travel is ``len(pack(...))``.  The format is deliberately simple:

``b"SF1" | u16 field count | for each field: u8 name length, name (ascii),
u8 kind, payload``

where ``kind`` is ``0`` for an ndarray (``u8`` dtype code, ``u8`` ndim, ``u32`` per dimension,
raw little-endian bytes), ``1`` for raw bytes (``u32`` length, bytes), ``2`` for a float64,
``3`` for an int64 and ``4`` for a UTF-8 string (``u32`` length, bytes).

A float32 vector of ``d`` entries in a one-field message costs ``4 * d + 13 + len(name)``
bytes, i.e. about ``4 d``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from securefed.errors import InvalidDataError

__all__ = ["pack", "unpack"]

_MAGIC = b"SF1"
_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(x).newbyteorder("<")
    for x in (
        "float32", "float64", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64", "bool",
    )
)
_DTYPE_CODE = {dt.str: i for i, dt in enumerate(_DTYPES)}


def _dtype_code(arr: np.ndarray) -> int:
    key = arr.dtype.newbyteorder("<").str if arr.dtype.byteorder not in ("|",) else arr.dtype.str
    for i, dt in enumerate(_DTYPES):
        if dt.str == key or (dt.kind == arr.dtype.kind and dt.itemsize == arr.dtype.itemsize):
            return i
    raise InvalidDataError(f"cannot serialise array of dtype {arr.dtype}; expected one of "
                           f"{[str(d) for d in _DTYPES]}")


def pack(fields: Mapping[str, Any]) -> bytes:
    """Serialise a mapping of named fields to bytes.

    >>> import numpy as np
    >>> len(pack({"u": np.zeros(10, dtype=np.float32)}))
    54
    """
    out = [_MAGIC, struct.pack("<H", len(fields))]
    for name, value in fields.items():
        raw_name = name.encode("ascii")
        if len(raw_name) > 255:
            raise InvalidDataError(f"field name too long: {len(raw_name)} > 255")
        out.append(struct.pack("<B", len(raw_name)) + raw_name)
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            code = _dtype_code(arr)
            arr = arr.astype(_DTYPES[code], copy=False)
            out.append(struct.pack("<BBB", 0, code, arr.ndim))
            out.append(struct.pack(f"<{arr.ndim}I", *arr.shape))
            out.append(arr.tobytes())
        elif isinstance(value, (bytes, bytearray, memoryview)):
            b = bytes(value)
            out.append(struct.pack("<BI", 1, len(b)) + b)
        elif isinstance(value, (bool, np.bool_)):
            out.append(struct.pack("<Bq", 3, int(value)))
        elif isinstance(value, (int, np.integer)):
            out.append(struct.pack("<Bq", 3, int(value)))
        elif isinstance(value, (float, np.floating)):
            out.append(struct.pack("<Bd", 2, float(value)))
        elif isinstance(value, str):
            b = value.encode("utf-8")
            out.append(struct.pack("<BI", 4, len(b)) + b)
        else:
            raise InvalidDataError(
                f"cannot serialise field {name!r} of type {type(value).__name__}; expected "
                "ndarray, bytes, int, float or str"
            )
    return b"".join(out)


def unpack(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack`; raises :class:`InvalidDataError` on a truncated or foreign blob."""
    view = memoryview(data)
    if bytes(view[:3]) != _MAGIC:
        raise InvalidDataError(f"not a securefed message: magic {bytes(view[:3])!r}, expected {_MAGIC!r}")
    pos = 3
    try:
        (count,) = struct.unpack_from("<H", view, pos)
        pos += 2
        fields: dict[str, Any] = {}
        for _ in range(count):
            (nlen,) = struct.unpack_from("<B", view, pos)
            pos += 1
            name = bytes(view[pos : pos + nlen]).decode("ascii")
            pos += nlen
            (kind,) = struct.unpack_from("<B", view, pos)
            pos += 1
            if kind == 0:
                code, ndim = struct.unpack_from("<BB", view, pos)
                pos += 2
                shape = struct.unpack_from(f"<{ndim}I", view, pos)
                pos += 4 * ndim
                dt = _DTYPES[code]
                nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
                if pos + nbytes > len(view):
                    raise InvalidDataError("truncated message: array payload shorter than its header says")
                fields[name] = np.frombuffer(view[pos : pos + nbytes], dtype=dt).reshape(shape).copy()
                pos += nbytes
            elif kind in (1, 4):
                (blen,) = struct.unpack_from("<I", view, pos)
                pos += 4
                if pos + blen > len(view):
                    raise InvalidDataError("truncated message: byte payload shorter than its header says")
                raw = bytes(view[pos : pos + blen])
                fields[name] = raw if kind == 1 else raw.decode("utf-8")
                pos += blen
            elif kind == 2:
                (fields[name],) = struct.unpack_from("<d", view, pos)
                pos += 8
            elif kind == 3:
                (fields[name],) = struct.unpack_from("<q", view, pos)
                pos += 8
            else:
                raise InvalidDataError(f"unknown field kind {kind} in message")
    except struct.error as exc:
        raise InvalidDataError(f"truncated or corrupted message: {exc}") from exc
    if pos != len(view):
        raise InvalidDataError(f"trailing bytes in message: {len(view) - pos} unread")
    return fields

