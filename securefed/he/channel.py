"""``CKKSChannel``: aggregation under additively homomorphic CKKS encryption.

One round, as the four parties see it:

1. **Hospitals** hold the public context and their identity key.  Each appends its weight
   to its pre-weighted update, encrypts the ``dim + 1`` values in chunks of ``N/2`` slots
   and sends one signed message (:func:`~securefed.he.uploads.encrypt_upload`).
2. The **server**, holding only a :class:`~securefed.he.keys.CKKSPublicContext`, checks each
   message (session, round, sender, signature, key id, parameters, digest) and forwards the
   round's uploads to the key authority.  It never sees a plaintext update.  A hospital that
   dropped out simply sent nothing.
3. The **key authority** (:class:`~securefed.he.authority.CKKSKeyAuthority`, neither a
   hospital nor the server) checks the uploads again, refuses fewer than
   ``min_contributors`` (default 3) or a second decryption of the same round, adds them,
   decrypts the sum and releases it rounded to a grid at least as coarse as the CKKS error
   (or noise-flooded): see :mod:`securefed.he.uploads` on IND-CPA^D.
4. The server divides by the weight sum as usual.

Threat model: the server may deviate (drop, replay, substitute or forge uploads, send the
authority anything); hospitals are trusted with their own data only; the key authority is
trusted not to collude with the server (together they decrypt every upload).  See
``docs/ckks.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

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
from securefed.errors import ConfigurationError, InvalidDataError, KeyMaterialError, ProtocolAbort
from securefed.he.authority import DEFAULT_MIN_CONTRIBUTORS, CKKSKeyAuthority
from securefed.he.keys import CKKSKeyHolder, CKKSParameters, CKKSPublicContext
from securefed.he.uploads import (
    REVEALS,
    add_uploads,
    ciphertext_fields,
    decrypt_sum,
    encrypt_upload,
    parse_upload,
    reveal_grid,
)
from securefed.identity import IdentityKey, Roster

__all__ = [
    "CKKSChannel",
    "encrypt_upload",
    "parse_upload",
    "add_uploads",
    "decrypt_sum",
    "reveal_grid",
]


class CKKSChannel(AggregationChannel):
    """Hospitals encrypt and sign, the server forwards, a key authority decrypts the sum.

    Parameters
    ----------
    key_authority:
        The :class:`~securefed.he.authority.CKKSKeyAuthority`; built here when omitted
        (from ``key_holder`` if given, else from fresh keys with ``parameters``).
    key_holder:
        The authority's secret context, when the authority is built here.
    server_context:
        The public-only context of the hospitals and the server; derived from the authority
        (through its serialised form, as it would travel) when omitted.  A context holding a
        secret key is refused.
    parameters:
        Used only when keys are generated here (default :meth:`CKKSParameters.aggregation`).
    reveal:
        ``"rounded"`` (default), ``"flooded"`` or ``"exact"`` (unsafe; for measurements).
    min_contributors:
        No aggregate of fewer hospitals is decrypted (default 3); below it the round aborts
        with :class:`~securefed.errors.ProtocolAbort`.
    identities, roster:
        The hospitals' identity keys and the pinned roster.  Omitted, the channel plays the
        out-of-band distribution: it generates one identity per client id the first time it
        sees it (from the OS CSPRNG) and keeps it.

    The channel reports ``timings`` ``encrypt`` (all hospitals), ``add`` (server checks and
    addition), ``decrypt`` (key authority, including its own checks and addition), the real
    size of every upload, and in ``received`` only ciphertext bytes.
    """

    name = "ckks"
    stages = ("upload",)

    def __init__(
        self,
        *,
        key_authority: CKKSKeyAuthority | None = None,
        key_holder: CKKSKeyHolder | None = None,
        server_context: CKKSPublicContext | None = None,
        parameters: CKKSParameters | None = None,
        reveal: str = "rounded",
        min_contributors: int = DEFAULT_MIN_CONTRIBUTORS,
        identities: Mapping[int, IdentityKey] | None = None,
        roster: Roster | None = None,
    ) -> None:
        if reveal not in REVEALS:
            raise ConfigurationError(f"reveal must be one of {REVEALS}, got {reveal!r}")
        if key_holder is not None and parameters is not None and key_holder.parameters != parameters:
            raise ConfigurationError(
                f"parameters {parameters} disagree with the key holder's {key_holder.parameters}"
            )
        if (identities is None) != (roster is None):
            raise KeyMaterialError("give both identities and roster, or neither (the channel then "
                                   "generates its own)")
        self._identities: dict[int, IdentityKey] = dict(identities or {})
        self._own_pki = roster is None
        if key_authority is None:  # without a roster yet: pinned as hospitals appear
            key_authority = CKKSKeyAuthority(
                key_holder or CKKSKeyHolder.generate(parameters), roster=roster,
                min_contributors=min_contributors, reveal=reveal,
                require_signatures=roster is not None)
        self.key_authority = key_authority
        if server_context is None:
            server_context = CKKSPublicContext.from_bytes(key_authority.public_context().to_bytes())
        if not isinstance(server_context, CKKSPublicContext):
            raise KeyMaterialError(
                f"server_context must be a CKKSPublicContext, got {type(server_context).__name__}"
            )
        if server_context.key_id != self.key_holder.key_id:
            raise KeyMaterialError(
                f"server context is for key {server_context.key_id.hex()[:16]}, the key authority "
                f"holds key {self.key_holder.key_id.hex()[:16]}"
            )
        if server_context.parameters != self.key_holder.parameters:
            raise KeyMaterialError(
                f"server parameters {server_context.parameters} differ from the key authority's "
                f"{self.key_holder.parameters}"
            )
        self.server_context = server_context
        self.reveal = key_authority.reveal
        self.min_contributors = key_authority.min_contributors
        self._session = os.urandom(16)
        self._last_round = -1

    @property
    def key_holder(self) -> CKKSKeyHolder:
        """The key authority's secret context (never the hospitals' or the server's)."""
        return self.key_authority.key_holder

    @property
    def parameters(self) -> CKKSParameters:
        return self.key_holder.parameters

    def setup_bytes(self) -> int:
        """Bytes of the public context sent once to the server (and to each hospital)."""
        return len(self.server_context.to_bytes())

    def _pki_for(self, ids: Sequence[int]) -> Roster:
        missing = [i for i in ids if i not in self._identities]
        if missing:
            if not self._own_pki:
                raise KeyMaterialError(f"no identity key for clients {missing[:10]} in the given "
                                       "identities")
            for i in missing:
                self._identities[i] = IdentityKey.generate(f"client-{i}", i)
            self.key_authority.roster = Roster(k.entry() for k in self._identities.values())
            self.key_authority.require_signatures = True
        roster = self.key_authority.roster
        assert roster is not None
        return roster

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
        if round_index <= self._last_round:  # a new run on this channel: a new session
            self._session = os.urandom(16)
        self._last_round = round_index
        n_values = dim + 1
        alive = [u for u in uploads if dropouts.alive_at(u.client_id, "upload", self.stages)]
        if len(alive) < self.min_contributors:
            raise ProtocolAbort(
                f"CKKS round {round_index} has {len(alive)} contributor(s), below the minimum of "
                f"{self.min_contributors}: the decrypted sum would reveal too much about each; "
                "round aborted")
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
        roster = self._pki_for([u.client_id for u in alive])
        bytes_up: dict[int, int] = {u.client_id: 0 for u in uploads}
        messages: dict[int, bytes] = {}
        t0 = time.perf_counter()
        for up in alive:  # each hospital, with the public context and its identity key
            vals = np.concatenate([np.asarray(up.vector, dtype=np.float64), [float(up.weight)]])
            messages[up.client_id] = encrypt_upload(
                self.server_context, vals, round_index=round_index, client_id=up.client_id,
                identity=self._identities[up.client_id], session=self._session)
            bytes_up[up.client_id] = len(messages[up.client_id])
        t1 = time.perf_counter()
        parts: list[list[ts.CKKSVector]] = []
        received: list[ReceivedMessage] = []
        for cid, blob in messages.items():  # the server checks what it forwards
            parts.append(parse_upload(self.server_context, blob, round_index=round_index,
                                      client_id=cid, n_values=n_values, roster=roster,
                                      session=self._session))
            received.append(ReceivedMessage(stage="upload", sender=cid, nbytes=len(blob),
                                            content={"ciphertexts": ciphertext_fields(blob)}))
        add_uploads(parts)  # what a server can compute; the authority adds for itself
        t2 = time.perf_counter()
        plain = self.key_authority.decrypt_aggregate(messages, session=self._session,
                                                     round_index=round_index, n_values=n_values)
        t3 = time.perf_counter()
        weighted_sum = plain[:dim].copy()
        weight_sum = float(plain[dim])
        return ChannelResult(
            weighted_sum=weighted_sum,
            weight_sum=weight_sum,
            contributors=tuple(messages),
            bytes_up=bytes_up,
            bytes_down={},
            received=tuple(received),
            timings={"encrypt": t1 - t0, "add": t2 - t1, "decrypt": t3 - t2,
                     "key_authority_bytes_in": float(sum(len(b) for b in messages.values()))},
            revealed={"weighted_sum": weighted_sum.copy(), "weight_sum": weight_sum,
                      "grid": reveal_grid(self.parameters, len(messages))
                      if self.reveal != "exact" else 0.0,
                      "reveal": self.reveal, "min_contributors": self.min_contributors},
        )
