"""``CKKSChannel``: aggregation under additively homomorphic CKKS encryption.

One round, as three parties see it:

1. **Clients** (key holders) append their weight to their pre-weighted update, split the
   ``dim + 1`` values into chunks of ``N/2`` slots, encrypt each chunk under the shared public
   key and send one message (:func:`encrypt_upload`): the ciphertexts, the round, the sender,
   the key id and a SHA-256 digest of the whole message (to catch accidental corruption; it
   is not an authenticator).
2. The **server**, holding only a :class:`~securefed.he.keys.CKKSPublicContext`, checks each
   message (round, sender, key id, parameters, digest), deserialises the ciphertexts and adds
   them slot-wise (:func:`add_uploads`).  It never sees a plaintext update.  A client that
   dropped out simply sent nothing: the sum is over the messages that arrived.
3. One **key holder** (the first contributor) receives the summed ciphertexts, decrypts them
   (:func:`decrypt_sum`) and returns the aggregate rounded to a grid no finer than the CKKS
   error bound; the server then divides by the weight sum as usual.

IND-CPA^D (Li and Micciancio, "On the Security of Homomorphic Encryption on Approximate
Numbers", EUROCRYPT 2021): a CKKS decryption is ``message + error``, and the error is a
linear function of the secret key; a party that knows a ciphertext *and* its exact
decryption can set up linear equations in the key and, after enough of them, recover it.
Here the server knows every ciphertext it summed and learns the decrypted aggregate, so an
exact decryption would hand it those equations.  What this module does: the key holder
rounds each decrypted value to a power-of-two grid at least as coarse as the error bound
(``reveal="rounded"``, the default), which discards the low-order bits that carry the
error.  This is a mitigation, not a proof: rounding still leaks near grid boundaries, and
the provable remedy is noise flooding with a statistical security parameter (Li, Micciancio,
Schultz and Sorrell, CRYPTO 2022), at a cost in precision that this channel does not pay.
``reveal="exact"`` exists for measurements and is documented as unsafe.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tenseal as ts

from securefed.channel import (
    AggregationChannel,
    ChannelResult,
    DropoutPlan,
    ReceivedMessage,
    Upload,
    check_uploads,
)
from securefed.codec import Codec
from securefed.errors import ConfigurationError, InvalidDataError, KeyMaterialError, MessageRejected
from securefed.he.keys import CKKSKeyHolder, CKKSParameters, CKKSPublicContext
from securefed.wire import pack, unpack

__all__ = [
    "CKKSChannel",
    "encrypt_upload",
    "parse_upload",
    "add_uploads",
    "decrypt_sum",
    "reveal_grid",
]

_CT_PREFIX = "ct"


def _chunks(n_values: int, slots: int) -> list[tuple[int, int]]:
    return [(s, min(s + slots, n_values)) for s in range(0, n_values, slots)]


def _digest(fields: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(pack(fields)).digest()


def encrypt_upload(
    holder: CKKSKeyHolder, values: np.ndarray, *, round_index: int, client_id: int
) -> bytes:
    """Client side: encrypt ``values`` (update and weight) into one upload message.

    Each chunk of ``N/2`` values becomes one ciphertext; the message carries the round,
    the sender, the key id, the parameters and a SHA-256 digest of everything else.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    params = holder.parameters
    fields: dict[str, Any] = {
        "round": int(round_index),
        "client": int(client_id),
        "key_id": holder.key_id,
        "params": json.dumps(params.to_dict(), sort_keys=True),
        "n_values": int(arr.size),
    }
    for i, (a, b) in enumerate(_chunks(arr.size, params.slots)):
        fields[f"{_CT_PREFIX}{i}"] = holder.encrypt_vector(arr[a:b]).serialize()
    fields["digest"] = _digest(fields)
    return pack(fields)


def parse_upload(
    server: CKKSPublicContext,
    blob: bytes,
    *,
    round_index: int,
    client_id: int,
    n_values: int,
) -> list[ts.CKKSVector]:
    """Server side: check one upload message and deserialise its ciphertexts.

    Raises :class:`InvalidDataError` for a truncated or malformed message,
    :class:`MessageRejected` for a wrong round, sender, length or a digest mismatch
    (corruption), and :class:`KeyMaterialError` for a ciphertext under another key or
    another parameter set.
    """
    fields = unpack(blob)
    for name in ("round", "client", "key_id", "params", "n_values", "digest"):
        if name not in fields:
            raise InvalidDataError(f"CKKS upload from client {client_id} lacks field {name!r}")
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


def add_uploads(parts: Sequence[Sequence[ts.CKKSVector]]) -> list[ts.CKKSVector]:
    """Server side: slot-wise sum of several clients' ciphertext lists (public context only)."""
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


def decrypt_sum(
    holder: CKKSKeyHolder,
    blobs: Sequence[bytes],
    *,
    n_values: int,
    n_summed: int,
    reveal: str = "rounded",
) -> np.ndarray:
    """Key-holder side: decrypt the serialised aggregate and round it (see the module notes)."""
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
    if reveal == "rounded":
        grid = reveal_grid(holder.parameters, n_summed)
        out = np.round(out / grid) * grid
    elif reveal != "exact":
        raise ConfigurationError(f"reveal must be 'rounded' or 'exact', got {reveal!r}")
    return out


class CKKSChannel(AggregationChannel):
    """Clients encrypt, the server adds ciphertexts, a key holder decrypts the sum.

    Parameters
    ----------
    key_holder:
        The hospitals' shared secret context; generated with ``parameters`` when omitted.
    server_context:
        The server's public-only context; derived from ``key_holder`` (through its
        serialised form, as it would travel) when omitted.  A context holding a secret key
        is refused.
    parameters:
        Used only when ``key_holder`` is generated here (default
        :meth:`CKKSParameters.aggregation`).
    reveal:
        ``"rounded"`` (default, the IND-CPA^D mitigation) or ``"exact"`` (unsafe; for
        measurements).

    The channel reports ``timings`` ``encrypt`` (all clients), ``add`` (server, including
    parsing) and ``decrypt`` (key holder), the real size of every upload, and in ``received``
    only ciphertext bytes.
    """

    name = "ckks"
    stages = ("upload",)

    def __init__(
        self,
        *,
        key_holder: CKKSKeyHolder | None = None,
        server_context: CKKSPublicContext | None = None,
        parameters: CKKSParameters | None = None,
        reveal: str = "rounded",
    ) -> None:
        if reveal not in ("rounded", "exact"):
            raise ConfigurationError(f"reveal must be 'rounded' or 'exact', got {reveal!r}")
        if key_holder is not None and parameters is not None and key_holder.parameters != parameters:
            raise ConfigurationError(
                f"parameters {parameters} disagree with the key holder's {key_holder.parameters}"
            )
        self.key_holder = key_holder or CKKSKeyHolder.generate(parameters)
        if server_context is None:
            server_context = CKKSPublicContext.from_bytes(self.key_holder.public_context().to_bytes())
        if not isinstance(server_context, CKKSPublicContext):
            raise KeyMaterialError(
                f"server_context must be a CKKSPublicContext, got {type(server_context).__name__}"
            )
        if server_context.key_id != self.key_holder.key_id:
            raise KeyMaterialError(
                f"server context is for key {server_context.key_id.hex()[:16]}, the key holders "
                f"hold key {self.key_holder.key_id.hex()[:16]}"
            )
        if server_context.parameters != self.key_holder.parameters:
            raise KeyMaterialError(
                f"server parameters {server_context.parameters} differ from the key holders' "
                f"{self.key_holder.parameters}"
            )
        self.server_context = server_context
        self.reveal = reveal

    @property
    def parameters(self) -> CKKSParameters:
        return self.key_holder.parameters

    def setup_bytes(self) -> int:
        """Bytes of the public context sent once to the server."""
        return len(self.server_context.to_bytes())

    def aggregate(
        self,
        uploads: Sequence[Upload],
        *,
        round_index: int,
        dim: int,
        codec: Codec,
        dropouts: DropoutPlan,
        rng: np.random.Generator,
    ) -> ChannelResult:
        check_uploads(uploads, dim=dim)
        n_values = dim + 1
        alive = [u for u in uploads if dropouts.alive_at(u.client_id, "upload", self.stages)]
        limit = self.parameters.max_abs_value / max(1, len(alive))
        for up in alive:
            top = max(float(np.max(np.abs(up.vector))) if dim else 0.0, abs(float(up.weight)))
            if top >= limit:
                raise InvalidDataError(
                    f"client {up.client_id} uploads a value of magnitude {top:.4g}; with "
                    f"{len(alive)} clients the sum must stay below "
                    f"{self.parameters.max_abs_value:.4g}, so each value below {limit:.4g} "
                    "(choose CKKS parameters with a larger first prime or a smaller scale)"
                )
        bytes_up: dict[int, int] = {u.client_id: 0 for u in uploads}
        messages: dict[int, bytes] = {}
        t0 = time.perf_counter()
        for up in alive:
            vals = np.concatenate([np.asarray(up.vector, dtype=np.float64), [float(up.weight)]])
            messages[up.client_id] = encrypt_upload(self.key_holder, vals,
                                                    round_index=round_index, client_id=up.client_id)
            bytes_up[up.client_id] = len(messages[up.client_id])
        t1 = time.perf_counter()
        parts: list[list[ts.CKKSVector]] = []
        received: list[ReceivedMessage] = []
        for cid, blob in messages.items():
            vecs = parse_upload(self.server_context, blob, round_index=round_index, client_id=cid,
                                n_values=n_values)
            parts.append(vecs)
            cts = [bytes(v) for k, v in unpack(blob).items() if k.startswith(_CT_PREFIX)]
            received.append(ReceivedMessage(stage="upload", sender=cid, nbytes=len(blob),
                                            content={"ciphertexts": cts}))
        total = add_uploads(parts)
        agg_blobs = [v.serialize() for v in total]
        t2 = time.perf_counter()
        decryptor = next(iter(messages))
        plain = decrypt_sum(self.key_holder, agg_blobs, n_values=n_values,
                            n_summed=len(messages), reveal=self.reveal)
        reply = pack({"round": round_index, "aggregate": plain})
        t3 = time.perf_counter()
        bytes_up[decryptor] += len(reply)
        weighted_sum = plain[:dim].copy()
        weight_sum = float(plain[dim])
        return ChannelResult(
            weighted_sum=weighted_sum,
            weight_sum=weight_sum,
            contributors=tuple(messages),
            bytes_up=bytes_up,
            bytes_down={decryptor: int(sum(len(b) for b in agg_blobs))},
            received=tuple(received),
            timings={"encrypt": t1 - t0, "add": t2 - t1, "decrypt": t3 - t2},
            revealed={"weighted_sum": weighted_sum.copy(), "weight_sum": weight_sum,
                      "grid": reveal_grid(self.parameters, len(messages))
                      if self.reveal == "rounded" else 0.0},
        )
