"""The CKKS upload message, its checks, and how a decryption is released.

An upload holds a hospital's ``dim + 1`` values (weighted update and weight) as ciphertexts
of ``N/2`` slots each, with the session, round, sender, key id, parameters, a SHA-256
digest of all of it and, when the hospital has an identity key (:mod:`securefed.identity`),
its Ed25519 signature over that digest: the key authority then knows which hospital sent
which ciphertext, so a server cannot pass off one hospital's upload (or its own
encryptions, which anyone holding the public key can make) as several contributors.

Releasing a decryption (IND-CPA^D, Li and Micciancio, EUROCRYPT 2021): a CKKS decryption is
``message + error`` and the error is a linear function of the secret key, so a party that
knows a ciphertext and its exact decryption gets a linear equation in the key.  Every
released value therefore goes through :func:`release`:

``"rounded"`` (default)
    rounded to a power-of-two grid at least as coarse as the ciphertext's error bound
    (:func:`reveal_grid`), which discards the bits that carry the error except near grid
    boundaries: a mitigation, cheap in precision.
``"flooded"``
    noise flooding by dithered rounding: ``g_f * floor(v / g_f + u)`` with ``u`` uniform on
    ``[0, 1)`` from the OS CSPRNG and ``g_f = 2^flood_bits * grid``.  Unbiased, and for any
    two errors within the bound the released value's distribution differs by at most
    ``2^-flood_bits`` in statistical distance per value (the grid is at least the bound) --
    the provable form (after Li, Micciancio, Schultz and Sorrell, CRYPTO 2022), paid for in
    precision: the released value moves by up to ``g_f``.
``"exact"``
    no protection; for measurements only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tenseal as ts

from securefed.errors import ConfigurationError, InvalidDataError, KeyMaterialError, MessageRejected
from securefed.he.keys import CKKSParameters, CKKSPublicContext
from securefed.identity import IdentityKey, Roster
from securefed.wire import pack, unpack

__all__ = [
    "REVEALS",
    "encrypt_upload",
    "parse_upload",
    "add_uploads",
    "decrypt_sum",
    "reveal_grid",
    "release",
    "upload_signed_bytes",
]

REVEALS = ("rounded", "flooded", "exact")
_CT_PREFIX = "ct"
_LABEL = b"securefed/ckks/v1|upload|"


def _chunks(n_values: int, slots: int) -> list[tuple[int, int]]:
    return [(s, min(s + slots, n_values)) for s in range(0, n_values, slots)]


def _digest(fields: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(pack(fields)).digest()


def upload_signed_bytes(digest: bytes) -> bytes:
    """What a hospital signs: a label and the upload's digest (which covers session, round,
    sender, key id, parameters and every ciphertext)."""
    return _LABEL + digest


def encrypt_upload(
    encryptor: Any, values: np.ndarray, *, round_index: int, client_id: int,
    identity: IdentityKey | None = None, session: bytes = b"",
) -> bytes:
    """Hospital side: encrypt ``values`` (update and weight) into one upload message.

    ``encryptor`` is the hospital's :class:`~securefed.he.keys.CKKSPublicContext` (a
    :class:`~securefed.he.keys.CKKSKeyHolder` works too): encryption needs only the public
    key.  With ``identity`` the message is signed.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    params = encryptor.parameters
    fields: dict[str, Any] = {
        "session": bytes(session),
        "round": int(round_index),
        "client": int(client_id),
        "key_id": encryptor.key_id,
        "params": json.dumps(params.to_dict(), sort_keys=True),
        "n_values": int(arr.size),
    }
    for i, (a, b) in enumerate(_chunks(arr.size, params.slots)):
        fields[f"{_CT_PREFIX}{i}"] = encryptor.encrypt_vector(arr[a:b]).serialize()
    digest = fields["digest"] = _digest(fields)
    if identity is not None:
        if identity.client_id != client_id:
            raise KeyMaterialError(f"identity of client {identity.client_id} used to sign an "
                                   f"upload of client {client_id}")
        fields["sig"] = identity.sign(upload_signed_bytes(digest))
    return pack(fields)


def parse_upload(
    server: CKKSPublicContext,
    blob: bytes,
    *,
    round_index: int,
    client_id: int,
    n_values: int,
    roster: Roster | None = None,
    session: bytes | None = None,
) -> list[ts.CKKSVector]:
    """Check one upload message and deserialise its ciphertexts (server or key authority).

    Raises :class:`InvalidDataError` for a truncated or malformed message,
    :class:`MessageRejected` for a wrong session, round, sender, length, a digest mismatch or
    (with ``roster``) a missing or bad signature, and :class:`KeyMaterialError` for a
    ciphertext under another key or another parameter set.
    """
    fields = unpack(blob)
    for name in ("round", "client", "key_id", "params", "n_values", "digest"):
        if name not in fields:
            raise InvalidDataError(f"CKKS upload from client {client_id} lacks field {name!r}")
    signature = fields.pop("sig", None)
    digest = fields.pop("digest")
    if _digest(fields) != digest:
        raise MessageRejected(
            f"CKKS upload from client {client_id}: digest mismatch (message corrupted in transit)"
        )
    if fields["round"] != round_index or fields["client"] != client_id:
        raise MessageRejected(
            f"CKKS upload for round {fields['round']} from client {fields['client']}, expected "
            f"round {round_index} from client {client_id}"
        )
    if session is not None and bytes(fields.get("session", b"")) != session:
        raise MessageRejected(f"CKKS upload from client {client_id} belongs to another session")
    if roster is not None:
        if signature is None:
            raise MessageRejected(f"CKKS upload from client {client_id} is not signed")
        roster.verify(client_id, upload_signed_bytes(digest), bytes(signature),
                      what=f"CKKS upload from client {client_id}")
    their_params = json.loads(fields["params"])
    if their_params != server.parameters.to_dict():
        raise KeyMaterialError(
            f"client {client_id} encrypted with parameters {their_params}, the server's context "
            f"has {server.parameters.to_dict()}"
        )
    if bytes(fields["key_id"]) != server.key_id:
        raise KeyMaterialError(
            f"client {client_id} encrypted under key {bytes(fields['key_id']).hex()[:16]}, the "
            f"server's public context is for key {server.key_id.hex()[:16]}"
        )
    if fields["n_values"] != n_values:
        raise MessageRejected(
            f"client {client_id} sent {fields['n_values']} encrypted values, expected {n_values}"
        )
    spans = _chunks(n_values, server.parameters.slots)
    names = sorted((k for k in fields if k.startswith(_CT_PREFIX)), key=lambda k: int(k[2:]))
    if len(names) != len(spans):
        raise MessageRejected(
            f"client {client_id} sent {len(names)} ciphertexts, expected {len(spans)} for "
            f"{n_values} values in {server.parameters.slots} slots"
        )
    out: list[ts.CKKSVector] = []
    for name, (a, b) in zip(names, spans, strict=True):
        try:
            vec = ts.ckks_vector_from(server.context, fields[name])
        except (ValueError, RuntimeError) as exc:
            raise InvalidDataError(
                f"client {client_id}: ciphertext {name} cannot be read under the server's "
                f"context ({exc})"
            ) from exc
        if vec.size() != b - a:
            raise MessageRejected(
                f"client {client_id}: ciphertext {name} holds {vec.size()} values, expected {b - a}"
            )
        out.append(vec)
    return out


def ciphertext_fields(blob: bytes) -> list[bytes]:
    """The raw ciphertexts of an upload (what the server observes of it)."""
    return [bytes(v) for k, v in unpack(blob).items() if k.startswith(_CT_PREFIX)]


def add_uploads(parts: Sequence[Sequence[ts.CKKSVector]]) -> list[ts.CKKSVector]:
    """Slot-wise sum of several clients' ciphertext lists (public context only)."""
    if not parts:
        raise MessageRejected("no CKKS upload arrived in this round: nothing to aggregate")
    total = [v.copy() for v in parts[0]]
    for vecs in parts[1:]:
        for acc, v in zip(total, vecs, strict=True):
            acc.add_(v)
    return total


def reveal_grid(parameters: CKKSParameters, n_summed: int) -> float:
    """The power-of-two grid a decrypted sum of ``n_summed`` fresh ciphertexts is rounded to.

    At least ``n_summed`` times the fresh-encryption error bound, so the discarded bits are
    (with high probability) noise.

    >>> reveal_grid(CKKSParameters.aggregation(), 3) == 2.0 ** -10
    True
    """
    bound = max(1, n_summed) * parameters.fresh_error_bound()
    return float(2.0 ** math.ceil(math.log2(bound)))


def _uniform(n: int) -> np.ndarray:
    """``n`` uniform values in ``[0, 1)`` from ``os.urandom`` (53 bits each)."""
    words = np.frombuffer(os.urandom(8 * n), dtype="<u8") >> np.uint64(11)
    return words.astype(np.float64) / float(1 << 53)


def release(values: np.ndarray, *, grid: float, reveal: str, flood_bits: int = 8) -> np.ndarray:
    """Round or flood a decryption before anyone sees it (see the module docstring)."""
    v = np.asarray(values, dtype=np.float64)
    if reveal == "rounded":
        return np.round(v / grid) * grid
    if reveal == "flooded":
        g = grid * 2.0**flood_bits
        return np.floor(v / g + _uniform(v.size).reshape(v.shape)) * g
    if reveal == "exact":
        return v.copy()
    raise ConfigurationError(f"reveal must be one of {REVEALS}, got {reveal!r}")


def decrypt_sum(
    holder: Any,
    blobs: Sequence[bytes],
    *,
    n_values: int,
    n_summed: int,
    reveal: str = "rounded",
    flood_bits: int = 8,
) -> np.ndarray:
    """Decrypt a serialised aggregate and release it (:func:`release`).

    The raw primitive, with no check of where the ciphertexts came from: the key authority
    (:class:`~securefed.he.authority.CKKSKeyAuthority`) calls it only on a sum it computed
    itself from signed uploads.
    """
    spans = _chunks(n_values, holder.parameters.slots)
    if len(blobs) != len(spans):
        raise MessageRejected(f"aggregate has {len(blobs)} ciphertexts, expected {len(spans)}")
    out = np.empty(n_values, dtype=np.float64)
    for blob, (a, b) in zip(blobs, spans, strict=True):
        try:
            vec = ts.ckks_vector_from(holder.context, blob)
        except (ValueError, RuntimeError) as exc:
            raise InvalidDataError(f"aggregate ciphertext cannot be read ({exc})") from exc
        vals = holder.decrypt_vector(vec)
        if vals.shape != (b - a,):
            raise MessageRejected(f"aggregate chunk holds {vals.shape[0]} values, expected {b - a}")
        out[a:b] = vals
    return release(out, grid=reveal_grid(holder.parameters, n_summed), reveal=reveal,
                   flood_bits=flood_bits)
