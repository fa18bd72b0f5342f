"""Cryptographic building blocks of the masking protocol, all from ``cryptography`` (OpenSSL).

* **Key agreement**: X25519 (RFC 7748).  Private keys are 32 bytes from ``os.urandom``.
* **Key derivation**: HKDF-SHA256 (RFC 5869).  The salt is the 16-byte session identifier
  and the ``info`` string separates domains: a fixed protocol label, the purpose
  (``mask`` for pairwise masks, ``share-encryption`` for the share channel, ``self-mask``
  for the self mask), the round index and the (ordered) pair of client ids.  One
  Diffie-Hellman secret therefore never yields the same key for two purposes, rounds,
  sessions or pairs.
* **Share encryption**: AES-128-GCM.  The key of a pair is derived for one session, round
  and pair and encrypts exactly one message in each direction, so the nonce is implicit
  (11 zero bytes and the direction bit; :func:`seal_once`).  The associated data binds
  session, round, stage, sender, recipient and a digest of both parties' advertisements,
  so a ciphertext that is replayed into another round/stage, re-addressed, or computed
  under keys other than the advertised ones fails authentication.  In malicious mode the
  key material also includes the static pairwise secret of the two hospitals' pinned
  identity keys (:mod:`securefed.identity`), so a server that substitutes an advertised
  key cannot read or forge a share ciphertext.
* **Mask expansion** (the PRG of Bonawitz et al.): AES-128 in counter mode keyed by
  the 128-bit derived key, starting from counter 0, read as little-endian unsigned integers.
  A derived key is used for exactly one expansion, so the fixed initial counter never
  repeats a keystream.  Because ``2^b`` divides ``2^32`` (or ``2^64``), reading whole words
  and reducing modulo ``2^b`` gives uniform elements of ``Z_{2^b}``.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefed.errors import KeyMaterialError, MessageRejected

__all__ = [
    "PROTOCOL_LABEL",
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "new_session_id",
    "new_private_key",
    "private_from_bytes",
    "public_bytes",
    "load_public",
    "agree",
    "derive_key",
    "share_associated_data",
    "seal",
    "open_sealed",
    "seal_once",
    "open_once",
    "MaskExpander",
    "raw_keystream",
]

PROTOCOL_LABEL = b"securefed/secagg/v1"
KEY_BYTES = 16  # AES-128 keys for masks and for the share channel
NONCE_BYTES = 12
TAG_BYTES = 16
SESSION_BYTES = 16
_ZERO_COUNTER = bytes(16)


def new_session_id() -> bytes:
    """A fresh random 16-byte session identifier (public; used as HKDF salt and in AD)."""
    return os.urandom(SESSION_BYTES)


def new_private_key() -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 private key from the OS CSPRNG, with its 32 raw bytes."""
    raw = os.urandom(32)
    return X25519PrivateKey.from_private_bytes(raw), raw


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    if len(raw) != 32:
        raise KeyMaterialError(f"X25519 private key must be 32 bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def load_public(raw: bytes) -> X25519PublicKey:
    if len(raw) != 32:
        raise KeyMaterialError(f"X25519 public key must be 32 bytes, got {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def agree(private: X25519PrivateKey, peer: X25519PublicKey) -> bytes:
    """Raw X25519 shared secret; refuses low-order peer keys (all-zero output)."""
    try:
        return private.exchange(peer)
    except ValueError as exc:  # OpenSSL refuses an all-zero shared secret
        raise KeyMaterialError(f"X25519 key agreement failed (low-order public key?): {exc}") from exc


def derive_key(
    secret: bytes,
    *,
    purpose: bytes,
    session: bytes,
    round_index: int,
    party_a: int,
    party_b: int,
    length: int = KEY_BYTES,
) -> bytes:
    """HKDF-SHA256 with salt = session id and info = label | purpose | round | ordered pair.

    The pair is put in increasing order, so both ends of a pair derive the same key.
    """
    lo, hi = (party_a, party_b) if party_a <= party_b else (party_b, party_a)
    info = PROTOCOL_LABEL + b"|" + purpose + b"|" + struct.pack("<QQQ", round_index, lo, hi)
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=session, info=info).derive(secret)


def share_associated_data(
    *, session: bytes, round_index: int, stage: str, sender: int, recipient: int,
    adverts: bytes = b"",
) -> bytes:
    """AES-GCM associated data binding a share ciphertext to its context.

    ``adverts`` is a digest of the two parties' advertised keys as the caller sees them: if
    the server showed either party other keys, the two ends compute different associated
    data and the ciphertext fails authentication.
    """
    return (
        PROTOCOL_LABEL
        + b"|share|"
        + session
        + struct.pack("<QQQ", round_index, sender, recipient)
        + stage.encode("ascii")
        + adverts
    )


def seal(key: bytes, plaintext: bytes, *, associated_data: bytes) -> bytes:
    """``nonce || AES-GCM(key, nonce, plaintext, associated_data)`` with a random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, blob: bytes, *, associated_data: bytes, what: str) -> bytes:
    """Decrypt a :func:`seal` output; a tampered, replayed or misaddressed blob is rejected."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise MessageRejected(f"{what}: ciphertext of {len(blob)} bytes is too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
    except InvalidTag as exc:
        raise MessageRejected(
            f"{what}: authentication failed (tampered, replayed from another round/stage, "
            "or addressed to another client)"
        ) from exc


def _direction_nonce(sender: int, recipient: int) -> bytes:
    return bytes(NONCE_BYTES - 1) + (b"\x00" if sender < recipient else b"\x01")


def seal_once(key: bytes, plaintext: bytes, *, associated_data: bytes, sender: int,
              recipient: int) -> bytes:
    """AES-GCM under a key used for one message per direction: the nonce is the direction,
    so it is not sent (``len(out) = len(plaintext) + 16``)."""
    return AESGCM(key).encrypt(_direction_nonce(sender, recipient), plaintext, associated_data)


def open_once(key: bytes, blob: bytes, *, associated_data: bytes, sender: int, recipient: int,
              what: str) -> bytes:
    """Decrypt a :func:`seal_once` output; a tampered, replayed, misaddressed or re-keyed
    blob is rejected with :class:`MessageRejected`."""
    if len(blob) < TAG_BYTES:
        raise MessageRejected(f"{what}: ciphertext of {len(blob)} bytes is too short")
    try:
        return AESGCM(key).decrypt(_direction_nonce(sender, recipient), blob, associated_data)
    except InvalidTag as exc:
        raise MessageRejected(
            f"{what}: authentication failed (tampered, replayed from another round/stage, "
            "addressed to another client, or encrypted under keys other than the advertised "
            "ones)"
        ) from exc


def raw_keystream(key: bytes, nbytes: int) -> bytes:
    """The plain AES-128-CTR keystream (the benchmark's reference throughput)."""
    enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_COUNTER)).encryptor()
    return enc.update(bytes(nbytes))


class MaskExpander:
    """Expands 128-bit keys into mask vectors of ``length`` words of ``dtype``.

    Holds one zero buffer and one output buffer, so an expansion is a single
    ``update_into`` call plus a zero-copy numpy view.  The view returned by :meth:`expand`
    is overwritten by the next call.
    """

    def __init__(self, length: int, dtype: np.dtype) -> None:
        self.length = int(length)
        self.dtype = np.dtype(dtype)
        nbytes = self.length * self.dtype.itemsize
        self._zeros = bytes(nbytes)
        self._buf = bytearray(nbytes + 15)  # update_into needs block_size - 1 bytes of room
        self._view = np.frombuffer(self._buf, dtype=self.dtype, count=self.length)

    def expand(self, key: bytes) -> np.ndarray:
        """The mask for ``key`` (a view into an internal buffer)."""
        if len(key) != KEY_BYTES:
            raise KeyMaterialError(f"mask key must be {KEY_BYTES} bytes, got {len(key)}")
        enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_COUNTER)).encryptor()
        enc.update_into(self._zeros, self._buf)
        return self._view

    def add_into(self, acc: np.ndarray, key: bytes, *, sign: int) -> None:
        """``acc += sign * PRG(key)`` modulo the word size (``sign`` is +1 or -1)."""
        mask = self.expand(key)
        if sign > 0:
            np.add(acc, mask, out=acc)
        else:
            np.subtract(acc, mask, out=acc)
