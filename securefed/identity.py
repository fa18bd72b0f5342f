"""Long-term identity keys of the hospitals and the roster that pins them.

Why: a server that deviates from a protocol can substitute the keys one hospital sees for
another's, or claim that hospitals said what they did not.  Against that every hospital
holds a long-term key pair made once, out of band, and every party pins the *roster*: the
list of every hospital's public keys, distributed over a channel the hospitals already trust
(the way the consortium exchanges contracts, not through the server).

Each hospital has two key pairs, both made by ``cryptography`` (OpenSSL), both drawn from the OS
CSPRNG:

* an **Ed25519 signing key** (RFC 8032), for messages that must convince several parties at
  once (the signed key advertisements and the consistency round of secure aggregation,
  after Bonawitz et al., CCS 2017, Fig. 4; the signed CKKS uploads the key authority
  checks).  Signatures are checked with libsodium (PyNaCl's binding of
  ``crypto_sign_open``): the same RFC 8032 scheme and keys, about twice as fast per check
  as OpenSSL's on the development machine (``python benchmarks/secagg_bench.py
  --sections A`` prints both); secure aggregation's clients check ``t`` of them per round,
  before they unmask;
* an **X25519 agreement key** (RFC 7748): with the peer's pinned key it gives a static
  pairwise secret ``K_uv`` that only ``u`` and ``v`` can compute.  Secure aggregation binds
  each round's ephemeral share-channel key to it, so a substituted ephemeral key yields
  ciphertexts that fail authentication (see :mod:`securefed.secagg.protocol`).  ``K_uv``
  is computed once per pair and kept in memory, so it costs one X25519 per peer per
  deployment, not per round.

Files (``securefed keys identity --hospitals a,b,c --out DIR``):

* ``DIR/roster.json``: public keys of every hospital, hex-encoded, readable by anyone; its
  SHA-256 fingerprint (printed by the command) is what hospitals compare out of band;
* ``DIR/<name>.identity``: one hospital's two private keys, mode 0600; it goes to that
  hospital only.

Threat model: the roster is trusted (pinned out of band); the server, the network and
other hospitals are not.  A hospital whose identity file leaks can be impersonated until a
new roster is distributed.

>>> keys, roster = generate_identities(["north", "south"])
>>> sig = keys["north"].sign(b"message")
>>> roster.verify(0, b"message", sig, what="test")
>>> roster.name_of(1)
'south'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from securefed.errors import ConfigurationError, KeyMaterialError, MessageRejected

__all__ = [
    "write_private_file",
    "IdentityKey",
    "RosterEntry",
    "Roster",
    "generate_identities",
    "write_identity_files",
    "SIGNATURE_BYTES",
]

SIGNATURE_BYTES = 64
_KEY_BYTES = 32
_ROSTER_KIND = "securefed-roster"
_SECRET_KIND = "securefed-identity"
_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"hospital name must be 1-64 characters of letters, digits, '_', '.' or '-' "
            f"starting with a letter or digit, got {name!r}")
    return name


def _hex_key(value: Any, what: str) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError as exc:
        raise KeyMaterialError(f"{what}: not a hex string ({exc})") from exc
    if len(raw) != _KEY_BYTES:
        raise KeyMaterialError(f"{what}: {len(raw)} bytes, expected {_KEY_BYTES}")
    return raw


@dataclass(frozen=True)
class RosterEntry:
    """One hospital's public identity: its name, client id and two public keys (raw bytes)."""

    name: str
    client_id: int
    signing_key: bytes  # Ed25519 public key, 32 bytes
    agreement_key: bytes  # X25519 public key, 32 bytes


class Roster:
    """The pinned list of hospitals and their public keys.

    Signature checks go through :meth:`verify`, which raises
    :class:`~securefed.errors.MessageRejected` naming the signer and the message; public
    key objects are loaded once per hospital.
    """

    def __init__(self, entries: Iterable[RosterEntry]) -> None:
        self._by_id: dict[int, RosterEntry] = {}
        names: set[str] = set()
        keys: set[bytes] = set()
        for e in entries:
            _check_name(e.name)
            if not isinstance(e.client_id, int) or e.client_id < 0:
                raise KeyMaterialError(f"roster: client id must be an integer >= 0, got {e.client_id!r}")
            if e.client_id in self._by_id:
                raise KeyMaterialError(f"roster lists client id {e.client_id} twice")
            if e.name in names:
                raise KeyMaterialError(f"roster lists hospital {e.name!r} twice")
            for k in (e.signing_key, e.agreement_key):
                if len(k) != _KEY_BYTES:
                    raise KeyMaterialError(f"roster: key of {e.name!r} has {len(k)} bytes, expected 32")
                if k in keys:
                    raise KeyMaterialError(f"roster: hospital {e.name!r} reuses a public key")
                keys.add(k)
            names.add(e.name)
            self._by_id[e.client_id] = e
        if not self._by_id:
            raise KeyMaterialError("a roster needs at least one hospital, got none")
        self._agree_keys: dict[int, X25519PublicKey] = {}

    # -------------------------------------------------------------- lookup
    @property
    def client_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._by_id))

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def entry(self, client_id: int) -> RosterEntry:
        try:
            return self._by_id[int(client_id)]
        except KeyError:
            raise MessageRejected(
                f"client {client_id} is not in the pinned roster (hospitals {list(self.client_ids)[:20]})"
            ) from None

    def name_of(self, client_id: int) -> str:
        return self.entry(client_id).name

    def agreement_public(self, client_id: int) -> X25519PublicKey:
        key = self._agree_keys.get(client_id)
        if key is None:
            key = X25519PublicKey.from_public_bytes(self.entry(client_id).agreement_key)
            self._agree_keys[client_id] = key
        return key

    def verify(self, client_id: int, message: bytes, signature: bytes, *, what: str) -> None:
        """Check ``signature`` by ``client_id`` over ``message``; raise ``MessageRejected``.

        libsodium's Ed25519 verification (RFC 8032; it also refuses non-canonical and
        small-order encodings)."""
        key = self.entry(client_id).signing_key
        if len(signature) != SIGNATURE_BYTES:
            raise MessageRejected(
                f"{what}: signature of client {client_id} has {len(signature)} bytes, expected 64")
        try:
            crypto_sign_open(signature + message, key)
        except BadSignatureError:
            raise MessageRejected(
                f"{what}: signature of client {client_id} does not verify under its pinned key"
            ) from None

    # -------------------------------------------------------------- files
    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON form: what hospitals compare out of band."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        rows = [{"name": e.name, "client_id": e.client_id, "signing_key": e.signing_key.hex(),
                 "agreement_key": e.agreement_key.hex()}
                for e in (self._by_id[c] for c in self.client_ids)]
        return json.dumps({"kind": _ROSTER_KIND, "version": _VERSION, "hospitals": rows},
                          indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, what: str = "roster") -> Roster:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyMaterialError(f"{what}: not JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("kind") != _ROSTER_KIND:
            raise KeyMaterialError(f"{what}: not a securefed roster (kind {_ROSTER_KIND!r} expected)")
        if data.get("version") != _VERSION:
            raise KeyMaterialError(f"{what}: roster version {data.get('version')!r}, expected {_VERSION}")
        rows = data.get("hospitals")
        if not isinstance(rows, list):
            raise KeyMaterialError(f"{what}: 'hospitals' must be a list")
        entries = []
        for i, row in enumerate(rows):
            try:
                entries.append(RosterEntry(
                    name=str(row["name"]), client_id=int(row["client_id"]),
                    signing_key=_hex_key(row["signing_key"], f"{what}: hospital {i} signing key"),
                    agreement_key=_hex_key(row["agreement_key"], f"{what}: hospital {i} agreement key"),
                ))
            except (KeyError, TypeError, ValueError) as exc:
                raise KeyMaterialError(f"{what}: malformed hospital entry {i}: {exc!r}") from exc
        return cls(entries)

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p.write_text(self.to_json(), encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Roster:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyMaterialError(f"cannot read roster {p}: {exc}") from exc
        return cls.from_json(text, what=str(p))

    def __repr__(self) -> str:
        return f"Roster({len(self)} hospitals, fingerprint {self.fingerprint()[:16]})"


def write_private_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write secret key material readable by its owner only.

    The bytes go to a new file beside ``path``, created exclusively with mode 0600 (never a
    file or symbolic link that existed, whatever its mode), flushed to disk, then renamed
    over ``path`` and the folder synced: a reader sees the old file or the new one, never a
    torn one, and a rename replaces a symbolic link at ``path`` instead of following it (one
    planted by another local user who can write into the folder would otherwise receive the
    key).  The owner's own account, and root, are trusted: they can read the file anyway.
    Every private key file the project writes (identities, CKKS secret contexts, node and
    TLS keys) goes through here, and so do the deployment's checkpoints."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return p


@dataclass
class IdentityKey:
    """One hospital's private identity: an Ed25519 signing key and an X25519 agreement key.

    :meth:`pairwise_secret` caches ``K_uv`` per peer, so a long-lived object pays one X25519
    per peer for the whole deployment.  The object is secret: never send it or log it.
    """

    name: str
    client_id: int
    _signing: Ed25519PrivateKey = field(repr=False)
    _agreement: X25519PrivateKey = field(repr=False)
    _pairwise: dict[tuple[int, bytes], bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls, name: str, client_id: int) -> IdentityKey:
        """Fresh keys from the OS CSPRNG (``os.urandom``), never from a simulation seed."""
        return cls(_check_name(name), int(client_id),
                   Ed25519PrivateKey.from_private_bytes(os.urandom(_KEY_BYTES)),
                   X25519PrivateKey.from_private_bytes(os.urandom(_KEY_BYTES)))

    def entry(self) -> RosterEntry:
        """The public half, as the roster lists it."""
        return RosterEntry(self.name, self.client_id,
                           self._signing.public_key().public_bytes_raw(),
                           self._agreement.public_key().public_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    def pairwise_secret(self, peer: int, roster: Roster) -> bytes:
        """``K_uv = X25519(own agreement key, peer's pinned agreement key)``, cached."""
        key = (int(peer), roster.entry(peer).agreement_key)
        out = self._pairwise.get(key)
        if out is None:
            try:
                out = self._agreement.exchange(roster.agreement_public(peer))
            except ValueError as exc:
                raise KeyMaterialError(f"X25519 with the pinned key of client {peer} failed: {exc}") from exc
            self._pairwise[key] = out
        return out

    def check_in(self, roster: Roster) -> None:
        """Refuse a roster that does not list this hospital with exactly these keys."""
        if self.client_id not in roster or roster.entry(self.client_id) != self.entry():
            raise KeyMaterialError(
                f"the pinned roster does not list hospital {self.name!r} (client {self.client_id}) "
                "with this identity's public keys: wrong roster or wrong identity file")

    # -------------------------------------------------------------- files
    def to_bytes(self) -> bytes:
        return json.dumps({
            "kind": _SECRET_KIND, "version": _VERSION, "name": self.name,
            "client_id": self.client_id,
            "signing_private": self._signing.private_bytes_raw().hex(),
            "agreement_private": self._agreement.private_bytes_raw().hex(),
        }).encode("utf-8")

    @classmethod
    def from_bytes(cls, blob: bytes, *, what: str = "identity") -> IdentityKey:
        try:
            data = json.loads(blob.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyMaterialError(f"{what}: not a securefed identity file ({exc})") from exc
        if not isinstance(data, dict) or data.get("kind") != _SECRET_KIND:
            raise KeyMaterialError(f"{what}: not a securefed identity file (kind {_SECRET_KIND!r} expected)")
        if data.get("version") != _VERSION:
            raise KeyMaterialError(f"{what}: identity version {data.get('version')!r}, expected {_VERSION}")
        try:
            return cls(_check_name(str(data["name"])), int(data["client_id"]),
                       Ed25519PrivateKey.from_private_bytes(
                           _hex_key(data["signing_private"], f"{what}: signing key")),
                       X25519PrivateKey.from_private_bytes(
                           _hex_key(data["agreement_private"], f"{what}: agreement key")))
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyMaterialError(f"{what}: malformed identity file: {exc!r}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the private keys, readable by the owner only (mode 0600)."""
        return write_private_file(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IdentityKey:
        p = Path(path)
        try:
            blob = p.read_bytes()
        except OSError as exc:
            raise KeyMaterialError(f"cannot read identity file {p}: {exc}") from exc
        return cls.from_bytes(blob, what=str(p))


def generate_identities(
    hospitals: Sequence[str] | Mapping[str, int] | Iterable[int],
) -> tuple[dict[Any, IdentityKey], Roster]:
    """Fresh identities for ``hospitals`` and the roster of their public keys.

    ``hospitals`` is a list of names (client ids 0, 1, ... in that order), a mapping
    name -> client id, or client ids (named ``client-<id>``).  Returns the private keys by
    name (or by id for ids) and the roster.
    """
    items: list[tuple[Any, str, int]] = []
    if isinstance(hospitals, Mapping):
        items = [(n, str(n), int(c)) for n, c in hospitals.items()]
    else:
        for i, h in enumerate(hospitals):
            if isinstance(h, str):
                items.append((h, h, i))
            else:
                items.append((int(h), f"client-{int(h)}", int(h)))
    if not items:
        raise ConfigurationError("at least one hospital is needed, got none")
    keys = {k: IdentityKey.generate(name, cid) for k, name, cid in items}
    return keys, Roster(k.entry() for k in keys.values())


def write_identity_files(hospitals: Sequence[str], out_dir: str | os.PathLike[str]
                         ) -> tuple[Path, dict[str, Path]]:
    """Generate identities for ``hospitals`` (client ids in list order) and write
    ``roster.json`` plus one ``<name>.identity`` (mode 0600) per hospital into ``out_dir``.

    Refuses to overwrite existing identity files (a silently replaced key would lock the
    hospital out of every pinned roster).
    """
    names = [_check_name(h.strip()) for h in hospitals]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"hospital names must be distinct, got {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = [str(out / f"{n}.identity") for n in names if (out / f"{n}.identity").exists()]
    if existing or (out / "roster.json").exists():
        raise ConfigurationError(
            f"refusing to overwrite existing key files in {out}: "
            f"{existing + ([str(out / 'roster.json')] if (out / 'roster.json').exists() else [])}")
    keys, roster = generate_identities(names)
    paths = {n: keys[n].save(out / f"{n}.identity") for n in names}
    return roster.save(out / "roster.json"), paths
