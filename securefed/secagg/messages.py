"""Typed protocol messages and their byte encoding (via :mod:`securefed.wire`).

Every message names its kind, the session, the round and the party it comes from (client
uploads) or goes to (server downloads).  Parsing checks the kind first, so a message of the
wrong stage is refused before anything else is read, and then every field's type, shape and
size.  Sizes, with ``m`` peers and ``D`` coordinates (``b = 32``):

=====================  ==============================  =====================================
message                direction                       size (measured, b = 32)
=====================  ==============================  =====================================
AdvertiseKeys          client -> server                173 bytes
KeyDirectory           server -> client                68 m bytes + ~130
ShareKeys              client -> server                108 m bytes + ~100
ShareDelivery          server -> client                108 m bytes + ~100
MaskedInput            client -> server                4 D bytes + 96
UnmaskRequest          server -> client                4 m bytes + ~130
UnmaskResponse         client -> server                24 bytes per survivor, 44 per dropped
                                                       neighbour, + ~160
=====================  ==============================  =====================================
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from securefed.errors import InvalidDataError, MessageRejected
from securefed.secagg import shamir
from securefed.secagg.crypto import NONCE_BYTES, TAG_BYTES
from securefed.wire import pack, unpack

__all__ = [
    "KEY_SHARE_ELEMENTS",
    "SEED_SHARE_ELEMENTS",
    "SHARE_PLAINTEXT_BYTES",
    "SHARE_CIPHERTEXT_BYTES",
    "AdvertiseKeys",
    "KeyDirectory",
    "ShareKeys",
    "ShareDelivery",
    "MaskedInput",
    "UnmaskRequest",
    "UnmaskResponse",
    "pack_share_plaintext",
    "unpack_share_plaintext",
]

SEED_BYTES = 16
KEY_SHARE_ELEMENTS = shamir.elements_for(32)  # share of the X25519 mask private key
SEED_SHARE_ELEMENTS = shamir.elements_for(SEED_BYTES)  # share of the self-mask seed b_u
SHARE_PLAINTEXT_BYTES = 8 + 4 * (KEY_SHARE_ELEMENTS + SEED_SHARE_ELEMENTS)
SHARE_CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES


def _ids(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype != np.uint32:
        raise InvalidDataError(f"{what} must be a 1-D uint32 array, got {type(value).__name__}")
    return value


def _bytes(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidDataError(f"{what} must be bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise InvalidDataError(f"{what} must be {size} bytes, got {len(value)}")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int):
        raise InvalidDataError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def _matrix(value: Any, what: str, rows: int, cols: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.uint32 or value.shape != (rows, cols):
        shape = getattr(value, "shape", None)
        raise InvalidDataError(f"{what} must be a uint32 array of shape ({rows}, {cols}), got {shape}")
    if np.any(value >= shamir.PRIME):
        raise InvalidDataError(f"{what} holds values outside the field [0, {shamir.PRIME})")
    return value


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
    """Round 0 of Bonawitz et al. (Fig. 4): the client's two public keys (c_u^PK, s_u^PK)."""

    kind: ClassVar[str] = "advertise_keys"
    stage: ClassVar[str] = "advertise_keys"
    session: bytes
    round_index: int
    sender: int
    enc_public: bytes
    mask_public: bytes

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "c_pk": self.enc_public, "s_pk": self.mask_public}

    @classmethod
    def from_bytes(cls, blob: bytes) -> AdvertiseKeys:
        f = cls._open(blob)
        return cls(f["session"], f["round"], _int(f.get("sender"), "sender"),
                   _bytes(f.get("c_pk"), "c_pk", 32), _bytes(f.get("s_pk"), "s_pk", 32))


@dataclass(frozen=True)
class KeyDirectory(_Message):
    """Server broadcast after round 0: the keys of the recipient's neighbours (and its own)."""

    kind: ClassVar[str] = "key_directory"
    stage: ClassVar[str] = "advertise_keys"
    session: bytes
    round_index: int
    recipient: int
    threshold: int
    ids: np.ndarray  # uint32, includes the recipient
    enc_publics: bytes  # 32 bytes per id
    mask_publics: bytes

    def _fields(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "t": self.threshold, "ids": self.ids,
                "c_pks": self.enc_publics, "s_pks": self.mask_publics}

    @classmethod
    def from_bytes(cls, blob: bytes) -> KeyDirectory:
        f = cls._open(blob)
        ids = _ids(f.get("ids"), "ids")
        return cls(f["session"], f["round"], _int(f.get("recipient"), "recipient"),
                   _int(f.get("t"), "threshold"), ids,
                   _bytes(f.get("c_pks"), "c_pks", 32 * ids.size),
                   _bytes(f.get("s_pks"), "s_pks", 32 * ids.size))


@dataclass(frozen=True)
class ShareKeys(_Message):
    """Round 1: encrypted shares of (s_u^SK, b_u), one fixed-size ciphertext per recipient."""

    kind: ClassVar[str] = "share_keys"
    stage: ClassVar[str] = "share_keys"
    session: bytes
    round_index: int
    sender: int
    recipients: np.ndarray  # uint32
    ciphertexts: bytes  # SHARE_CIPHERTEXT_BYTES each, in the order of recipients

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "to": self.recipients, "ct": self.ciphertexts}

    def ciphertext(self, i: int) -> bytes:
        return self.ciphertexts[i * SHARE_CIPHERTEXT_BYTES : (i + 1) * SHARE_CIPHERTEXT_BYTES]

    @classmethod
    def from_bytes(cls, blob: bytes) -> ShareKeys:
        f = cls._open(blob)
        to = _ids(f.get("to"), "recipients")
        return cls(f["session"], f["round"], _int(f.get("sender"), "sender"), to,
                   _bytes(f.get("ct"), "ciphertexts", SHARE_CIPHERTEXT_BYTES * to.size))


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
        return self.ciphertexts[i * SHARE_CIPHERTEXT_BYTES : (i + 1) * SHARE_CIPHERTEXT_BYTES]

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
class UnmaskRequest(_Message):
    """Server message before round 4: whose seed shares (survivors) and whose key shares
    (dropped after sharing) the recipient should reveal; ``num_survivors`` is ``|U3|``."""

    kind: ClassVar[str] = "unmask_request"
    stage: ClassVar[str] = "masked_input"
    session: bytes
    round_index: int
    recipient: int
    num_survivors: int
    survivors: np.ndarray
    dropped: np.ndarray

    def _fields(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "n3": self.num_survivors,
                "alive": self.survivors, "dead": self.dropped}

    @classmethod
    def from_bytes(cls, blob: bytes) -> UnmaskRequest:
        f = cls._open(blob)
        return cls(f["session"], f["round"], _int(f.get("recipient"), "recipient"),
                   _int(f.get("n3"), "num_survivors"), _ids(f.get("alive"), "survivors"),
                   _ids(f.get("dead"), "dropped"))


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    """Round 4: shares of b_v for surviving v and of s_v^SK for dropped v, never both."""

    kind: ClassVar[str] = "unmask"
    stage: ClassVar[str] = "unmask"
    session: bytes
    round_index: int
    sender: int
    seed_ids: np.ndarray
    seed_shares: np.ndarray  # (len(seed_ids), SEED_SHARE_ELEMENTS) uint32
    key_ids: np.ndarray
    key_shares: np.ndarray  # (len(key_ids), KEY_SHARE_ELEMENTS) uint32

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "b_ids": self.seed_ids, "b_sh": self.seed_shares,
                "k_ids": self.key_ids, "k_sh": self.key_shares}

    @classmethod
    def from_bytes(cls, blob: bytes) -> UnmaskResponse:
        f = cls._open(blob)
        b_ids = _ids(f.get("b_ids"), "seed ids")
        k_ids = _ids(f.get("k_ids"), "key ids")
        return cls(f["session"], f["round"], _int(f.get("sender"), "sender"),
                   b_ids, _matrix(f.get("b_sh"), "seed shares", b_ids.size, SEED_SHARE_ELEMENTS),
                   k_ids, _matrix(f.get("k_sh"), "key shares", k_ids.size, KEY_SHARE_ELEMENTS))


def pack_share_plaintext(sender: int, recipient: int, key_share: np.ndarray,
                         seed_share: np.ndarray) -> bytes:
    """``sender | recipient | share of s_u^SK | share of b_u`` (the plaintext of Fig. 4 round 1)."""
    return (struct.pack("<II", sender, recipient)
            + np.asarray(key_share, dtype="<u4").tobytes()
            + np.asarray(seed_share, dtype="<u4").tobytes())


def unpack_share_plaintext(raw: bytes) -> tuple[int, int, np.ndarray, np.ndarray]:
    if len(raw) != SHARE_PLAINTEXT_BYTES:
        raise MessageRejected(f"share plaintext of {len(raw)} bytes, expected {SHARE_PLAINTEXT_BYTES}")
    sender, recipient = struct.unpack_from("<II", raw, 0)
    words = np.frombuffer(raw, dtype="<u4", offset=8).astype(np.int64)
    if np.any(words >= shamir.PRIME):
        raise MessageRejected("share plaintext holds values outside the field")
    return sender, recipient, words[:KEY_SHARE_ELEMENTS], words[KEY_SHARE_ELEMENTS:]
