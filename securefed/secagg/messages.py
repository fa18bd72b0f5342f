"""Typed protocol messages and their byte encoding (via :mod:`securefed.wire`).

Every message names its kind, the session, the round and the party it comes from (client
uploads) or goes to (server downloads).  Parsing checks the kind first, so a message of the
wrong stage is refused before anything else is read, and then every field's type, shape and
size.  Sizes, with ``m`` peers, ``u`` survivors and ``D`` coordinates (``b = 32``), measured
with ``len(msg.to_bytes())``:

======================  ==========================  ==========================================
message                 direction                   size
======================  ==========================  ==========================================
AdvertiseKeys           client -> server            ~220 bytes (signature included)
KeyDirectory            server -> client            100 m bytes + ~150
ShareKeys               client -> server            56 m bytes + ~70
ShareDelivery           server -> client            60 m bytes + ~100
MaskedInput             client -> server            4 D bytes + ~70
ConsistencyRequest      server -> client            4 u bytes + ~100 (malicious mode)
ConsistencySignature    client -> server            ~140 bytes (malicious mode)
UnmaskRequest           server -> client            4 u bytes (+ 68 t with signatures) + ~130
UnmaskResponse          client -> server            20 bytes per neighbour + ~110
======================  ==========================  ==========================================

What keeps the client's upload small (the cost goal is at most 1.1 times the raw float32
vector at ``n = 500``, ``d = 100,000``): a share ciphertext is the 10 field elements of the
two 16-byte seeds plus the AES-GCM tag (56 bytes: the key is used for one message in each
direction, so the nonce is implicit); recipients and the ids an unmask response answers for
are implied by the key directory and the agreed survivor set, so they are not sent.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from securefed.errors import InvalidDataError, MessageRejected
from securefed.secagg import shamir
from securefed.secagg.crypto import PROTOCOL_LABEL, TAG_BYTES
from securefed.wire import pack, unpack

__all__ = [
    "SEED_BYTES",
    "SEED_SHARE_ELEMENTS",
    "SHARE_PLAINTEXT_BYTES",
    "SHARE_CIPHERTEXT_BYTES",
    "SIGNATURE_BYTES",
    "DIGEST_BYTES",
    "AdvertiseKeys",
    "KeyDirectory",
    "ShareKeys",
    "ShareDelivery",
    "MaskedInput",
    "ConsistencyRequest",
    "ConsistencySignature",
    "UnmaskRequest",
    "UnmaskResponse",
    "pack_share_plaintext",
    "pack_share_plaintexts",
    "unpack_share_plaintexts",
    "advert_bytes",
    "consistency_bytes",
    "survivors_digest",
    "commitment",
]

SEED_BYTES = 16
SEED_SHARE_ELEMENTS = shamir.elements_for(SEED_BYTES)  # 5 limbs of 30 bits
SHARE_PLAINTEXT_BYTES = 4 * 2 * SEED_SHARE_ELEMENTS  # shares of the mask-key seed and of b_u
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + TAG_BYTES
SIGNATURE_BYTES = 64
DIGEST_BYTES = 32
NO_MODEL = bytes(DIGEST_BYTES)  # model digest when no model is bound to the round


def _ids(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype != np.uint32:
        raise InvalidDataError(f"{what} must be a 1-D uint32 array, got {type(value).__name__}")
    return value


def _bytes(value: Any, what: str, size: int | None = None, *, allow_empty: bool = False) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidDataError(f"{what} must be bytes, got {type(value).__name__}")
    if size is not None and len(value) != size and not (allow_empty and not value):
        raise InvalidDataError(f"{what} must be {size} bytes, got {len(value)}")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int):
        raise InvalidDataError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def _matrix(value: Any, what: str, cols: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.uint32 or value.ndim != 2 \
            or value.shape[1] != cols:
        shape = getattr(value, "shape", None)
        raise InvalidDataError(f"{what} must be a uint32 array of shape (rows, {cols}), got {shape}")
    if np.any(value >= shamir.PRIME):
        raise InvalidDataError(f"{what} holds values outside the field [0, {shamir.PRIME})")
    return value


# ---------------------------------------------------------------------------- signed bytes
def advert_bytes(session: bytes, round_index: int, sender: int, enc_public: bytes,
                 mask_public: bytes, commit: bytes) -> bytes:
    """What a client signs in ``advertise_keys`` (Bonawitz et al., Fig. 4, round 0)."""
    return (PROTOCOL_LABEL + b"|advertise|" + session + struct.pack("<QQ", round_index, sender)
            + enc_public + mask_public + commit)


def survivors_digest(survivors: np.ndarray) -> bytes:
    """SHA-256 of the survivor ids (sorted uint32, little-endian)."""
    return hashlib.sha256(np.asarray(survivors, dtype="<u4").tobytes()).digest()


def consistency_bytes(session: bytes, round_index: int, survivors: np.ndarray,
                      model_digest: bytes) -> bytes:
    """What a survivor signs in the consistency round (Bonawitz et al., Fig. 4, round 3):
    the session, the round, the survivor set and the digest of the model it trained on."""
    return (PROTOCOL_LABEL + b"|consistency|" + session + struct.pack("<Q", round_index)
            + survivors_digest(survivors) + model_digest)


def commitment(session: bytes, round_index: int, sender: int, seed: bytes) -> bytes:
    """Hash commitment to the self-mask seed ``b_u`` (a uniform 128-bit value, so the hash
    hides it), opened when the server rebuilds the seed from its shares."""
    return hashlib.sha256(PROTOCOL_LABEL + b"|self-mask-commitment|" + session
                          + struct.pack("<QQ", round_index, sender) + seed).digest()


class _Message:
    kind: ClassVar[str]
    stage: ClassVar[str]

    def _fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        head = {"kind": self.kind, "session": self.session, "round": self.round_index}  # type: ignore[attr-defined]
        return pack({**head, **self._fields()})

    @classmethod
    def _open(cls, blob: bytes) -> dict[str, Any]:
        fields = unpack(blob)
        kind = fields.get("kind")
        if kind != cls.kind:
            raise MessageRejected(f"received a {kind!r} message, expected {cls.kind!r} (stage {cls.stage!r})")
        _bytes(fields.get("session"), "session", 16)
        _int(fields.get("round"), "round")
        return fields


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """Round 0: the client's public keys ``(c_u^PK, s_u^PK)`` (``c_u^PK`` empty in malicious
    mode, where the mask key also keys the share channel), its commitment to ``b_u`` and, in
    malicious mode, its Ed25519 signature over them (empty otherwise)."""

    kind: ClassVar[str] = "advertise_keys"
    stage: ClassVar[str] = "advertise_keys"
    session: bytes
    round_index: int
    sender: int
    enc_public: bytes
    mask_public: bytes
    commit: bytes
    signature: bytes

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "c_pk": self.enc_public, "s_pk": self.mask_public,
                "com": self.commit, "sig": self.signature}

    def signed_bytes(self) -> bytes:
        return advert_bytes(self.session, self.round_index, self.sender, self.enc_public,
                            self.mask_public, self.commit)

    @classmethod
    def from_bytes(cls, blob: bytes) -> AdvertiseKeys:
        f = cls._open(blob)
        return cls(f["session"], f["round"], _int(f.get("sender"), "sender"),
                   _bytes(f.get("c_pk"), "c_pk", 32, allow_empty=True), _bytes(f.get("s_pk"), "s_pk", 32),
                   _bytes(f.get("com"), "commitment", DIGEST_BYTES),
                   _bytes(f.get("sig"), "signature", SIGNATURE_BYTES, allow_empty=True))


@dataclass(frozen=True)
class KeyDirectory(_Message):
    """Server broadcast after round 0: the advertisements of the recipient's neighbours and its
    own (ids sorted), and the threshold ``t``."""

    kind: ClassVar[str] = "key_directory"
    stage: ClassVar[str] = "advertise_keys"
    session: bytes
    round_index: int
    recipient: int
    threshold: int
    ids: np.ndarray  # uint32, includes the recipient
    enc_publics: bytes  # 32 bytes per id (honest-but-curious mode), empty in malicious mode
    mask_publics: bytes
    commits: bytes

    def _fields(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "t": self.threshold, "ids": self.ids,
                "c_pks": self.enc_publics, "s_pks": self.mask_publics, "coms": self.commits}

    def entry(self, i: int) -> tuple[bytes, bytes, bytes]:
        """``(c_pk, s_pk, commitment)`` of the ``i``-th listed client."""
        c = self.enc_publics[32 * i: 32 * i + 32] if self.enc_publics else b""
        return (c, self.mask_publics[32 * i: 32 * i + 32],
                self.commits[32 * i: 32 * i + 32])

    @classmethod
    def from_bytes(cls, blob: bytes) -> KeyDirectory:
        f = cls._open(blob)
        ids = _ids(f.get("ids"), "ids")
        return cls(f["session"], f["round"], _int(f.get("recipient"), "recipient"),
                   _int(f.get("t"), "threshold"), ids,
                   _bytes(f.get("c_pks"), "c_pks", 32 * ids.size, allow_empty=True),
                   _bytes(f.get("s_pks"), "s_pks", 32 * ids.size),
                   _bytes(f.get("coms"), "commitments", 32 * ids.size))


@dataclass(frozen=True)
class ShareKeys(_Message):
    """Round 1: encrypted shares, one fixed-size ciphertext per other client of the sender's
    key directory, in its order."""

    kind: ClassVar[str] = "share_keys"
    stage: ClassVar[str] = "share_keys"
    session: bytes
    round_index: int
    sender: int
    ciphertexts: bytes

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "ct": self.ciphertexts}

    @property
    def count(self) -> int:
        return len(self.ciphertexts) // SHARE_CIPHERTEXT_BYTES

    def ciphertext(self, i: int) -> bytes:
        return self.ciphertexts[i * SHARE_CIPHERTEXT_BYTES: (i + 1) * SHARE_CIPHERTEXT_BYTES]

    @classmethod
    def from_bytes(cls, blob: bytes) -> ShareKeys:
        f = cls._open(blob)
        ct = _bytes(f.get("ct"), "ciphertexts")
        if len(ct) % SHARE_CIPHERTEXT_BYTES:
            raise InvalidDataError(
                f"ciphertexts must be a multiple of {SHARE_CIPHERTEXT_BYTES} bytes, got {len(ct)}")
        return cls(f["session"], f["round"], _int(f.get("sender"), "sender"), ct)


@dataclass(frozen=True)
class ShareDelivery(_Message):
    """Server forward after round 1: the ciphertexts addressed to ``recipient``."""

    kind: ClassVar[str] = "share_delivery"
    stage: ClassVar[str] = "share_keys"
    session: bytes
    round_index: int
    recipient: int
    senders: np.ndarray
    ciphertexts: bytes

    def _fields(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "from": self.senders, "ct": self.ciphertexts}

    def ciphertext(self, i: int) -> bytes:
        return self.ciphertexts[i * SHARE_CIPHERTEXT_BYTES: (i + 1) * SHARE_CIPHERTEXT_BYTES]

    @classmethod
    def from_bytes(cls, blob: bytes) -> ShareDelivery:
        f = cls._open(blob)
        frm = _ids(f.get("from"), "senders")
        return cls(f["session"], f["round"], _int(f.get("recipient"), "recipient"), frm,
                   _bytes(f.get("ct"), "ciphertexts", SHARE_CIPHERTEXT_BYTES * frm.size))


@dataclass(frozen=True)
class MaskedInput(_Message):
    """Round 2: ``y_u = x_u + PRG(b_u) + sum_v Delta_uv PRG(s_uv) mod 2^b``."""

    kind: ClassVar[str] = "masked_input"
    stage: ClassVar[str] = "masked_input"
    session: bytes
    round_index: int
    sender: int
    masked: np.ndarray  # smallest unsigned dtype holding b bits

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "y": self.masked}

    @classmethod
    def from_bytes(cls, blob: bytes) -> MaskedInput:
        f = cls._open(blob)
        y = f.get("y")
        if not isinstance(y, np.ndarray) or y.ndim != 1 or y.dtype.kind != "u":
            raise InvalidDataError(f"masked vector must be a 1-D unsigned array, got {type(y).__name__}")
        return cls(f["session"], f["round"], _int(f.get("sender"), "sender"), y)


@dataclass(frozen=True)
class ConsistencyRequest(_Message):
    """Server message after round 2 (malicious mode): the survivor set ``U3`` to sign."""

    kind: ClassVar[str] = "consistency_request"
    stage: ClassVar[str] = "masked_input"
    session: bytes
    round_index: int
    recipient: int
    survivors: np.ndarray

    def _fields(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "alive": self.survivors}

    @classmethod
    def from_bytes(cls, blob: bytes) -> ConsistencyRequest:
        f = cls._open(blob)
        return cls(f["session"], f["round"], _int(f.get("recipient"), "recipient"),
                   _ids(f.get("alive"), "survivors"))


@dataclass(frozen=True)
class ConsistencySignature(_Message):
    """Round 3 (malicious mode): the survivor's signature over (session, round, ``U3``,
    model digest)."""

    kind: ClassVar[str] = "consistency"
    stage: ClassVar[str] = "consistency"
    session: bytes
    round_index: int
    sender: int
    signature: bytes

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "sig": self.signature}

    @classmethod
    def from_bytes(cls, blob: bytes) -> ConsistencySignature:
        f = cls._open(blob)
        return cls(f["session"], f["round"], _int(f.get("sender"), "sender"),
                   _bytes(f.get("sig"), "signature", SIGNATURE_BYTES))


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Server message before round 4: the survivor set ``U3`` and, in malicious mode, ``t``
    signatures over it (signer ids and 64-byte signatures)."""

    kind: ClassVar[str] = "unmask_request"
    stage: ClassVar[str] = "consistency"
    session: bytes
    round_index: int
    recipient: int
    survivors: np.ndarray
    signers: np.ndarray
    signatures: bytes

    def _fields(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "alive": self.survivors, "signers": self.signers,
                "sigs": self.signatures}

    def signature(self, i: int) -> bytes:
        return self.signatures[SIGNATURE_BYTES * i: SIGNATURE_BYTES * (i + 1)]

    @classmethod
    def from_bytes(cls, blob: bytes) -> UnmaskRequest:
        f = cls._open(blob)
        signers = _ids(f.get("signers"), "signers")
        return cls(f["session"], f["round"], _int(f.get("recipient"), "recipient"),
                   _ids(f.get("alive"), "survivors"), signers,
                   _bytes(f.get("sigs"), "signatures", SIGNATURE_BYTES * signers.size))


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    """Round 4: shares of ``b_v`` for each surviving ``v`` whose shares the sender holds and of
    the mask-key seed of each partner that dropped, never both for one ``v``; the order is
    the sorted ids, which both sides derive from ``U3`` (so no ids travel)."""

    kind: ClassVar[str] = "unmask"
    stage: ClassVar[str] = "unmask"
    session: bytes
    round_index: int
    sender: int
    seed_shares: np.ndarray  # (survivors held, SEED_SHARE_ELEMENTS) uint32
    key_shares: np.ndarray  # (dropped partners, SEED_SHARE_ELEMENTS) uint32

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "b_sh": self.seed_shares, "k_sh": self.key_shares}

    @classmethod
    def from_bytes(cls, blob: bytes) -> UnmaskResponse:
        f = cls._open(blob)
        return cls(f["session"], f["round"], _int(f.get("sender"), "sender"),
                   _matrix(f.get("b_sh"), "seed shares", SEED_SHARE_ELEMENTS),
                   _matrix(f.get("k_sh"), "key shares", SEED_SHARE_ELEMENTS))


def pack_share_plaintext(key_share: np.ndarray, seed_share: np.ndarray) -> bytes:
    """``share of the mask-key seed | share of b_u`` (the plaintext of Fig. 4, round 1; the
    sender and recipient are bound by the ciphertext's associated data instead)."""
    return pack_share_plaintexts(np.concatenate([key_share, seed_share])[None, :])[0]


def pack_share_plaintexts(shares: np.ndarray) -> list[bytes]:
    """:func:`pack_share_plaintext` of every row of a ``(count, 2 * SEED_SHARE_ELEMENTS)``
    array whose rows are (key-seed share, ``b_u`` share), as :func:`shamir.split` returns them."""
    rows = np.asarray(shares)
    if rows.ndim != 2 or rows.shape[1] != 2 * SEED_SHARE_ELEMENTS:
        raise InvalidDataError(f"shares must have shape (count, {2 * SEED_SHARE_ELEMENTS}), "
                               f"got {rows.shape}")
    return [row.tobytes() for row in rows.astype("<u4")]


def unpack_share_plaintexts(raw: bytes) -> np.ndarray:
    """Inverse of :func:`pack_share_plaintext` for several plaintexts laid end to end: an
    ``(count, 2 * SEED_SHARE_ELEMENTS)`` int64 array, one row per plaintext (the key-seed
    share, then the ``b_u`` share)."""
    if len(raw) % SHARE_PLAINTEXT_BYTES:
        raise MessageRejected(
            f"share plaintexts of {len(raw)} bytes, expected a multiple of {SHARE_PLAINTEXT_BYTES}")
    words = np.frombuffer(raw, dtype="<u4").astype(np.int64).reshape(-1, 2 * SEED_SHARE_ELEMENTS)
    if np.any(words >= shamir.PRIME):
        raise MessageRejected("share plaintext holds values outside the field")
    return words
