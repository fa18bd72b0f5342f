"""Client and server state machines of secure aggregation with double masking.

The protocol is Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", CCS 2017 (Fig. 4), over a communication graph that is either complete or
the sparse SecAgg+ graph of Bell et al., CCS 2020 (see :mod:`securefed.secagg.graph`).  It
runs in one of two modes:

``"malicious"`` (the default)
    Against a server that deviates from the protocol (sends different clients different
    survivor sets, directories, thresholds or models, substitutes keys, forges messages).
    Every hospital holds a long-term identity (:mod:`securefed.identity`) and pins the
    roster of everyone's public keys.  The active-security round 3 (consistency check) runs,
    and every client validates what the server sends it (below).
``"honest-but-curious"``
    The faster variant against a server that follows the protocol but looks at everything
    it receives: no identities, no signatures, no consistency round.  It is an explicit
    option; sub-majority thresholds are accepted only in this mode.

Stages, in order (the names the engine's :class:`~securefed.channel.DropoutPlan` uses):

``advertise_keys``
    Each client ``u`` draws an X25519 key pair ``(c_u^SK, c_u^PK)`` for the share channel, a
    16-byte seed ``r_u`` from which its mask key pair ``(s_u^SK, s_u^PK)`` is derived, and
    its 16-byte self-mask seed ``b_u``; it sends ``c_u^PK``, ``s_u^PK`` and a hash
    commitment to ``b_u``, signed with its Ed25519 identity key in malicious mode.  The
    server checks the signature against the roster, waits for ``U1`` and sends each client
    the advertisements of its neighbours in ``U1`` and the threshold ``t``.
``share_keys``
    The client checks the directory (below), Shamir-shares ``r_u`` and ``b_u``
    ``t``-out-of-(neighbours + itself), and sends each neighbour its share under AES-GCM.
    The key is ``HKDF(X25519(c_u^SK, c_v^PK) || K_uv)`` where ``K_uv`` (malicious mode) is
    the static secret of the two hospitals' pinned X25519 identity keys, and the associated
    data holds a digest of both advertisements as the sender sees them.  A key the server
    substituted in either direction therefore gives a ciphertext that neither the server
    can open nor the peer accepts.  The server forwards the ciphertexts of ``U2``.
``masked_input``
    The client opens the shares addressed to it (each authenticates both parties' keys)
    and sends ``y_u = x_u + PRG(b_u) + sum_{v in N(u) & U2} Delta_uv PRG(s_uv)`` modulo
    ``2^b``, ``Delta_uv = +1`` if ``u < v`` else ``-1``.  The server sums over ``U3``.
``consistency`` (malicious mode only)
    The server sends ``U3``; each survivor checks it and signs (session, round, ``U3``,
    digest of the model it trained on).  The server forwards ``t`` signatures.
``unmask``
    The client checks ``U3`` (and in malicious mode ``t`` valid signatures over exactly the
    ``U3`` it signed, by distinct members of ``U3``), then reveals its shares of ``b_v``
    for the survivors it holds shares of and of ``r_v`` for the partners that dropped,
    **never both for one ``v``** (both lists are derived from ``U3``; one answer per round).
    The server rebuilds the seeds, checks each ``b_v`` against its commitment and each
    ``s_v^PK`` against the advertised key (a wrong share aborts the round instead of
    producing a wrong sum) and removes the masks: the result is ``sum_{u in U3} x_u mod 2^b``.

What a client checks of the server's messages: session, round and recipient; a directory
that lists the client with its own keys, no repeated key, at least ``min_clients``
entries, only roster members (malicious) and ``1 <= t <= |directory|`` with ``2 t >
|directory|`` in malicious mode; a survivor set that is sorted and duplicate-free, includes
the client, has at least ``min_clients`` members and at least ``t`` of the client's share
holders, lists as alive only neighbours whose shares reached the client, and in malicious
mode equals the set it signed with ``t`` valid signatures.

Whenever fewer than ``max(t, min_clients)`` clients remain at a stage (or, with a sparse
graph, a client has fewer than ``t`` live share holders), the round aborts with
:class:`ProtocolAbort` naming the counts.  A message of the wrong stage, round, session or
sender, a duplicate, a misaddressed or tampered ciphertext, a bad signature and a vector of
the wrong length are refused with :class:`MessageRejected`.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefed.channel import ReceivedMessage
from securefed.errors import (
    ConfigurationError,
    InvalidDataError,
    KeyMaterialError,
    MessageRejected,
    ProtocolAbort,
)
from securefed.identity import IdentityKey, Roster, generate_identities
from securefed.secagg import crypto, shamir
from securefed.secagg.encoding import uint_dtype, wire_dtype
from securefed.secagg.graph import complete_graph
from securefed.secagg.messages import (
    NO_MODEL,
    SEED_BYTES,
    SEED_SHARE_ELEMENTS,
    SHARE_CIPHERTEXT_BYTES,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    commitment,
    consistency_bytes,
    pack_share_plaintexts,
    unpack_share_plaintexts,
)
from securefed.secagg.modes import (
    DEFAULT_MIN_CLIENTS,
    HONEST_BUT_CURIOUS,
    MALICIOUS,
    MODES,
    is_majority,
)
from securefed.secagg.modes import check_min_clients as _check_min_clients
from securefed.secagg.modes import check_mode as _check_mode
from securefed.wire import pack, unpack

__all__ = [
    "MALICIOUS",
    "HONEST_BUT_CURIOUS",
    "MODES",
    "DEFAULT_MIN_CLIENTS",
    "STAGES",
    "STAGES_HONEST_BUT_CURIOUS",
    "stages_for",
    "model_digest",
    "SecAggClient",
    "SecAggServer",
    "RoundOutcome",
    "run_round",
]

STAGES: tuple[str, ...] = ("advertise_keys", "share_keys", "masked_input", "consistency", "unmask")
STAGES_HONEST_BUT_CURIOUS: tuple[str, ...] = ("advertise_keys", "share_keys", "masked_input", "unmask")
MAX_CLIENT_ID = shamir.PRIME - 2  # evaluation point client_id + 1 must stay below p

_PURPOSE_MASK = b"pairwise-mask"
_PURPOSE_SELF = b"self-mask"
_PURPOSE_ENC = b"share-encryption"
_PURPOSE_MASK_KEY = b"mask-private-key"


def stages_for(mode: str) -> tuple[str, ...]:
    """The stage names of a round in ``mode``."""
    return STAGES if _check_mode(mode) == MALICIOUS else STAGES_HONEST_BUT_CURIOUS


def model_digest(params: np.ndarray) -> bytes:
    """SHA-256 of a model's parameters (float64, little-endian): what a client signs in the
    consistency round, so that a server that sent different hospitals different models
    (Pasquini et al., "Eluding Secure Aggregation in Federated Learning via Model
    Inconsistency", CCS 2022) gets no valid set of signatures."""
    return hashlib.sha256(np.ascontiguousarray(params, dtype="<f8").tobytes()).digest()


def _check_ids(ids: Sequence[int]) -> list[int]:
    out = []
    for i in ids:
        if not isinstance(i, (int, np.integer)) or not 0 <= int(i) <= MAX_CLIENT_ID:
            raise InvalidDataError(f"client id must be an integer in [0, {MAX_CLIENT_ID}], got {i!r}")
        out.append(int(i))
    if len(set(out)) != len(out):
        dup = sorted({i for i in out if out.count(i) > 1})
        raise InvalidDataError(f"duplicate client ids in one round: {dup}")
    return out


def _word_bits(bits: int) -> int:
    return 8 * uint_dtype(bits).itemsize


def _mask_private(seed: bytes, *, session: bytes, round_index: int, client_id: int) -> Any:
    """``s_u^SK`` derived from the 16-byte seed ``r_u`` (so only 16 bytes are shared)."""
    raw = crypto.derive_key(seed, purpose=_PURPOSE_MASK_KEY, session=session,
                            round_index=round_index, party_a=client_id, party_b=client_id, length=32)
    return crypto.private_from_bytes(raw)


def _adverts_digest(a: int, adv_a: bytes, b: int, adv_b: bytes) -> bytes:
    """Digest of two parties' advertised ``c_pk | s_pk | commitment``, lower id first."""
    first, second = (adv_a, adv_b) if a < b else (adv_b, adv_a)
    return hashlib.sha256(first + second).digest()


def _from_server(kind: Any, blob: bytes, *, client_id: int, what: str) -> Any:
    """Parse a server message at a client; a malformed one is the server's fault."""
    try:
        return kind.from_bytes(blob)
    except InvalidDataError as exc:
        raise MessageRejected(f"client {client_id}: malformed {what} from the server: {exc}") from exc


class SecAggClient:
    """One client's side of the protocol; each public method is one stage.

    Every method takes the server's message as bytes and returns the client's reply as
    bytes.  Calling a stage out of order raises :class:`MessageRejected` naming both
    stages.  Secrets (X25519 keys, seeds) come from ``os.urandom`` and never leave the
    object except as encrypted or revealed Shamir shares.

    ``identity`` and ``roster`` (required in malicious mode) are this hospital's long-term
    keys and the pinned roster; ``min_clients`` is this hospital's own minimum number of
    contributors (the server cannot lower it).
    """

    def __init__(self, client_id: int, *, session: bytes, round_index: int, bits: int,
                 length: int, mode: str = MALICIOUS, min_clients: int = DEFAULT_MIN_CLIENTS,
                 identity: IdentityKey | None = None, roster: Roster | None = None) -> None:
        self.client_id = _check_ids([client_id])[0]
        self.session = session
        self.round_index = round_index
        self.bits = bits
        self.length = length
        self.mode = _check_mode(mode)
        self.min_clients = _check_min_clients(min_clients)
        self.identity = identity
        self.roster = roster
        if self.mode == MALICIOUS:
            if identity is None or roster is None:
                raise KeyMaterialError(
                    f"client {client_id}: malicious mode needs this hospital's identity key and the "
                    "pinned roster (securefed keys identity); pass mode='honest-but-curious' "
                    "explicitly for the weaker mode without them")
            if identity.client_id != self.client_id:
                raise KeyMaterialError(
                    f"identity key of client {identity.client_id} given to client {self.client_id}")
            identity.check_in(roster)
        self.stage = "advertise_keys"
        self._threshold = 0
        self._model_digest = NO_MODEL
        self._dir_ids: list[int] = []
        self._peers: dict[int, tuple[bytes, bytes, bytes]] = {}  # v -> (c_pk, s_pk, commit)
        self._held: dict[int, np.ndarray] = {}  # shares of (r_v, b_v) this client holds
        self._enc_keys: dict[int, bytes] = {}
        self._mask_keys: dict[int, bytes] = {}
        self._digests: dict[int, bytes] = {}  # v -> digest of both advertisements (cache)
        self._partners: set[int] = set()
        self._signed: np.ndarray | None = None

    # ---------------------------------------------------------------- helpers
    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise MessageRejected(
                f"client {self.client_id} is at stage {self.stage!r}, got a message for stage {stage!r}"
            )

    def _check_header(self, msg: Any) -> None:
        if msg.session != self.session:
            raise MessageRejected(f"client {self.client_id}: message from another session")
        if msg.round_index != self.round_index:
            raise MessageRejected(
                f"client {self.client_id}: message for round {msg.round_index}, expected round {self.round_index}"
            )
        if msg.recipient != self.client_id:
            raise MessageRejected(
                f"client {self.client_id}: message addressed to client {msg.recipient}"
            )

    def _own_advert(self) -> bytes:
        return self._c_pk + self._s_pk + self._commit

    def _ad(self, *, sender: int, recipient: int) -> bytes:
        peer = recipient if sender == self.client_id else sender
        digest = self._digests.get(peer)
        if digest is None:
            c, s, com = self._peers[peer]
            digest = self._digests[peer] = _adverts_digest(self.client_id, self._own_advert(),
                                                           peer, c + s + com)
        return crypto.share_associated_data(session=self.session, round_index=self.round_index,
                                            stage="share_keys", sender=sender, recipient=recipient,
                                            adverts=digest)

    def _mask_key(self, peer: int, dh: bytes | None = None) -> bytes:
        """``s_uv``: the pairwise mask key (what the server rebuilds for a dropped peer)."""
        if dh is None:
            dh = crypto.agree(self._s_sk, crypto.load_public(self._peers[peer][1]))
        return crypto.derive_key(dh, purpose=_PURPOSE_MASK, session=self.session,
                                 round_index=self.round_index, party_a=self.client_id, party_b=peer)

    def _pair_key(self, peer: int) -> bytes:
        """The share-channel key of this pair.

        Honest-but-curious mode: ``HKDF(X25519(c_u^SK, c_v^PK))`` with separate share-channel
        keys.  Malicious mode: ``HKDF(X25519(s_u^SK, s_v^PK) || K_uv)``; one ephemeral
        agreement serves the mask key too (computed here once), because the static ``K_uv``
        keeps the share key secret even when ``s_v^SK`` is revealed after ``v`` drops, and
        only the two hospitals can compute it (a substituted key is detected).
        """
        if self.mode == MALICIOUS:
            assert self.identity is not None and self.roster is not None
            dh = crypto.agree(self._s_sk, crypto.load_public(self._peers[peer][1]))
            self._mask_keys[peer] = self._mask_key(peer, dh)
            ikm = dh + self.identity.pairwise_secret(peer, self.roster)
        else:
            ikm = crypto.agree(self._c_sk, crypto.load_public(self._peers[peer][0]))
        return crypto.derive_key(ikm, purpose=_PURPOSE_ENC, session=self.session,
                                 round_index=self.round_index, party_a=self.client_id, party_b=peer)

    def _check_threshold(self, t: int, holders: int) -> None:
        if not 1 <= t <= holders:
            raise ProtocolAbort(
                f"client {self.client_id}: {holders} share holders (neighbours + itself), "
                f"threshold {t}; need 1 <= t <= holders")
        if self.mode == MALICIOUS and t < 2:
            raise MessageRejected(
                f"client {self.client_id}: threshold t = {t}; one share would reveal this "
                "client's keys, so malicious mode requires t >= 2 (name the honest-but-curious "
                "mode explicitly to run with t = 1)")
        if self.mode == MALICIOUS and not is_majority(t, holders):
            raise MessageRejected(
                f"client {self.client_id}: threshold t = {t} is not more than half of its "
                f"{holders} share holders; a server that lies about who dropped could then "
                "collect both shares of one client (malicious mode requires 2 t > holders)")

    def _check_survivors(self, survivors: np.ndarray) -> np.ndarray:
        """The survivor set ``U3`` the server names, checked against what this client knows."""
        ids = [int(v) for v in survivors]
        if any(b <= a for a, b in zip(ids, ids[1:], strict=False)):
            raise MessageRejected(f"client {self.client_id}: survivor list is not sorted and duplicate-free")
        if self.client_id not in ids:
            raise MessageRejected(f"client {self.client_id}: survivor list does not name this client")
        if self.mode == MALICIOUS:
            assert self.roster is not None
            unknown = [v for v in ids if v not in self.roster]
            if unknown:
                raise MessageRejected(
                    f"client {self.client_id}: survivor list names clients outside the roster: {unknown[:10]}")
        if len(ids) < self.min_clients:
            raise ProtocolAbort(
                f"client {self.client_id}: the server names {len(ids)} survivors, below this "
                f"hospital's minimum of {self.min_clients} contributors; round aborted")
        alive_nb = set(ids) & set(self._dir_ids)
        strangers = sorted(alive_nb - self._partners - {self.client_id})
        if strangers:
            raise MessageRejected(
                f"client {self.client_id}: survivor list names neighbours whose shares never "
                f"reached this client: {strangers[:10]}")
        if len(alive_nb) < self._threshold:
            raise ProtocolAbort(
                f"client {self.client_id}: the survivor list keeps {len(alive_nb)} of its share "
                f"holders, below the threshold t = {self._threshold}; round aborted")
        # The minimum counts only the survivors this client can vouch for: its own share
        # holders (itself included), whose shares it received.  A server could otherwise
        # pad the list with roster members that never took part in the round.
        if len(alive_nb) < self.min_clients:
            raise ProtocolAbort(
                f"client {self.client_id}: the survivor list keeps {len(alive_nb)} of its share "
                f"holders (itself included), below this hospital's minimum of "
                f"{self.min_clients} contributors; the other names are not clients whose shares "
                "reached it; round aborted")
        return np.asarray(ids, dtype=np.uint32)

    # ---------------------------------------------------------------- stages
    def advertise_keys(self) -> bytes:
        """Round 0: fresh keys and seeds; sends ``(c_u^PK, s_u^PK)`` and the commitment to ``b_u``."""
        self._expect("advertise_keys")
        # Malicious mode needs no separate share-channel key: the share key mixes the
        # mask-key agreement with the static K_uv, which a revealed s_v^SK does not give.
        self._c_sk = None if self.mode == MALICIOUS else crypto.new_private_key()[0]
        self._r = os.urandom(SEED_BYTES)
        self._b = os.urandom(SEED_BYTES)
        self._s_sk = _mask_private(self._r, session=self.session, round_index=self.round_index,
                                   client_id=self.client_id)
        self._c_pk = b"" if self._c_sk is None else crypto.public_bytes(self._c_sk)
        self._s_pk = crypto.public_bytes(self._s_sk)
        self._commit = commitment(self.session, self.round_index, self.client_id, self._b)
        msg = AdvertiseKeys(self.session, self.round_index, self.client_id, self._c_pk,
                            self._s_pk, self._commit, b"")
        if self.mode == MALICIOUS:
            assert self.identity is not None
            msg = AdvertiseKeys(msg.session, msg.round_index, msg.sender, msg.enc_public,
                                msg.mask_public, msg.commit, self.identity.sign(msg.signed_bytes()))
        self.stage = "share_keys"
        return msg.to_bytes()

    def share_keys(self, directory: bytes) -> bytes:
        """Round 1: check the key directory, then share ``r_u`` and ``b_u`` among the neighbours."""
        self._expect("share_keys")
        d = _from_server(KeyDirectory, directory, client_id=self.client_id, what="key directory")
        self._check_header(d)
        ids = [int(i) for i in d.ids]
        if len(set(ids)) != len(ids):
            raise MessageRejected(f"client {self.client_id}: key directory lists a client twice")
        if self.client_id not in ids:
            raise MessageRejected(f"client {self.client_id}: key directory does not list this client")
        entries = [d.entry(i) for i in range(len(ids))]
        if entries[ids.index(self.client_id)] != (self._c_pk, self._s_pk, self._commit):
            raise MessageRejected(f"client {self.client_id}: key directory shows other keys for this client")
        keys = [k for e in entries for k in e[:2] if k]
        if len(set(keys)) != len(keys):
            raise MessageRejected(f"client {self.client_id}: key directory repeats a public key")
        if any(len(e[0]) != len(self._c_pk) for e in entries):
            raise MessageRejected(f"client {self.client_id}: key directory does not match this "
                                  f"client's mode {self.mode!r}")
        if len(ids) < self.min_clients:
            raise ProtocolAbort(
                f"client {self.client_id}: key directory lists {len(ids)} clients, below this "
                f"hospital's minimum of {self.min_clients} contributors; round aborted")
        if self.mode == MALICIOUS:
            assert self.roster is not None
            unknown = [v for v in ids if v not in self.roster]
            if unknown:
                raise MessageRejected(
                    f"client {self.client_id}: key directory lists clients outside the roster: {unknown[:10]}")
        t = d.threshold
        self._check_threshold(t, len(ids))
        self._threshold = t
        self._dir_ids = ids
        self._peers = {v: entries[i] for i, v in enumerate(ids) if v != self.client_id}
        secret = np.concatenate([shamir.secret_to_elements(self._r), shamir.secret_to_elements(self._b)])
        try:
            shares = shamir.split(secret, threshold=t, points=np.asarray(ids, dtype=np.int64) + 1)
        except InvalidDataError as exc:
            raise MessageRejected(f"client {self.client_id}: key directory: {exc}") from exc
        plaintexts = pack_share_plaintexts(shares)
        cts: list[bytes] = []
        for i, v in enumerate(ids):
            if v == self.client_id:
                self._held[v] = shares[i]
                continue
            try:
                key = self._enc_keys[v] = self._pair_key(v)
            except KeyMaterialError as exc:
                raise MessageRejected(f"client {self.client_id}: key directory entry of client "
                                      f"{v} is not a usable public key: {exc}") from exc
            cts.append(crypto.seal_once(key, plaintexts[i],
                                        associated_data=self._ad(sender=self.client_id, recipient=v),
                                        sender=self.client_id, recipient=v))
        self.stage = "masked_input"
        return ShareKeys(self.session, self.round_index, self.client_id, b"".join(cts)).to_bytes()

    def masked_input(self, delivery: bytes, encoded: np.ndarray, *,
                     model_digest: bytes = NO_MODEL) -> bytes:
        """Round 2: open the received shares, then send the double-masked input.

        ``encoded`` is the client's input in ``Z_{2^b}`` (length ``self.length``);
        ``model_digest`` (:func:`model_digest`) names the model it was trained on, signed in
        the consistency round.
        """
        self._expect("masked_input")
        if not isinstance(model_digest, bytes) or len(model_digest) != 32:
            raise InvalidDataError(f"model_digest must be 32 bytes, got {model_digest!r:.40}")
        m = _from_server(ShareDelivery, delivery, client_id=self.client_id, what="share delivery")
        self._check_header(m)
        senders = [int(v) for v in m.senders]
        seen: set[int] = set()
        plaintexts: list[bytes] = []
        for i, v in enumerate(senders):
            if v in seen:
                raise MessageRejected(
                    f"client {self.client_id}: second share ciphertext from client {v} (replay)"
                )
            seen.add(v)
            if v not in self._peers:
                raise MessageRejected(f"client {self.client_id}: share from client {v}, not a neighbour")
            plaintexts.append(crypto.open_once(
                self._enc_keys[v], m.ciphertext(i),
                associated_data=self._ad(sender=v, recipient=self.client_id),
                sender=v, recipient=self.client_id,
                what=f"client {self.client_id}: share ciphertext from client {v}",
            ))
        for v, row in zip(senders, unpack_share_plaintexts(b"".join(plaintexts)), strict=True):
            self._held[v] = row
        if len(senders) + 1 < self._threshold:
            raise ProtocolAbort(
                f"client {self.client_id}: {len(senders) + 1} share holders left after share_keys, "
                f"below the threshold t = {self._threshold}"
            )
        if len(senders) + 1 < self.min_clients:
            raise ProtocolAbort(
                f"client {self.client_id}: {len(senders) + 1} share holders left after share_keys "
                f"(itself included), below this hospital's minimum of {self.min_clients} "
                "contributors; round aborted")
        x = np.asarray(encoded)
        if x.shape != (self.length,):
            raise InvalidDataError(
                f"client {self.client_id}: encoded input of shape {x.shape}, expected ({self.length},)"
            )
        if x.dtype.kind not in "ui" or (x.size and (x.min() < 0 or int(x.max()) >> self.bits)):
            raise InvalidDataError(
                f"client {self.client_id}: encoded input must hold integers in [0, 2^{self.bits})"
            )
        work = uint_dtype(self.bits)
        acc = x.astype(work, copy=True)
        expander = crypto.MaskExpander(self.length, work)
        self_key = crypto.derive_key(self._b, purpose=_PURPOSE_SELF, session=self.session,
                                     round_index=self.round_index, party_a=self.client_id,
                                     party_b=self.client_id)
        expander.add_into(acc, self_key, sign=+1)
        for v in senders:
            try:
                s_uv = self._mask_keys.get(v) or self._mask_key(v)
            except KeyMaterialError as exc:
                raise MessageRejected(f"client {self.client_id}: mask key of client {v} in the key "
                                      f"directory is not a usable public key: {exc}") from exc
            expander.add_into(acc, s_uv, sign=+1 if self.client_id < v else -1)
        if self.bits < _word_bits(self.bits):
            acc &= work.type((1 << self.bits) - 1)
        self._partners = set(senders)
        self._model_digest = model_digest
        self.stage = "consistency" if self.mode == MALICIOUS else "unmask"
        return MaskedInput(self.session, self.round_index, self.client_id,
                           acc.astype(wire_dtype(self.bits))).to_bytes()

    def consistency(self, request: bytes) -> bytes:
        """Round 3 (malicious mode): check ``U3`` and sign it with the model digest."""
        self._expect("consistency")
        r = _from_server(ConsistencyRequest, request, client_id=self.client_id,
                         what="consistency request")
        self._check_header(r)
        self._signed = self._check_survivors(r.survivors)
        assert self.identity is not None
        sig = self.identity.sign(consistency_bytes(self.session, self.round_index, self._signed,
                                                   self._model_digest))
        self.stage = "unmask"
        return ConsistencySignature(self.session, self.round_index, self.client_id, sig).to_bytes()

    def _check_signatures(self, r: UnmaskRequest) -> None:
        assert self.roster is not None and self._signed is not None
        if not np.array_equal(r.survivors, self._signed):
            raise MessageRejected(
                f"client {self.client_id}: unmask request names another survivor set than the "
                "one this client signed")
        signers = [int(v) for v in r.signers]
        if len(set(signers)) != len(signers):
            raise MessageRejected(f"client {self.client_id}: a signer is listed twice")
        outside = sorted(set(signers) - {int(v) for v in self._signed})
        if outside:
            raise MessageRejected(
                f"client {self.client_id}: signatures from clients outside the survivor set: {outside[:10]}")
        if len(signers) < self._threshold:
            raise ProtocolAbort(
                f"client {self.client_id}: {len(signers)} signatures over the survivor set, below "
                f"the threshold t = {self._threshold}; round aborted")
        message = consistency_bytes(self.session, self.round_index, self._signed, self._model_digest)
        for i, v in enumerate(signers):
            self.roster.verify(v, message, r.signature(i),
                               what=f"client {self.client_id}: consistency signature (same survivor "
                                    "set and model)")

    def unmask(self, request: bytes) -> bytes:
        """Round 4: reveal seed shares of survivors and key shares of dropped partners."""
        self._expect("unmask")
        r = _from_server(UnmaskRequest, request, client_id=self.client_id, what="unmask request")
        self._check_header(r)
        if self.mode == MALICIOUS:
            self._check_signatures(r)
            survivors = self._signed
        else:
            survivors = self._check_survivors(r.survivors)
        assert survivors is not None
        self.stage = "done"  # one answer per round, whatever happens next
        alive = {int(v) for v in survivors}
        seeds = sorted(v for v in self._held if v in alive)
        dead = sorted(v for v in self._partners if v not in alive)
        seed = np.array([self._held[v][SEED_SHARE_ELEMENTS:] for v in seeds], dtype=np.uint32)
        keys = np.array([self._held[v][:SEED_SHARE_ELEMENTS] for v in dead], dtype=np.uint32)
        return UnmaskResponse(
            self.session, self.round_index, self.client_id,
            seed.reshape(len(seeds), SEED_SHARE_ELEMENTS), keys.reshape(len(dead), SEED_SHARE_ELEMENTS),
        ).to_bytes()

    # ------------------------------------------------------------- state between messages
    def export_state(self) -> bytes:
        """This client's whole state (private keys, seeds, held shares) as bytes, so that a
        node that runs each protocol message in a fresh process can keep it between messages.

        The blob is secret: it must stay in the node's own storage and never be sent.  The
        identity key and the roster are not in it (the node loads them from its own files).
        """
        fields: dict[str, Any] = {
            "client_id": self.client_id, "session": self.session,
            "round_index": self.round_index, "bits": self.bits, "length": self.length,
            "stage": self.stage, "threshold": int(self._threshold), "mode": self.mode,
            "min_clients": self.min_clients, "model": self._model_digest,
            "dir_ids": np.asarray(self._dir_ids, dtype=np.int64),
        }
        if hasattr(self, "_s_sk"):
            fields.update(r=self._r, b=self._b)
            if self._c_sk is not None:
                fields["c_sk"] = self._c_sk.private_bytes_raw()
        held = sorted(self._held)
        fields["held_ids"] = np.asarray(held, dtype=np.int64)
        if held:
            fields["held"] = np.stack([np.asarray(self._held[v]) for v in held])
        enc = sorted(self._enc_keys)
        fields["enc_ids"] = np.asarray(enc, dtype=np.int64)
        fields["enc_keys"] = b"".join(self._enc_keys[v] for v in enc)
        fields["mask_keys"] = b"".join(self._mask_keys[v] for v in enc if v in self._mask_keys)
        peers = sorted(self._peers)
        fields["peer_ids"] = np.asarray(peers, dtype=np.int64)
        fields["peer_keys"] = b"".join(b"".join(self._peers[v]) for v in peers)
        fields["partners"] = np.asarray(sorted(self._partners), dtype=np.int64)
        if self._signed is not None:
            fields["signed"] = np.asarray(self._signed, dtype=np.uint32)
        return pack(fields)

    @classmethod
    def restore_state(cls, blob: bytes, *, identity: IdentityKey | None = None,
                      roster: Roster | None = None) -> SecAggClient:
        """Inverse of :meth:`export_state` (give the same identity and roster again)."""
        f = unpack(blob)
        client = cls(int(f["client_id"]), session=f["session"],
                     round_index=int(f["round_index"]), bits=int(f["bits"]),
                     length=int(f["length"]), mode=str(f["mode"]),
                     min_clients=int(f["min_clients"]), identity=identity, roster=roster)
        client.stage = str(f["stage"])
        client._threshold = int(f["threshold"])
        client._model_digest = bytes(f["model"])
        client._dir_ids = [int(v) for v in f["dir_ids"]]
        if "r" in f:
            client._c_sk = crypto.private_from_bytes(f["c_sk"]) if "c_sk" in f else None
            client._r, client._b = bytes(f["r"]), bytes(f["b"])
            client._s_sk = _mask_private(client._r, session=client.session,
                                         round_index=client.round_index, client_id=client.client_id)
            client._c_pk = b"" if client._c_sk is None else crypto.public_bytes(client._c_sk)
            client._s_pk = crypto.public_bytes(client._s_sk)
            client._commit = commitment(client.session, client.round_index, client.client_id, client._b)
        held_ids = [int(v) for v in f["held_ids"]]
        client._held = {v: f["held"][i].copy() for i, v in enumerate(held_ids)}
        enc_ids = [int(v) for v in f["enc_ids"]]
        kb = crypto.KEY_BYTES
        client._enc_keys = {v: f["enc_keys"][i * kb:(i + 1) * kb] for i, v in enumerate(enc_ids)}
        if f["mask_keys"]:
            client._mask_keys = {v: f["mask_keys"][i * kb:(i + 1) * kb] for i, v in enumerate(enc_ids)}
        raw = f["peer_keys"]
        c = len(client._c_pk)
        w = c + 64
        client._peers = {v: (raw[w * i:w * i + c], raw[w * i + c:w * i + c + 32],
                             raw[w * i + c + 32:w * (i + 1)])
                         for i, v in enumerate(int(p) for p in f["peer_ids"])}
        client._partners = {int(v) for v in f["partners"]}
        if "signed" in f:
            client._signed = np.asarray(f["signed"], dtype=np.uint32)
        return client


class SecAggServer:
    """The server's side: collects each stage's messages, closes the stage, and finally
    removes the masks.  It never holds a client's private key or unmasked input; it learns
    ``b_u`` of survivors and the mask keys of clients that dropped after sharing, as the
    protocol intends.

    ``threshold`` is refused when it is not more than half of some client's share holders,
    unless ``mode="honest-but-curious"`` (then it is accepted with a warning).  In malicious
    mode ``roster`` (the pinned public keys) is required: the server checks every
    advertisement and consistency signature, so an impostor is refused.  ``model_digest``
    is the digest of the model the server sent (what the survivors must have signed).
    """

    def __init__(self, client_ids: Sequence[int], *, round_index: int, threshold: int,
                 bits: int, length: int, graph: Mapping[int, frozenset[int]] | None = None,
                 session: bytes | None = None, mode: str = MALICIOUS,
                 min_clients: int = DEFAULT_MIN_CLIENTS, roster: Roster | None = None,
                 model_digest: bytes = NO_MODEL) -> None:
        ids = _check_ids(client_ids)
        self.mode = _check_mode(mode)
        self.min_clients = _check_min_clients(min_clients)
        if not isinstance(threshold, (int, np.integer)) or not 1 <= threshold <= max(len(ids), 1):
            raise ConfigurationError(f"threshold must be in [1, {len(ids)}], got {threshold}")
        self.client_ids = tuple(ids)
        self.graph = dict(graph) if graph is not None else complete_graph(ids)
        missing = set(ids) - set(self.graph)
        if missing:
            raise ConfigurationError(f"graph has no neighbour list for clients {sorted(missing)[:10]}")
        self._check_threshold_against_graph(int(threshold))
        if self.mode == MALICIOUS and int(threshold) < 2:
            raise ConfigurationError(
                "threshold t = 1: one share would reveal a client's keys; malicious mode requires "
                "t >= 2 (pass mode='honest-but-curious' explicitly to run with t = 1)")
        if self.mode == MALICIOUS:
            if roster is None:
                raise KeyMaterialError("malicious mode needs the pinned roster on the server too "
                                       "(it checks every signature); got none")
            outside = [i for i in ids if i not in roster]
            if outside:
                raise ConfigurationError(f"clients {outside[:10]} are not in the roster")
        self.roster = roster
        self.model_digest = model_digest
        self.threshold = int(threshold)
        self.bits = bits
        self.length = length
        self.round_index = round_index
        self.session = session if session is not None else crypto.new_session_id()
        self.stage = "advertise_keys"
        self._adv: dict[int, AdvertiseKeys] = {}
        self._s_pub: dict[int, object] = {}
        self._directory: dict[int, list[int]] = {}  # u -> its directory's other ids, in order
        self._shares: dict[int, ShareKeys] = {}
        self._delivered: dict[int, list[int]] = {}  # v -> senders whose shares v received
        self._partner_sets: dict[int, set[int]] = {}
        self._masked: set[int] = set()
        self._sum = np.zeros(length, dtype=uint_dtype(bits))
        self._answers: dict[int, tuple[list[int], list[int]]] = {}  # u -> (seed ids, key ids)
        self._signatures: dict[int, bytes] = {}
        self._responses: dict[int, UnmaskResponse] = {}
        self.u1: tuple[int, ...] = ()
        self.u2: tuple[int, ...] = ()
        self.u3: tuple[int, ...] = ()
        self.u4: tuple[int, ...] = ()
        self.u5: tuple[int, ...] = ()
        self._pools: dict[str, frozenset[int]] = {"advertise_keys": frozenset(ids)}
        # a throwaway key, only to test advertised public keys (low order: all-zero agreement)
        self._probe = crypto.new_private_key()[0]

    def _check_threshold_against_graph(self, t: int) -> None:
        worst = min((len(self.graph[u]) + 1 for u in self.client_ids), default=1)
        widest = max((len(self.graph[u]) + 1 for u in self.client_ids), default=1)
        if is_majority(t, widest):
            return
        text = (f"threshold t = {t} is not more than half of the {widest} share holders "
                f"(neighbours + itself) of some client")
        if self.mode == MALICIOUS:
            raise ConfigurationError(
                f"{text}: a server that lies about who dropped could collect both shares of a "
                "client; malicious mode refuses it (choose 2 t > holders, or pass "
                "mode='honest-but-curious' explicitly)")
        warnings.warn(f"secagg (honest-but-curious mode): {text}; secure only if the server "
                      f"follows the protocol (fewest holders {worst})", stacklevel=3)

    # ---------------------------------------------------------------- receiving
    _KINDS = {"advertise_keys": AdvertiseKeys, "share_keys": ShareKeys,
              "masked_input": MaskedInput, "consistency": ConsistencySignature,
              "unmask": UnmaskResponse}

    def receive(self, sender: int, blob: bytes) -> object:
        """Accept one message from ``sender`` at the current stage; returns the parsed message."""
        if self.stage not in self._KINDS:
            raise MessageRejected(f"server is at stage {self.stage!r} and accepts no messages")
        msg = self._KINDS[self.stage].from_bytes(blob)
        if msg.session != self.session:
            raise MessageRejected(f"message from client {sender} belongs to another session")
        if msg.round_index != self.round_index:
            raise MessageRejected(
                f"message from client {sender} is for round {msg.round_index}, expected round {self.round_index}"
            )
        if msg.sender != sender:
            raise MessageRejected(f"message claims sender {msg.sender} but came from client {sender}")
        getattr(self, f"_receive_{self.stage}")(sender, msg)
        return msg

    def _eligible(self, sender: int, done: Mapping | set) -> None:
        if sender not in self._pools[self.stage]:
            raise MessageRejected(f"client {sender} is not a participant of stage {self.stage!r}")
        if sender in done:
            raise MessageRejected(f"duplicate {self.stage!r} message from client {sender}")

    def _receive_advertise_keys(self, sender: int, msg: AdvertiseKeys) -> None:
        self._eligible(sender, self._adv)
        if self.mode == MALICIOUS:
            assert self.roster is not None
            self.roster.verify(sender, msg.signed_bytes(), msg.signature,
                               what=f"advertisement of client {sender}")
        if len(msg.enc_public) != (0 if self.mode == MALICIOUS else 32):
            raise MessageRejected(
                f"advertisement of client {sender} does not match the server's mode {self.mode!r} "
                f"(share-channel key of {len(msg.enc_public)} bytes)")
        for name, raw in (("mask", msg.mask_public), ("share-channel", msg.enc_public)):
            if not raw:
                continue
            try:  # a low-order key would make every peer's agreement with it fail
                crypto.agree(self._probe, crypto.load_public(raw))
            except KeyMaterialError as exc:
                raise MessageRejected(
                    f"advertisement of client {sender}: its {name} public key is not usable "
                    f"({exc})") from exc
        self._s_pub[sender] = crypto.load_public(msg.mask_public)
        self._adv[sender] = msg

    def _receive_share_keys(self, sender: int, msg: ShareKeys) -> None:
        self._eligible(sender, self._shares)
        expected = len(self._directory[sender])
        if msg.count != expected:
            raise MessageRejected(
                f"client {sender} sent {msg.count} share ciphertexts, expected one for each of its "
                f"{expected} neighbours in the key directory"
            )
        self._shares[sender] = msg

    def _receive_masked_input(self, sender: int, msg: MaskedInput) -> None:
        self._eligible(sender, self._masked)
        y = msg.masked
        if y.shape != (self.length,):
            raise MessageRejected(
                f"client {sender} sent a masked vector of length {y.shape[0]}, expected {self.length}"
            )
        if y.dtype != wire_dtype(self.bits):
            raise MessageRejected(f"client {sender} sent dtype {y.dtype}, expected {wire_dtype(self.bits)}")
        if self.bits < 8 * y.dtype.itemsize and int(y.max(initial=0)) >> self.bits:
            raise MessageRejected(f"client {sender} sent values outside Z_2^{self.bits}")
        np.add(self._sum, y, out=self._sum, casting="unsafe")
        self._masked.add(sender)

    def _receive_consistency(self, sender: int, msg: ConsistencySignature) -> None:
        self._eligible(sender, self._signatures)
        assert self.roster is not None
        self.roster.verify(sender, consistency_bytes(self.session, self.round_index,
                                                     np.asarray(self.u3, dtype=np.uint32),
                                                     self.model_digest),
                           msg.signature, what=f"consistency signature of client {sender}")
        self._signatures[sender] = msg.signature

    def _receive_unmask(self, sender: int, msg: UnmaskResponse) -> None:
        self._eligible(sender, self._responses)
        seeds, keys = self._answers[sender]
        if msg.seed_shares.shape[0] != len(seeds) or msg.key_shares.shape[0] != len(keys):
            raise MessageRejected(
                f"client {sender} answered with {msg.seed_shares.shape[0]} seed and "
                f"{msg.key_shares.shape[0]} key shares, expected {len(seeds)} and {len(keys)}")
        self._responses[sender] = msg

    # ---------------------------------------------------------------- closing stages
    def _need(self, count: int, what: str) -> None:
        if count < self.threshold:
            raise ProtocolAbort(
                f"only {count} clients {what}, below the threshold t = {self.threshold}; round aborted"
            )
        if count < self.min_clients:
            raise ProtocolAbort(
                f"only {count} clients {what}, below the minimum of {self.min_clients} "
                "contributors; round aborted (the sum of fewer would be released)"
            )

    def _holders(self, u: int, pool: set[int]) -> int:
        return len(self.graph[u] & pool) + (1 if u in pool else 0)

    def _expect_stage(self, stage: str) -> None:
        if self.stage != stage:
            raise ProtocolAbort(f"server is at stage {self.stage!r}, cannot close stage {stage!r}")

    def close_advertise_keys(self) -> dict[int, bytes]:
        """End round 0; returns the key directory (bytes) for each client of ``U1``."""
        self._expect_stage("advertise_keys")
        self.u1 = tuple(sorted(self._adv))
        self._need(len(self.u1), "advertised keys")
        pool = set(self.u1)
        keys = [k for a in self._adv.values() for k in (a.enc_public, a.mask_public) if k]
        if len(set(keys)) != len(keys):
            raise ProtocolAbort("two clients advertised the same public key; round aborted")
        out = {}
        for u in self.u1:
            ids = sorted((self.graph[u] & pool) | {u})
            if len(ids) < self.threshold:
                raise ProtocolAbort(
                    f"client {u} has {len(ids)} live share holders (neighbours + itself) after "
                    f"advertise_keys, below the threshold t = {self.threshold}; round aborted"
                )
            self._directory[u] = [v for v in ids if v != u]
            adv = [self._adv[v] for v in ids]
            out[u] = KeyDirectory(
                self.session, self.round_index, u, self.threshold, np.asarray(ids, dtype=np.uint32),
                b"".join(a.enc_public for a in adv), b"".join(a.mask_public for a in adv),
                b"".join(a.commit for a in adv),
            ).to_bytes()
        self.stage = "share_keys"
        self._pools[self.stage] = frozenset(self.u1)
        return out

    def close_share_keys(self) -> dict[int, bytes]:
        """End round 1; returns each client's inbox of share ciphertexts (bytes)."""
        self._expect_stage("share_keys")
        self.u2 = tuple(sorted(self._shares))
        self._need(len(self.u2), "shared their keys")
        pool = set(self.u2)
        for u in self.u2:
            h = self._holders(u, pool)
            if h < self.threshold:
                raise ProtocolAbort(
                    f"client {u} has {h} share holders left after share_keys, below the "
                    f"threshold t = {self.threshold}; round aborted"
                )
        # Route every (sender, recipient, ciphertext) at once: ciphertext i of sender u goes
        # to the i-th client of u's directory; each inbox lists its senders in ascending order.
        live = np.asarray(self.u2, dtype=np.int64)
        senders = np.repeat(live, [len(self._directory[u]) for u in self.u2])
        recipients = np.concatenate([np.asarray(self._directory[u], dtype=np.int64)
                                     for u in self.u2])
        cts = np.frombuffer(b"".join(self._shares[u].ciphertexts for u in self.u2),
                            dtype=np.uint8).reshape(-1, SHARE_CIPHERTEXT_BYTES)
        keep = np.isin(recipients, live)
        order = np.flatnonzero(keep)[np.argsort(recipients[keep], kind="stable")]
        senders, recipients, cts = senders[order], recipients[order], cts[order]
        lo = np.searchsorted(recipients, live, side="left")
        hi = np.searchsorted(recipients, live, side="right")
        out = {}
        for v, a, b in zip(self.u2, lo.tolist(), hi.tolist(), strict=True):
            src = senders[a:b]
            self._delivered[v] = src.tolist()
            self._partner_sets[v] = set(self._delivered[v])
            out[v] = ShareDelivery(self.session, self.round_index, v, src.astype(np.uint32),
                                   cts[a:b].tobytes()).to_bytes()
        self.stage = "masked_input"
        self._pools[self.stage] = frozenset(self.u2)
        return out

    def close_masked_input(self) -> dict[int, bytes]:
        """End round 2; returns each survivor's consistency request (malicious mode) or unmask
        request (honest-but-curious mode), as bytes."""
        self._expect_stage("masked_input")
        self.u3 = tuple(sorted(self._masked))
        self._need(len(self.u3), "sent masked inputs")
        alive = set(self.u3)
        survivors = np.asarray(self.u3, dtype=np.uint32)
        for u in self.u3:  # what each survivor will reveal, derived from U3 as it does
            held = self._delivered[u] + [u]
            self._answers[u] = (sorted(v for v in held if v in alive),
                                sorted(v for v in self._delivered[u] if v not in alive))
        if self.mode == MALICIOUS:
            self.stage = "consistency"
            self._pools[self.stage] = frozenset(self.u3)
            return {u: ConsistencyRequest(self.session, self.round_index, u, survivors).to_bytes()
                    for u in self.u3}
        self.stage = "unmask"
        self._pools[self.stage] = frozenset(self.u3)
        empty = np.zeros(0, dtype=np.uint32)
        return {u: UnmaskRequest(self.session, self.round_index, u, survivors, empty, b"").to_bytes()
                for u in self.u3}

    def close_consistency(self) -> dict[int, bytes]:
        """End round 3 (malicious mode): forward ``t`` signatures to each signer."""
        self._expect_stage("consistency")
        self.u4 = tuple(sorted(self._signatures))
        self._need(len(self.u4), "signed the survivor set")
        signers = self.u4[: self.threshold]
        ids = np.asarray(signers, dtype=np.uint32)
        sigs = b"".join(self._signatures[v] for v in signers)
        survivors = np.asarray(self.u3, dtype=np.uint32)
        self.stage = "unmask"
        self._pools[self.stage] = frozenset(self.u4)
        return {u: UnmaskRequest(self.session, self.round_index, u, survivors, ids, sigs).to_bytes()
                for u in self.u4}

    def finish(self) -> np.ndarray:
        """End round 4: rebuild the secrets, check them, remove all masks, return
        ``sum_{U3} x_u mod 2^b``."""
        self._expect_stage("unmask")
        self.u5 = tuple(sorted(self._responses))
        self._need(len(self.u5), "answered the unmask stage")
        alive = list(self.u3)
        dropped = sorted(set(self.u2) - set(self.u3))
        seeds = self._rebuild("seed", alive)
        key_seeds = self._rebuild("key", dropped)
        work = self._sum.dtype
        acc = self._sum.copy()
        expander = crypto.MaskExpander(self.length, work)
        for u, b in zip(alive, seeds, strict=True):
            if commitment(self.session, self.round_index, u, b) != self._adv[u].commit:
                raise ProtocolAbort(
                    f"the self-mask seed rebuilt for client {u} does not match its commitment: a "
                    "share was corrupted (a client sent a wrong share); round aborted")
            key = crypto.derive_key(b, purpose=_PURPOSE_SELF, session=self.session,
                                    round_index=self.round_index, party_a=u, party_b=u)
            expander.add_into(acc, key, sign=-1)
        alive_set = set(alive)
        for v, seed in zip(dropped, key_seeds, strict=True):
            priv = _mask_private(seed, session=self.session, round_index=self.round_index, client_id=v)
            if crypto.public_bytes(priv) != self._adv[v].mask_public:
                raise ProtocolAbort(
                    f"the key rebuilt for dropped client {v} does not match its advertised public "
                    "key: a share was corrupted; round aborted"
                )
            for u in sorted(self.graph[v] & alive_set):
                if v not in self._partner_sets[u]:
                    continue  # u never received v's share, so it did not mask with v
                s_uv = crypto.derive_key(crypto.agree(priv, self._s_pub[u]), purpose=_PURPOSE_MASK,
                                         session=self.session, round_index=self.round_index,
                                         party_a=u, party_b=v)
                # client u added Delta_uv * PRG(s_uv); remove it
                expander.add_into(acc, s_uv, sign=-1 if u < v else +1)
        if self.bits < 8 * work.itemsize:
            acc &= work.type((1 << self.bits) - 1)
        self.stage = "done"
        return acc

    def _rebuild(self, kind: str, targets: Sequence[int]) -> list[bytes]:
        """Shamir-reconstruct the seed of every target from ``t`` responders each."""
        if not targets:
            return []
        t = self.threshold
        tg, rs, sh = [], [], []
        for r in self.u5:
            resp = self._responses[r]
            seeds, keys = self._answers[r]
            ids, shares = (seeds, resp.seed_shares) if kind == "seed" else (keys, resp.key_shares)
            if not ids:
                continue
            tg.append(np.asarray(ids, dtype=np.int64))
            rs.append(np.full(len(ids), r, dtype=np.int64))
            sh.append(shares.astype(np.int64))
        what = "self-mask seed" if kind == "seed" else "mask-key seed"
        if not tg:
            raise ProtocolAbort(f"no shares of the {what} of client {targets[0]} arrived; round aborted")
        tgt, resp_ids, shares = np.concatenate(tg), np.concatenate(rs), np.concatenate(sh)
        order = np.lexsort((resp_ids, tgt))
        tgt, resp_ids, shares = tgt[order], resp_ids[order], shares[order]
        uniq, start, counts = np.unique(tgt, return_index=True, return_counts=True)
        pos = {int(u): i for i, u in enumerate(uniq)}
        rows = []
        for v in targets:
            i = pos.get(int(v))
            c = 0 if i is None else int(counts[i])
            if c < t:
                raise ProtocolAbort(
                    f"only {c} shares of the {what} of client {v} arrived, below the threshold "
                    f"t = {t}; round aborted"
                )
            rows.append(start[i])
        idx = np.asarray(rows, dtype=np.int64)[:, None] + np.arange(t)
        points = resp_ids[idx] + 1  # (targets, t)
        uniq_pts, inverse = np.unique(points, axis=0, return_inverse=True)
        lam = shamir.lagrange_at_zero(uniq_pts)[np.ravel(inverse)]
        secret = ((shares[idx] * lam[:, :, None]) % shamir.PRIME).sum(axis=1) % shamir.PRIME
        try:
            return [shamir.elements_to_secret(s, SEED_BYTES) for s in secret]
        except InvalidDataError as exc:
            raise ProtocolAbort(f"reconstruction of a {what} failed: {exc}; round aborted") from exc


@dataclass(frozen=True)
class RoundOutcome:
    """Everything one protocol run produced, as the channel and the benchmarks need it."""

    total: np.ndarray  # sum over U3 of the encoded inputs, in Z_{2^b}
    advertised: tuple[int, ...]  # U1
    shared: tuple[int, ...]  # U2
    survivors: tuple[int, ...]  # U3, whose inputs are in the sum
    unmasked: tuple[int, ...]  # U5
    threshold: int
    bytes_up: dict[int, int]
    bytes_down: dict[int, int]
    client_seconds: dict[int, float]  # per client, all stages
    client_stage_seconds: dict[str, float]  # per stage, summed over clients
    server_stage_seconds: dict[str, float]
    client_cpu_seconds: dict[int, float]  # the same, in CPU time of this process
    server_cpu_stage_seconds: dict[str, float]
    received: tuple[ReceivedMessage, ...] = field(default=())
    mode: str = MALICIOUS
    signed: tuple[int, ...] = ()  # U4 (malicious mode)


def run_round(
    client_ids: Sequence[int],
    inputs: Callable[[int], np.ndarray],
    *,
    round_index: int,
    threshold: int,
    bits: int,
    length: int,
    graph: Mapping[int, frozenset[int]] | None = None,
    alive: Callable[[int, str], bool] | None = None,
    record_received: bool = True,
    mode: str = MALICIOUS,
    min_clients: int = DEFAULT_MIN_CLIENTS,
    identities: Mapping[int, IdentityKey] | None = None,
    roster: Roster | None = None,
    model_digest: bytes = NO_MODEL,
) -> RoundOutcome:
    """Run one complete protocol round in process, message by message, as bytes.

    ``inputs(cid)`` is called at client ``cid`` during the masked-input stage (so its cost is
    client time) and must return the encoded input in ``Z_{2^b}``.  ``alive(cid, stage)``
    says whether ``cid`` still sends its message of ``stage``; a client that stops sending
    receives nothing afterwards.  In malicious mode ``identities`` (client id ->
    :class:`~securefed.identity.IdentityKey`) and ``roster`` play the out-of-band key
    distribution; when both are omitted, fresh identities are generated for this round.
    """
    ids = _check_ids(client_ids)
    alive = alive or (lambda cid, stage: True)
    stages = stages_for(mode)
    if mode == MALICIOUS and identities is None and roster is None:
        identities, roster = generate_identities(ids)
    ident = identities or {}
    server = SecAggServer(ids, round_index=round_index, threshold=threshold, bits=bits,
                          length=length, graph=graph, mode=mode, min_clients=min_clients,
                          roster=roster, model_digest=model_digest)
    clients = {cid: SecAggClient(cid, session=server.session, round_index=round_index,
                                 bits=bits, length=length, mode=mode, min_clients=min_clients,
                                 identity=ident.get(cid), roster=roster) for cid in ids}
    up = dict.fromkeys(ids, 0)
    down = dict.fromkeys(ids, 0)
    ctime = dict.fromkeys(ids, 0.0)
    cstage = dict.fromkeys(stages, 0.0)
    sstage = dict.fromkeys(stages, 0.0)
    ccpu = dict.fromkeys(ids, 0.0)
    scpu = dict.fromkeys(stages, 0.0)
    received: list[ReceivedMessage] = []

    def deliver(stage: str, cid: int, blob: bytes) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        msg = server.receive(cid, blob)
        sstage[stage] += time.perf_counter() - t0
        scpu[stage] += time.process_time() - c0
        up[cid] += len(blob)
        if record_received:
            received.append(ReceivedMessage(stage=stage, sender=cid, nbytes=len(blob),
                                            content=_observable(msg)))

    def client_call(stage: str, cid: int, fn: Callable[..., bytes], *args: object) -> bytes:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args)
        dt = time.perf_counter() - t0
        ccpu[cid] += time.process_time() - c0
        ctime[cid] += dt
        cstage[stage] += dt
        return out

    def close(stage: str, fn: Callable[[], dict[int, bytes]]) -> dict[int, bytes]:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sstage[stage] += time.perf_counter() - t0
        scpu[stage] += time.process_time() - c0
        for cid, blob in out.items():
            down[cid] += len(blob)
        return out

    def step(stage: str, inbox: Mapping[int, bytes], method: Callable[[int, bytes], bytes]) -> None:
        for cid, blob in inbox.items():
            if alive(cid, stage):
                deliver(stage, cid, client_call(stage, cid, lambda c=cid, b=blob: method(c, b)))

    step("advertise_keys", dict.fromkeys(ids, b""), lambda c, _b: clients[c].advertise_keys())
    directories = close("advertise_keys", server.close_advertise_keys)
    step("share_keys", directories, lambda c, b: clients[c].share_keys(b))
    deliveries = close("share_keys", server.close_share_keys)
    step("masked_input", deliveries,
         lambda c, b: clients[c].masked_input(b, inputs(c), model_digest=model_digest))
    requests = close("masked_input", server.close_masked_input)
    if mode == MALICIOUS:
        step("consistency", requests, lambda c, b: clients[c].consistency(b))
        requests = close("consistency", server.close_consistency)
    step("unmask", requests, lambda c, b: clients[c].unmask(b))
    t0, c0 = time.perf_counter(), time.process_time()
    total = server.finish()
    sstage["unmask"] += time.perf_counter() - t0
    scpu["unmask"] += time.process_time() - c0
    return RoundOutcome(
        total=total, advertised=server.u1, shared=server.u2, survivors=server.u3,
        unmasked=server.u5, threshold=threshold, bytes_up=up, bytes_down=down,
        client_seconds=ctime, client_stage_seconds=cstage, server_stage_seconds=sstage,
        client_cpu_seconds=ccpu, server_cpu_stage_seconds=scpu,
        received=tuple(received), mode=mode, signed=server.u4,
    )


def _observable(msg: object) -> dict[str, object]:
    """What the server sees of a message (it is all ciphertext, public keys, signatures,
    masked data or revealed shares; never a plaintext input)."""
    if isinstance(msg, AdvertiseKeys):
        return {"enc_public": msg.enc_public, "mask_public": msg.mask_public,
                "commitment": msg.commit, "signature": msg.signature}
    if isinstance(msg, ShareKeys):
        return {"ciphertexts": msg.ciphertexts, "count": msg.count}
    if isinstance(msg, MaskedInput):
        return {"masked": msg.masked}
    if isinstance(msg, ConsistencySignature):
        return {"signature": msg.signature}
    if isinstance(msg, UnmaskResponse):
        return {"seed_shares": msg.seed_shares, "key_shares": msg.key_shares}
    raise TypeError(type(msg).__name__)

