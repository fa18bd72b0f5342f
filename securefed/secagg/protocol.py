"""Client and server state machines of secure aggregation with double masking.

The protocol is the semi-honest variant of Bonawitz et al., "Practical Secure Aggregation
for Privacy-Preserving Machine Learning", CCS 2017 (Fig. 4, rounds 0, 1, 2 and 4; the
consistency-check round 3 guards against an actively malicious server and is not run
here), over a communication graph that is either complete or the sparse SecAgg+ graph of
Bell et al., CCS 2020 (see :mod:`securefed.secagg.graph`).

Stages, in order (the names the engine's :class:`~securefed.channel.DropoutPlan`
uses):

``advertise_keys``
    Each client ``u`` draws two X25519 key pairs, ``(c_u^SK, c_u^PK)`` for the share
    channel and ``(s_u^SK, s_u^PK)`` for the pairwise masks, and sends both public keys.
    The server waits for ``U1`` (at least ``t`` clients), then sends each client the keys
    of its neighbours in ``U1``.
``share_keys``
    Each client draws a fresh 128-bit self-mask seed ``b_u``, Shamir-shares ``s_u^SK`` and
    ``b_u`` ``t``-out-of-(its neighbours + itself), and sends each neighbour its share under
    AES-GCM with a key from ``c_u^SK`` and the neighbour's ``c_v^PK``.  The server
    forwards the ciphertexts of ``U2`` to their recipients.
``masked_input``
    Each client sends ``y_u = x_u + PRG(b_u) + sum_{v in N(u) & U2} Delta_uv PRG(s_uv)``
    modulo ``2^b``, with ``Delta_uv = +1`` if ``u < v`` else ``-1``, so pairwise masks cancel
    when both ends are in the sum.  The server keeps the running sum over ``U3``.
``unmask``
    Each surviving client reveals its shares of ``b_v`` for surviving neighbours ``v`` and of
    ``s_v^SK`` for neighbours that dropped after sharing, **never both for one ``v``** (the
    client state machine answers once and refuses a request naming a client in both
    lists).  From ``t`` shares each, the server rebuilds the self masks of ``U3`` and the
    pairwise masks of the dropped clients and removes them: the result is
    ``sum_{u in U3} x_u mod 2^b`` exactly.

Whenever fewer than ``t`` clients remain at a stage (or, with a sparse graph, a client has
fewer than ``t`` live share holders), the round aborts with :class:`ProtocolAbort` naming the
counts.  A message of the wrong stage, round, session or sender, a duplicate, a
misaddressed or tampered ciphertext and a vector of the wrong length are refused with
:class:`MessageRejected`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefed.channel import ReceivedMessage
from securefed.errors import ConfigurationError, InvalidDataError, MessageRejected, ProtocolAbort
from securefed.secagg import crypto, shamir
from securefed.secagg.encoding import uint_dtype, wire_dtype
from securefed.secagg.graph import complete_graph
from securefed.secagg.messages import (
    KEY_SHARE_ELEMENTS,
    SEED_BYTES,
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    pack_share_plaintext,
    unpack_share_plaintext,
)
from securefed.wire import pack, unpack

__all__ = ["STAGES", "SecAggClient", "SecAggServer", "RoundOutcome", "run_round"]

STAGES: tuple[str, ...] = ("advertise_keys", "share_keys", "masked_input", "unmask")
MAX_CLIENT_ID = shamir.PRIME - 2  # evaluation point client_id + 1 must stay below p

_PURPOSE_MASK = b"pairwise-mask"
_PURPOSE_SELF = b"self-mask"
_PURPOSE_ENC = b"share-encryption"


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


class SecAggClient:
    """One client's side of the protocol; each public method is one stage.

    Every method takes the server's message as bytes and returns the client's reply as
    bytes.  Calling a stage out of order raises :class:`MessageRejected` naming both
    stages.  Secrets (X25519 keys, ``b_u``) come from ``os.urandom`` and never leave the
    object except as encrypted or revealed Shamir shares.
    """

    def __init__(self, client_id: int, *, session: bytes, round_index: int, bits: int,
                 length: int) -> None:
        self.client_id = _check_ids([client_id])[0]
        self.session = session
        self.round_index = round_index
        self.bits = bits
        self.length = length
        self.stage = "advertise_keys"
        self._held: dict[int, np.ndarray] = {}  # shares of (s_v^SK, b_v) this client holds
        self._enc_keys: dict[int, bytes] = {}
        self._peers: dict[int, tuple[bytes, bytes]] = {}
        self._partners: set[int] = set()
        self._threshold = 0

    # ---------------------------------------------------------------- helpers
    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise MessageRejected(
                f"client {self.client_id} is at stage {self.stage!r}, got a message for stage {stage!r}"
            )

    def _check_header(self, msg: KeyDirectory | ShareDelivery | UnmaskRequest) -> None:
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

    def _ad(self, *, sender: int, recipient: int) -> bytes:
        return crypto.share_associated_data(session=self.session, round_index=self.round_index,
                                            stage="share_keys", sender=sender, recipient=recipient)

    # ---------------------------------------------------------------- stages
    def advertise_keys(self) -> bytes:
        """Round 0: two fresh key pairs; sends ``(c_u^PK, s_u^PK)``."""
        self._expect("advertise_keys")
        self._c_sk, _ = crypto.new_private_key()
        self._s_sk, self._s_sk_raw = crypto.new_private_key()
        self._c_pk = crypto.public_bytes(self._c_sk)
        self._s_pk = crypto.public_bytes(self._s_sk)
        self.stage = "share_keys"
        return AdvertiseKeys(self.session, self.round_index, self.client_id,
                             self._c_pk, self._s_pk).to_bytes()

    def share_keys(self, directory: bytes) -> bytes:
        """Round 1: share ``s_u^SK`` and ``b_u`` among the neighbours, encrypted to each."""
        self._expect("share_keys")
        d = KeyDirectory.from_bytes(directory)
        self._check_header(d)
        ids = [int(i) for i in d.ids]
        if len(set(ids)) != len(ids):
            raise MessageRejected(f"client {self.client_id}: key directory lists a client twice")
        if self.client_id not in ids:
            raise MessageRejected(f"client {self.client_id}: key directory does not list this client")
        me = ids.index(self.client_id)
        c_pks = [d.enc_publics[32 * i : 32 * i + 32] for i in range(len(ids))]
        s_pks = [d.mask_publics[32 * i : 32 * i + 32] for i in range(len(ids))]
        if c_pks[me] != self._c_pk or s_pks[me] != self._s_pk:
            raise MessageRejected(f"client {self.client_id}: key directory shows other keys for this client")
        if len(set(c_pks + s_pks)) != 2 * len(ids):
            raise MessageRejected(f"client {self.client_id}: key directory repeats a public key")
        t = d.threshold
        if not 1 <= t <= len(ids):
            raise ProtocolAbort(
                f"client {self.client_id}: {len(ids)} share holders (neighbours + itself), "
                f"threshold {t}; need at least t holders"
            )
        self._threshold = t
        self._peers = {v: (c_pks[i], s_pks[i]) for i, v in enumerate(ids) if v != self.client_id}
        self._b = os.urandom(SEED_BYTES)
        secret = np.concatenate([shamir.secret_to_elements(self._s_sk_raw),
                                 shamir.secret_to_elements(self._b)])
        shares = shamir.split(secret, threshold=t, points=np.asarray(ids, dtype=np.int64) + 1)
        recipients: list[int] = []
        cts: list[bytes] = []
        for i, v in enumerate(ids):
            if v == self.client_id:
                self._held[v] = shares[i]
                continue
            key = crypto.derive_key(
                crypto.agree(self._c_sk, crypto.load_public(c_pks[i])), purpose=_PURPOSE_ENC,
                session=self.session, round_index=self.round_index,
                party_a=self.client_id, party_b=v,
            )
            self._enc_keys[v] = key
            plaintext = pack_share_plaintext(self.client_id, v, shares[i, :KEY_SHARE_ELEMENTS],
                                             shares[i, KEY_SHARE_ELEMENTS:])
            cts.append(crypto.seal(key, plaintext,
                                   associated_data=self._ad(sender=self.client_id, recipient=v)))
            recipients.append(v)
        self.stage = "masked_input"
        return ShareKeys(self.session, self.round_index, self.client_id,
                         np.asarray(recipients, dtype=np.uint32), b"".join(cts)).to_bytes()

    def masked_input(self, delivery: bytes, encoded: np.ndarray) -> bytes:
        """Round 2: decrypt the received shares, then send the double-masked input.

        ``encoded`` is the client's input in ``Z_{2^b}`` (length ``self.length``).
        """
        self._expect("masked_input")
        m = ShareDelivery.from_bytes(delivery)
        self._check_header(m)
        senders = [int(v) for v in m.senders]
        seen: set[int] = set()
        for i, v in enumerate(senders):
            if v in seen:
                raise MessageRejected(
                    f"client {self.client_id}: second share ciphertext from client {v} (replay)"
                )
            seen.add(v)
            if v not in self._peers:
                raise MessageRejected(f"client {self.client_id}: share from client {v}, not a neighbour")
            plaintext = crypto.open_sealed(
                self._enc_keys[v], m.ciphertext(i),
                associated_data=self._ad(sender=v, recipient=self.client_id),
                what=f"client {self.client_id}: share ciphertext from client {v}",
            )
            src, dst, key_share, seed_share = unpack_share_plaintext(plaintext)
            if src != v or dst != self.client_id:
                raise MessageRejected(
                    f"client {self.client_id}: share names sender {src} and recipient {dst}, "
                    f"expected {v} and {self.client_id}"
                )
            self._held[v] = np.concatenate([key_share, seed_share])
        if len(senders) + 1 < self._threshold:
            raise ProtocolAbort(
                f"client {self.client_id}: {len(senders) + 1} share holders left after share_keys, "
                f"threshold {self._threshold}"
            )
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
            s_uv = crypto.derive_key(
                crypto.agree(self._s_sk, crypto.load_public(self._peers[v][1])),
                purpose=_PURPOSE_MASK, session=self.session, round_index=self.round_index,
                party_a=self.client_id, party_b=v,
            )
            expander.add_into(acc, s_uv, sign=+1 if self.client_id < v else -1)
        if self.bits < _word_bits(self.bits):
            acc &= work.type((1 << self.bits) - 1)
        self._partners = set(senders)
        self.stage = "unmask"
        return MaskedInput(self.session, self.round_index, self.client_id,
                           acc.astype(wire_dtype(self.bits))).to_bytes()

    def unmask(self, request: bytes) -> bytes:
        """Round 4: reveal seed shares of survivors and key shares of dropped neighbours."""
        self._expect("unmask")
        r = UnmaskRequest.from_bytes(request)
        self._check_header(r)
        alive = [int(v) for v in r.survivors]
        dead = [int(v) for v in r.dropped]
        if len(set(alive)) != len(alive) or len(set(dead)) != len(dead):
            raise MessageRejected(f"client {self.client_id}: unmask request lists a client twice")
        both = set(alive) & set(dead)
        if both:
            raise MessageRejected(
                f"client {self.client_id}: asked for both the seed and the key shares of {sorted(both)}"
            )
        if r.num_survivors < self._threshold:
            raise ProtocolAbort(
                f"client {self.client_id}: server reports {r.num_survivors} survivors, threshold "
                f"{self._threshold}"
            )
        if self.client_id not in alive:
            raise MessageRejected(f"client {self.client_id}: unmask request does not list this client as alive")
        unknown = [v for v in alive if v not in self._held] + [
            v for v in dead if v not in self._partners]
        if unknown:
            raise MessageRejected(
                f"client {self.client_id}: asked for shares of clients it holds none of: {unknown[:10]}"
            )
        self.stage = "done"  # one answer per round, whatever happens next
        seed = np.array([self._held[v][KEY_SHARE_ELEMENTS:] for v in alive], dtype=np.uint32)
        keys = np.array([self._held[v][:KEY_SHARE_ELEMENTS] for v in dead], dtype=np.uint32)
        return UnmaskResponse(
            self.session, self.round_index, self.client_id,
            np.asarray(alive, dtype=np.uint32), seed.reshape(len(alive), -1),
            np.asarray(dead, dtype=np.uint32), keys.reshape(len(dead), KEY_SHARE_ELEMENTS),
        ).to_bytes()

    # ------------------------------------------------------------- state between messages
    def export_state(self) -> bytes:
        """This client's whole state (private keys, held shares) as bytes, so that a node that
        runs each protocol message in a fresh process can keep it between messages.

        The blob is secret: it must stay in the node's own storage and never be sent.
        """
        fields: dict[str, Any] = {
            "client_id": self.client_id, "session": self.session,
            "round_index": self.round_index, "bits": self.bits, "length": self.length,
            "stage": self.stage, "threshold": int(self._threshold),
        }
        if hasattr(self, "_c_sk"):
            fields["c_sk"] = self._c_sk.private_bytes_raw()
            fields["s_sk"] = self._s_sk_raw
        if hasattr(self, "_b"):
            fields["b"] = self._b
        held = sorted(self._held)
        fields["held_ids"] = np.asarray(held, dtype=np.int64)
        if held:
            fields["held"] = np.stack([np.asarray(self._held[v]) for v in held])
        enc = sorted(self._enc_keys)
        fields["enc_ids"] = np.asarray(enc, dtype=np.int64)
        fields["enc_keys"] = b"".join(self._enc_keys[v] for v in enc)
        peers = sorted(self._peers)
        fields["peer_ids"] = np.asarray(peers, dtype=np.int64)
        fields["peer_keys"] = b"".join(self._peers[v][0] + self._peers[v][1] for v in peers)
        fields["partners"] = np.asarray(sorted(self._partners), dtype=np.int64)
        return pack(fields)

    @classmethod
    def restore_state(cls, blob: bytes) -> SecAggClient:
        """Inverse of :meth:`export_state`."""
        f = unpack(blob)
        client = cls(int(f["client_id"]), session=f["session"],
                     round_index=int(f["round_index"]), bits=int(f["bits"]),
                     length=int(f["length"]))
        client.stage = str(f["stage"])
        client._threshold = int(f["threshold"])
        if "c_sk" in f:
            client._c_sk = crypto.private_from_bytes(f["c_sk"])
            client._s_sk_raw = f["s_sk"]
            client._s_sk = crypto.private_from_bytes(f["s_sk"])
            client._c_pk = crypto.public_bytes(client._c_sk)
            client._s_pk = crypto.public_bytes(client._s_sk)
        if "b" in f:
            client._b = f["b"]
        held_ids = [int(v) for v in f["held_ids"]]
        client._held = {v: f["held"][i].copy() for i, v in enumerate(held_ids)}
        enc_ids = [int(v) for v in f["enc_ids"]]
        n_enc = len(f["enc_keys"]) // max(len(enc_ids), 1)
        client._enc_keys = {v: f["enc_keys"][i * n_enc:(i + 1) * n_enc]
                            for i, v in enumerate(enc_ids)}
        peer_ids = [int(v) for v in f["peer_ids"]]
        raw = f["peer_keys"]
        client._peers = {v: (raw[64 * i:64 * i + 32], raw[64 * i + 32:64 * i + 64])
                         for i, v in enumerate(peer_ids)}
        client._partners = {int(v) for v in f["partners"]}
        return client


class SecAggServer:
    """The server's side: collects each stage's messages, closes the stage, and finally
    removes the masks.  It never holds a client's private key or unmasked input; it learns
    ``b_u`` of survivors and ``s_v^SK`` of clients that dropped after sharing, as the
    protocol intends.
    """

    def __init__(self, client_ids: Sequence[int], *, round_index: int, threshold: int,
                 bits: int, length: int, graph: Mapping[int, frozenset[int]] | None = None,
                 session: bytes | None = None) -> None:
        ids = _check_ids(client_ids)
        if not 1 <= threshold <= max(len(ids), 1):
            raise ConfigurationError(f"threshold must be in [1, {len(ids)}], got {threshold}")
        self.client_ids = tuple(ids)
        self.graph = dict(graph) if graph is not None else complete_graph(ids)
        missing = set(ids) - set(self.graph)
        if missing:
            raise ConfigurationError(f"graph has no neighbour list for clients {sorted(missing)[:10]}")
        self.threshold = threshold
        self.bits = bits
        self.length = length
        self.round_index = round_index
        self.session = session if session is not None else crypto.new_session_id()
        self.stage = "advertise_keys"
        self._adv: dict[int, AdvertiseKeys] = {}
        self._s_pub: dict[int, object] = {}
        self._directory_ids: dict[int, set[int]] = {}
        self._shares: dict[int, ShareKeys] = {}
        self._masked: set[int] = set()
        self._sum = np.zeros(length, dtype=uint_dtype(bits))
        self._requests: dict[int, UnmaskRequest] = {}
        self._responses: dict[int, UnmaskResponse] = {}
        self.u1: tuple[int, ...] = ()
        self.u2: tuple[int, ...] = ()
        self.u3: tuple[int, ...] = ()
        self.u5: tuple[int, ...] = ()
        self._pools: dict[str, frozenset[int]] = {"advertise_keys": frozenset(ids)}

    # ---------------------------------------------------------------- receiving
    _KINDS = {"advertise_keys": AdvertiseKeys, "share_keys": ShareKeys,
              "masked_input": MaskedInput, "unmask": UnmaskResponse}

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
        self._s_pub[sender] = crypto.load_public(msg.mask_public)
        crypto.load_public(msg.enc_public)
        self._adv[sender] = msg

    def _receive_share_keys(self, sender: int, msg: ShareKeys) -> None:
        self._eligible(sender, self._shares)
        expected = self._directory_ids[sender] - {sender}
        got = [int(v) for v in msg.recipients]
        if len(set(got)) != len(got) or set(got) != expected:
            raise MessageRejected(
                f"client {sender} addressed shares to {len(got)} clients, expected its "
                f"{len(expected)} neighbours in the key directory"
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

    def _receive_unmask(self, sender: int, msg: UnmaskResponse) -> None:
        self._eligible(sender, self._responses)
        req = self._requests[sender]
        if not (np.array_equal(msg.seed_ids, req.survivors) and np.array_equal(msg.key_ids, req.dropped)):
            raise MessageRejected(f"client {sender} answered for other clients than the server asked")
        self._responses[sender] = msg

    # ---------------------------------------------------------------- closing stages
    def _need(self, count: int, what: str) -> None:
        if count < self.threshold:
            raise ProtocolAbort(
                f"only {count} clients {what}, below the threshold t = {self.threshold}; round aborted"
            )

    def _holders(self, u: int, pool: set[int]) -> int:
        return len(self.graph[u] & pool) + (1 if u in pool else 0)

    def close_advertise_keys(self) -> dict[int, bytes]:
        """End round 0; returns the key directory (bytes) for each client of ``U1``."""
        self._expect_stage("advertise_keys")
        self.u1 = tuple(sorted(self._adv))
        self._need(len(self.u1), "advertised keys")
        pool = set(self.u1)
        keys = [k for a in self._adv.values() for k in (a.enc_public, a.mask_public)]
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
            self._directory_ids[u] = set(ids)
            out[u] = KeyDirectory(
                self.session, self.round_index, u, self.threshold, np.asarray(ids, dtype=np.uint32),
                b"".join(self._adv[v].enc_public for v in ids),
                b"".join(self._adv[v].mask_public for v in ids),
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
        inbox: dict[int, tuple[list[int], list[bytes]]] = {v: ([], []) for v in self.u2}
        for u in self.u2:
            msg = self._shares[u]
            for i, v in enumerate(msg.recipients.tolist()):
                if v in inbox:
                    inbox[v][0].append(u)
                    inbox[v][1].append(msg.ciphertext(i))
        out = {
            v: ShareDelivery(self.session, self.round_index, v, np.asarray(src, dtype=np.uint32),
                             b"".join(cts)).to_bytes()
            for v, (src, cts) in inbox.items()
        }
        self.stage = "masked_input"
        self._pools[self.stage] = frozenset(self.u2)
        return out

    def close_masked_input(self) -> dict[int, bytes]:
        """End round 2; returns each survivor's unmask request (bytes)."""
        self._expect_stage("masked_input")
        self.u3 = tuple(sorted(self._masked))
        self._need(len(self.u3), "sent masked inputs")
        alive = set(self.u3)
        dropped = set(self.u2) - alive
        out = {}
        for u in self.u3:
            nb = self.graph[u]
            req = UnmaskRequest(
                self.session, self.round_index, u, len(self.u3),
                np.asarray(sorted((nb & alive) | {u}), dtype=np.uint32),
                np.asarray(sorted(nb & dropped), dtype=np.uint32),
            )
            self._requests[u] = req
            out[u] = req.to_bytes()
        self.stage = "unmask"
        self._pools[self.stage] = frozenset(self.u3)
        return out

    def _expect_stage(self, stage: str) -> None:
        if self.stage != stage:
            raise ProtocolAbort(f"server is at stage {self.stage!r}, cannot close stage {stage!r}")

    def finish(self) -> np.ndarray:
        """End round 4: rebuild the secrets, remove all masks, return ``sum_{U3} x_u mod 2^b``."""
        self._expect_stage("unmask")
        self.u5 = tuple(sorted(self._responses))
        self._need(len(self.u5), "answered the unmask stage")
        alive = list(self.u3)
        dropped = sorted(set(self.u2) - set(self.u3))
        seeds = self._rebuild("seed", alive, SEED_BYTES)
        keys = self._rebuild("key", dropped, 32)
        work = self._sum.dtype
        acc = self._sum.copy()
        expander = crypto.MaskExpander(self.length, work)
        for u, b in zip(alive, seeds, strict=True):
            key = crypto.derive_key(b, purpose=_PURPOSE_SELF, session=self.session,
                                    round_index=self.round_index, party_a=u, party_b=u)
            expander.add_into(acc, key, sign=-1)
        alive_set = set(alive)
        for v, raw in zip(dropped, keys, strict=True):
            priv = crypto.private_from_bytes(raw)
            if crypto.public_bytes(priv) != self._adv[v].mask_public:
                raise ProtocolAbort(
                    f"the key rebuilt for dropped client {v} does not match its advertised public "
                    "key: a share was corrupted; round aborted"
                )
            for u in sorted(self.graph[v] & alive_set):
                s_uv = crypto.derive_key(crypto.agree(priv, self._s_pub[u]), purpose=_PURPOSE_MASK,
                                         session=self.session, round_index=self.round_index,
                                         party_a=u, party_b=v)
                # client u added Delta_uv * PRG(s_uv); remove it
                expander.add_into(acc, s_uv, sign=-1 if u < v else +1)
        if self.bits < 8 * work.itemsize:
            acc &= work.type((1 << self.bits) - 1)
        self.stage = "done"
        return acc

    def _rebuild(self, kind: str, targets: Sequence[int], nbytes: int) -> list[bytes]:
        """Shamir-reconstruct the seed (or key) of every target from ``t`` responders each."""
        if not targets:
            return []
        t = self.threshold
        tg, rs, sh = [], [], []
        for r in self.u5:
            resp = self._responses[r]
            ids, shares = (resp.seed_ids, resp.seed_shares) if kind == "seed" else (resp.key_ids, resp.key_shares)
            tg.append(ids.astype(np.int64))
            rs.append(np.full(ids.size, r, dtype=np.int64))
            sh.append(shares.astype(np.int64))
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
                what = "self-mask seed" if kind == "seed" else "mask key"
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
            return [shamir.elements_to_secret(s, nbytes) for s in secret]
        except InvalidDataError as exc:
            raise ProtocolAbort(f"reconstruction of a {kind} failed: {exc}; round aborted") from exc


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
) -> RoundOutcome:
    """Run one complete protocol round in process, message by message, as bytes.

    ``inputs(cid)`` is called at client ``cid`` during the masked-input stage (so its cost is
    client time) and must return the encoded input in ``Z_{2^b}``.  ``alive(cid, stage)``
    says whether ``cid`` still sends its message of ``stage``; a client that stops sending
    receives nothing afterwards.
    """
    ids = _check_ids(client_ids)
    alive = alive or (lambda cid, stage: True)
    server = SecAggServer(ids, round_index=round_index, threshold=threshold, bits=bits,
                          length=length, graph=graph)
    clients = {cid: SecAggClient(cid, session=server.session, round_index=round_index,
                                 bits=bits, length=length) for cid in ids}
    up = dict.fromkeys(ids, 0)
    down = dict.fromkeys(ids, 0)
    ctime = dict.fromkeys(ids, 0.0)
    cstage = dict.fromkeys(STAGES, 0.0)
    sstage = dict.fromkeys(STAGES, 0.0)
    ccpu = dict.fromkeys(ids, 0.0)
    scpu = dict.fromkeys(STAGES, 0.0)
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

    for cid in ids:
        if alive(cid, "advertise_keys"):
            deliver("advertise_keys", cid, client_call("advertise_keys", cid, clients[cid].advertise_keys))
    directories = close("advertise_keys", server.close_advertise_keys)
    for cid, blob in directories.items():
        if alive(cid, "share_keys"):
            deliver("share_keys", cid, client_call("share_keys", cid, clients[cid].share_keys, blob))
    deliveries = close("share_keys", server.close_share_keys)
    for cid, blob in deliveries.items():
        if alive(cid, "masked_input"):
            def masked(c: int = cid, b: bytes = blob) -> bytes:
                return clients[c].masked_input(b, inputs(c))
            deliver("masked_input", cid, client_call("masked_input", cid, masked))
    requests = close("masked_input", server.close_masked_input)
    for cid, blob in requests.items():
        if alive(cid, "unmask"):
            deliver("unmask", cid, client_call("unmask", cid, clients[cid].unmask, blob))
    t0, c0 = time.perf_counter(), time.process_time()
    total = server.finish()
    sstage["unmask"] += time.perf_counter() - t0
    scpu["unmask"] += time.process_time() - c0
    return RoundOutcome(
        total=total, advertised=server.u1, shared=server.u2, survivors=server.u3,
        unmasked=server.u5, threshold=threshold, bytes_up=up, bytes_down=down,
        client_seconds=ctime, client_stage_seconds=cstage, server_stage_seconds=sstage,
        client_cpu_seconds=ccpu, server_cpu_stage_seconds=scpu,
        received=tuple(received),
    )


def _observable(msg: object) -> dict[str, object]:
    """What the server sees of a message (it is all ciphertext, public keys, masked data
    or revealed shares; never a plaintext input)."""
    if isinstance(msg, AdvertiseKeys):
        return {"enc_public": msg.enc_public, "mask_public": msg.mask_public}
    if isinstance(msg, ShareKeys):
        return {"recipients": msg.recipients, "ciphertexts": msg.ciphertexts}
    if isinstance(msg, MaskedInput):
        return {"masked": msg.masked}
    if isinstance(msg, UnmaskResponse):
        return {"seed_ids": msg.seed_ids, "seed_shares": msg.seed_shares,
                "key_ids": msg.key_ids, "key_shares": msg.key_shares}
    raise TypeError(type(msg).__name__)
