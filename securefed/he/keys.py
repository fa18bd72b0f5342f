"""CKKS key material: parameters, the secret key holder, the server's public-only context.

Who holds what
--------------
* The **key authority**, a party separate from the hospitals and from the server (see
  ``docs/ckks.md`` for why this role rather than threshold decryption), generates one CKKS
  key pair with :meth:`CKKSKeyHolder.generate` and keeps the secret context
  (:meth:`CKKSKeyHolder.save` / :meth:`CKKSKeyHolder.load`) to itself; it decrypts only
  what :class:`~securefed.he.authority.CKKSKeyAuthority` lets through.
* The **hospitals** and the **server** receive only :meth:`CKKSKeyHolder.public_context`:
  the parameters, the public key, and the evaluation keys (relinearisation, and rotation
  keys when training needs them).  Hospitals encrypt with it; the server computes on
  ciphertexts.  :class:`CKKSPublicContext` refuses any context that carries a secret key
  (:class:`~securefed.errors.KeyMaterialError`), so neither can be handed one by mistake,
  whether as an object or as a file.

The CLI step ``securefed keys ckks --out DIR`` writes both files.

Parameters and security
-----------------------
The homomorphic-encryption security standard (Albrecht et al., "Homomorphic Encryption
Security Standard", HomomorphicEncryption.org, 2018, Table 1, classical 128-bit security,
uniform ternary secret, error standard deviation 3.2) bounds the total bit length of the
coefficient modulus ``log2(Q)`` for each ring dimension ``N``:

====== =====
N      log2 Q
====== =====
1024   27
2048   54
4096   109
8192   218
16384  438
32768  881
====== =====

:class:`CKKSParameters` refuses any set above that bound.  Microsoft SEAL (which TenSEAL
wraps) enforces the same table at 128 bits.

The two presets:

* :meth:`CKKSParameters.aggregation` -- ``N = 4096``, moduli ``(50, 59)`` bits (109 bits,
  the maximum for ``N = 4096``), scale ``2^30``.  Secure aggregation only adds ciphertexts,
  which needs **no multiplicative depth**: one data prime is enough, so a ciphertext is two
  polynomials modulo one 50-bit prime, about ``2 * 4096 * 50 / 8 = 51 KB`` after SEAL's
  compression, carrying ``N/2 = 2048`` parameters: about 25 bytes per parameter (a float32
  costs 4).  The 59-bit prime is SEAL's "special" prime, used only for key switching, never
  carried by a ciphertext.  The scale ``2^30`` leaves ``50 - 30 - 1 = 19`` bits of headroom:
  any aggregate of absolute value below ``2^19 = 524288`` decodes correctly; larger ones
  are refused before encryption.  A smaller ring (``N = 2048``, 54 bits) cannot hold a
  data prime and a special prime large enough for this precision, and TenSEAL requires both.
* :meth:`CKKSParameters.training` -- ``N = 8192``, moduli ``(40, 30, 30, 30, 30, 58)``
  (218 bits, the maximum for ``N = 8192``), scale ``2^30``: four rescaling levels, the depth
  of one epoch of encrypted logistic regression with a degree-3 sigmoid
  (:mod:`securefed.he.encrypted_lr`).  The special prime (58 bits) is well above every data
  prime so that rotations (key switching) add little noise.

Errors
------
:meth:`CKKSParameters.fresh_error_bound` gives the high-probability bound on the error of
one fresh public-key encryption in the canonical embedding, ``B_clean = 8 sqrt(2) sigma N +
6 sigma sqrt(N) + 16 sigma sqrt(h N)`` (Cheon, Kim, Kim and Song, "Homomorphic Encryption
for Arithmetic of Approximate Numbers", ASIACRYPT 2017, Lemma 1), with ``sigma = 3.2`` and
``h = 2N/3`` (SEAL's uniform ternary secret).  Divided by the scale it bounds the error of
each decrypted slot; a sum of ``k`` fresh ciphertexts is within ``k`` times that.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from tenseal import sealapi as seal  # also registers SEAL's types (e.g. Modulus) with Python

from securefed.errors import ConfigurationError, InvalidDataError, KeyMaterialError
from securefed.identity import write_private_file
from securefed.wire import pack, unpack

__all__ = [
    "HE_STANDARD_128",
    "CKKSParameters",
    "CKKSKeyHolder",
    "CKKSPublicContext",
    "save_public_context",
    "load_public_context",
]

#: Maximum ``log2(Q)`` per ring dimension for 128-bit classical security
#: (HE standard 2018, Table 1, ternary secret, sigma = 3.2).
HE_STANDARD_128: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

_ERROR_SIGMA = 3.2
_PUBLIC_KIND = "securefed-ckks-public"
_SECRET_KIND = "securefed-ckks-secret"
_FORMAT_VERSION = 1
_TMP_BASE = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclass(frozen=True)
class CKKSParameters:
    """A CKKS parameter set: ring dimension, coefficient-modulus primes and scale.

    ``coeff_mod_bit_sizes`` lists the bit sizes of the RNS primes: the first is the data
    prime left after every rescaling, the last is SEAL's special prime (key switching only),
    the ones in between are consumed one per multiplication (the multiplicative depth).

    >>> p = CKKSParameters.aggregation()
    >>> (p.slots, p.depth, p.total_bits, p.max_abs_value)
    (2048, 0, 109, 524288.0)
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(int(b) for b in self.coeff_mod_bit_sizes))
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_128:
            raise ConfigurationError(
                f"poly_modulus_degree must be one of {sorted(HE_STANDARD_128)}, got {n!r}"
            )
        bits = self.coeff_mod_bit_sizes
        if len(bits) < 2:
            raise ConfigurationError(
                f"coeff_mod_bit_sizes needs at least a data prime and a special prime, got {bits}"
            )
        if any(not 17 <= b <= 60 for b in bits):
            raise ConfigurationError(f"every prime must have 17..60 bits (SEAL), got {bits}")
        if sum(bits) > HE_STANDARD_128[n]:
            raise ConfigurationError(
                f"coefficient modulus of {sum(bits)} bits exceeds the 128-bit security bound "
                f"{HE_STANDARD_128[n]} bits for N = {n} (HE standard 2018, Table 1)"
            )
        if not 10 <= self.scale_bits < bits[0]:
            raise ConfigurationError(
                f"scale_bits must be in [10, {bits[0]}) (below the first prime), got {self.scale_bits}"
            )
        if any(b < self.scale_bits for b in bits[1:-1]):
            raise ConfigurationError(
                f"rescaling primes {bits[1:-1]} must have at least scale_bits={self.scale_bits} bits"
            )

    # -------------------------------------------------------------- presets
    @classmethod
    def aggregation(cls) -> CKKSParameters:
        """Depth 0, ``N = 4096``: for summing updates (see the module docstring)."""
        return cls(poly_modulus_degree=4096, coeff_mod_bit_sizes=(50, 59), scale_bits=30)

    @classmethod
    def training(cls) -> CKKSParameters:
        """Depth 4, ``N = 8192``: for one epoch of encrypted logistic regression."""
        return cls(poly_modulus_degree=8192, coeff_mod_bit_sizes=(40, 30, 30, 30, 30, 58),
                   scale_bits=30)

    # -------------------------------------------------------------- derived
    @property
    def slots(self) -> int:
        """Real values per ciphertext (``N / 2``)."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Number of rescalings (multiplications) a fresh ciphertext supports."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        return int(sum(self.coeff_mod_bit_sizes))

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def max_abs_value(self) -> float:
        """Largest absolute value that decodes correctly at the last level: ``2^(q0 - scale - 1)``."""
        return float(2 ** (self.coeff_mod_bit_sizes[0] - self.scale_bits - 1))

    def fresh_error_bound(self) -> float:
        """High-probability bound on one slot's error after one fresh encryption, in value units.

        ``B_clean / scale`` with ``B_clean`` from Cheon et al. 2017, Lemma 1.

        >>> round(CKKSParameters.aggregation().fresh_error_bound(), 6)
        0.000299
        """
        n = self.poly_modulus_degree
        h = 2 * n / 3
        s = _ERROR_SIGMA
        b_clean = 8 * math.sqrt(2) * s * n + 6 * s * math.sqrt(n) + 16 * s * math.sqrt(h * n)
        return b_clean / self.scale

    def to_dict(self) -> dict[str, Any]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CKKSParameters:
        try:
            return cls(poly_modulus_degree=int(d["poly_modulus_degree"]),
                       coeff_mod_bit_sizes=tuple(d["coeff_mod_bit_sizes"]),
                       scale_bits=int(d["scale_bits"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyMaterialError(f"malformed CKKS parameter record {d!r}: {exc}") from exc


# ---------------------------------------------------------------------------- helpers
def _public_key_id(ctx: ts.Context) -> bytes:
    """A 16-byte identifier of the key pair: SHA-256 of the serialised public key."""
    blob = ctx.serialize(save_public_key=True, save_secret_key=False,
                         save_galois_keys=False, save_relin_keys=False)
    return hashlib.sha256(blob).digest()[:16]


def _seal_to_bytes(obj: Any) -> bytes:
    """SEAL's own (compressed) serialisation of a key object, through a private temp file."""
    with tempfile.TemporaryDirectory(prefix="securefed-ckks-", dir=_TMP_BASE) as tmp:
        path = os.path.join(tmp, "obj")
        obj.save(path)
        return Path(path).read_bytes()


def _rotation_keys_from_bytes(ctx: ts.Context, blob: bytes, *, what: str) -> Any:
    keys = seal.GaloisKeys()
    with tempfile.TemporaryDirectory(prefix="securefed-ckks-", dir=_TMP_BASE) as tmp:
        path = os.path.join(tmp, "obj")
        Path(path).write_bytes(blob)
        try:
            keys.load(ctx.seal_context().data, path)
        except (RuntimeError, ValueError) as exc:
            raise KeyMaterialError(f"{what}: rotation keys cannot be read ({exc})") from exc
    return keys


def _make_rotation_keys(ctx: ts.Context, slots: int) -> bytes:
    """Rotation (Galois) keys for the steps 1, 2, 4, ..., slots/2 only.

    A left rotation by ``k`` slots is the Galois automorphism ``X -> X^(3^k mod 2N)``;
    rotate-and-add over all slots needs only these ``log2(slots)`` keys, half of what a
    default key set (both directions) holds.
    """
    two_n = 4 * slots  # 2N, the order of the Galois group
    elts = []
    step = 1
    while step < slots:
        elts.append(pow(3, step, two_n))
        step *= 2
    keys = seal.GaloisKeys()
    seal.KeyGenerator(ctx.seal_context().data, ctx.secret_key().data).create_galois_keys(elts, keys)
    return _seal_to_bytes(keys)


def _load_context(blob: bytes, *, what: str) -> ts.Context:
    try:
        return ts.context_from(blob, n_threads=1)
    except (ValueError, RuntimeError) as exc:
        raise KeyMaterialError(f"{what}: not a valid serialised TenSEAL context ({exc})") from exc


def _params_of(ctx: ts.Context, scale_bits: int) -> CKKSParameters:
    data = ctx.seal_context().data.key_context_data().parms()
    n = int(data.poly_modulus_degree())
    bits = tuple(int(q.bit_count()) for q in data.coeff_modulus())
    return CKKSParameters(poly_modulus_degree=n, coeff_mod_bit_sizes=bits, scale_bits=scale_bits)


def _read_record(path: str | os.PathLike[str], *, kind: str) -> dict[str, Any]:
    raw = Path(path).read_bytes()
    try:
        rec = unpack(raw)
    except InvalidDataError as exc:
        raise KeyMaterialError(f"{path}: not a securefed key file ({exc})") from exc
    got = rec.get("kind")
    if got != kind:
        if got == _SECRET_KIND and kind == _PUBLIC_KIND:
            raise KeyMaterialError(
                f"{path} holds a SECRET CKKS context; the server accepts only a public one "
                f"(kind {_PUBLIC_KIND!r})"
            )
        raise KeyMaterialError(f"{path}: key file of kind {got!r}, expected {kind!r}")
    if rec.get("version") != _FORMAT_VERSION:
        raise KeyMaterialError(
            f"{path}: key file version {rec.get('version')!r}, expected {_FORMAT_VERSION}"
        )
    for field in ("params", "key_id", "context"):
        if field not in rec:
            raise KeyMaterialError(f"{path}: key file lacks field {field!r}")
    return rec


# ---------------------------------------------------------------------------- public side
class CKKSPublicContext:
    """What the server holds: parameters, public and evaluation keys, never the secret key.

    It can deserialise ciphertexts and compute on them (add; multiply and rotate when the
    evaluation keys are present) but cannot decrypt.  Construction from a context that has a
    secret key raises :class:`KeyMaterialError`.
    """

    def __init__(self, context: ts.Context, *, parameters: CKKSParameters, key_id: bytes,
                 rotation_keys: bytes = b"") -> None:
        if context.has_secret_key() or context.is_private():
            raise KeyMaterialError(
                "refusing a CKKS context that holds a secret key on the public (server) side; "
                "pass CKKSKeyHolder.public_context() instead"
            )
        if not context.has_public_key():
            raise KeyMaterialError("a public CKKS context needs the public key, it has none")
        self._ctx = context
        self.parameters = parameters
        self.key_id = bytes(key_id)
        self._rotation_blob = bytes(rotation_keys)
        self._rotation: Any = None
        self._size: int | None = None

    @property
    def context(self) -> ts.Context:
        """The underlying TenSEAL context (public keys only)."""
        return self._ctx

    @property
    def has_rotation_keys(self) -> bool:
        """Whether the power-of-two rotation keys (needed for encrypted training) are present."""
        return bool(self._rotation_blob)

    def rotation_keys(self) -> Any:
        """SEAL Galois keys for rotations by 1, 2, 4, ... slots (loaded once)."""
        if not self._rotation_blob:
            raise KeyMaterialError("this public context carries no rotation keys")
        if self._rotation is None:
            self._rotation = _rotation_keys_from_bytes(self._ctx, self._rotation_blob,
                                                       what="public context")
        return self._rotation

    def encrypt_vector(self, values: Sequence[float] | np.ndarray) -> ts.CKKSVector:
        """Encrypt at most ``slots`` values under the public key (what a hospital does)."""
        return ts.ckks_vector(self._ctx, _plain_values(values, self.parameters).tolist())

    def to_bytes(self) -> bytes:
        """Serialise for the server (a securefed key record around TenSEAL's format)."""
        return pack({
            "kind": _PUBLIC_KIND,
            "version": _FORMAT_VERSION,
            "params": json.dumps(self.parameters.to_dict()),
            "key_id": self.key_id,
            "context": self._ctx.serialize(save_public_key=True, save_secret_key=False,
                                           save_galois_keys=False, save_relin_keys=True),
            "rotation": self._rotation_blob,
        })

    def serialized_size(self) -> int:
        """Bytes of :meth:`to_bytes` (what travels to the server once), computed once."""
        if self._size is None:
            self._size = len(self.to_bytes())
        return self._size

    @classmethod
    def from_bytes(cls, blob: bytes) -> CKKSPublicContext:
        try:
            rec = unpack(blob)
        except InvalidDataError as exc:
            raise KeyMaterialError(f"not a securefed public CKKS context ({exc})") from exc
        if rec.get("kind") == _SECRET_KIND:
            raise KeyMaterialError(
                "refusing a SECRET CKKS context on the public (server) side; expected kind "
                f"{_PUBLIC_KIND!r}"
            )
        if rec.get("kind") != _PUBLIC_KIND:
            raise KeyMaterialError(f"key record of kind {rec.get('kind')!r}, expected {_PUBLIC_KIND!r}")
        out = cls._from_record(rec, what="public context")
        out._size = len(blob)
        return out

    @classmethod
    def _from_record(cls, rec: dict[str, Any], *, what: str) -> CKKSPublicContext:
        params = CKKSParameters.from_dict(json.loads(rec["params"]))
        ctx = _load_context(rec["context"], what=what)
        if ctx.has_secret_key():
            raise KeyMaterialError(
                f"{what}: the serialised context carries a secret key; the server accepts "
                "only public contexts"
            )
        _check_params_match(params, ctx, what=what)
        ctx.global_scale = params.scale
        key_id = _public_key_id(ctx)
        if key_id != rec["key_id"]:
            raise KeyMaterialError(
                f"{what}: public key digest {key_id.hex()} does not match the recorded key id "
                f"{bytes(rec['key_id']).hex()} (file altered or assembled from two key sets)"
            )
        rotation = bytes(rec.get("rotation", b""))
        out = cls(ctx, parameters=params, key_id=key_id, rotation_keys=rotation)
        if rotation:
            out.rotation_keys()  # fail now, not in the middle of training
        return out

    def __repr__(self) -> str:
        return (f"CKKSPublicContext(key_id={self.key_id.hex()[:12]}, "
                f"parameters={self.parameters}, rotation_keys={self.has_rotation_keys})")


def _plain_values(values: Sequence[float] | np.ndarray, parameters: CKKSParameters) -> np.ndarray:
    """Values one ciphertext can carry and decode: at most ``slots``, finite, in range."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise InvalidDataError("cannot encrypt an empty vector")
    if arr.size > parameters.slots:
        raise InvalidDataError(
            f"vector of {arr.size} values does not fit one ciphertext of "
            f"{parameters.slots} slots; split it (see encrypt_upload)"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidDataError("cannot encrypt NaN or infinite values")
    top = float(np.max(np.abs(arr)))
    if top >= parameters.max_abs_value:
        raise InvalidDataError(
            f"value of magnitude {top:.4g} exceeds the decodable range "
            f"{parameters.max_abs_value:.4g} of these CKKS parameters"
        )
    return arr


def _check_params_match(params: CKKSParameters, ctx: ts.Context, *, what: str) -> None:
    actual = _params_of(ctx, params.scale_bits)
    if actual != params:
        raise KeyMaterialError(
            f"{what}: recorded parameters {params.to_dict()} disagree with the context's "
            f"{actual.to_dict()}"
        )


def save_public_context(public: CKKSPublicContext, path: str | os.PathLike[str]) -> Path:
    """Write the server's public context to ``path``."""
    p = Path(path)
    p.write_bytes(public.to_bytes())
    return p


def load_public_context(path: str | os.PathLike[str]) -> CKKSPublicContext:
    """Read a public context; a secret key file is refused with :class:`KeyMaterialError`."""
    rec = _read_record(path, kind=_PUBLIC_KIND)
    return CKKSPublicContext._from_record(rec, what=str(path))


# ---------------------------------------------------------------------------- secret side
class CKKSKeyHolder:
    """The CKKS secret key (held by the key authority): encrypts, decrypts, re-encrypts.

    Keys come from SEAL's key generator, seeded from the operating system's randomness;
    they are never derived from a simulation seed.
    """

    def __init__(self, context: ts.Context, *, parameters: CKKSParameters,
                 rotation_keys: bytes = b"") -> None:
        if not context.has_secret_key():
            raise KeyMaterialError("a CKKS key holder needs a context with the secret key")
        self._ctx = context
        self.parameters = parameters
        self.key_id = _public_key_id(context)
        self._rotation_blob = bytes(rotation_keys)

    @property
    def has_rotation_keys(self) -> bool:
        return bool(self._rotation_blob)

    @classmethod
    def generate(cls, parameters: CKKSParameters | None = None, *, galois_keys: bool = False,
                 n_threads: int = 1) -> CKKSKeyHolder:
        """Generate a fresh key pair, relinearisation keys and, with ``galois_keys=True``, the
        rotation keys for steps 1, 2, 4, ..., slots/2 that encrypted training uses."""
        params = parameters or CKKSParameters.aggregation()
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes), n_threads=n_threads)
        ctx.global_scale = params.scale
        rotation = _make_rotation_keys(ctx, params.slots) if galois_keys else b""
        return cls(ctx, parameters=params, rotation_keys=rotation)

    @property
    def context(self) -> ts.Context:
        """The underlying TenSEAL context (with the secret key): never give it to the server."""
        return self._ctx

    def public_context(self) -> CKKSPublicContext:
        """The server's share: a copy of the context without the secret key."""
        pub = self._ctx.copy()
        pub.make_context_public()
        pub.global_scale = self.parameters.scale
        return CKKSPublicContext(pub, parameters=self.parameters, key_id=self.key_id,
                                 rotation_keys=self._rotation_blob)

    # -------------------------------------------------------------- serialisation
    def to_bytes(self) -> bytes:
        return pack({
            "kind": _SECRET_KIND,
            "version": _FORMAT_VERSION,
            "params": json.dumps(self.parameters.to_dict()),
            "key_id": self.key_id,
            "context": self._ctx.serialize(save_public_key=True, save_secret_key=True,
                                           save_galois_keys=False, save_relin_keys=True),
            "rotation": self._rotation_blob,
        })

    @classmethod
    def from_bytes(cls, blob: bytes) -> CKKSKeyHolder:
        try:
            rec = unpack(blob)
        except InvalidDataError as exc:
            raise KeyMaterialError(f"not a securefed secret CKKS context ({exc})") from exc
        if rec.get("kind") != _SECRET_KIND:
            raise KeyMaterialError(f"key record of kind {rec.get('kind')!r}, expected {_SECRET_KIND!r}")
        return cls._from_record(rec, what="secret context")

    @classmethod
    def _from_record(cls, rec: dict[str, Any], *, what: str) -> CKKSKeyHolder:
        params = CKKSParameters.from_dict(json.loads(rec["params"]))
        ctx = _load_context(rec["context"], what=what)
        if not ctx.has_secret_key():
            raise KeyMaterialError(f"{what}: the serialised context has no secret key")
        _check_params_match(params, ctx, what=what)
        ctx.global_scale = params.scale
        rotation = bytes(rec.get("rotation", b""))
        if rotation:
            _rotation_keys_from_bytes(ctx, rotation, what=what)
        holder = cls(ctx, parameters=params, rotation_keys=rotation)
        if holder.key_id != rec["key_id"]:
            raise KeyMaterialError(
                f"{what}: public key digest {holder.key_id.hex()} does not match the recorded "
                f"key id {bytes(rec['key_id']).hex()}"
            )
        return holder

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the secret context, readable by its owner only (mode 0600)."""
        return write_private_file(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CKKSKeyHolder:
        rec = _read_record(path, kind=_SECRET_KIND)
        return cls._from_record(rec, what=str(path))

    # -------------------------------------------------------------- encryption
    def encrypt_vector(self, values: Sequence[float] | np.ndarray) -> ts.CKKSVector:
        """Encrypt at most ``slots`` values into one ciphertext (longer input is refused)."""
        return ts.ckks_vector(self._ctx, _plain_values(values, self.parameters).tolist())

    def rotation_keys(self) -> Any:
        """SEAL Galois keys for rotations by 1, 2, 4, ... slots."""
        if not self._rotation_blob:
            raise KeyMaterialError("this key holder has no rotation keys")
        return _rotation_keys_from_bytes(self._ctx, self._rotation_blob, what="key holder")

    def decrypt_vector(self, vector: ts.CKKSVector) -> np.ndarray:
        return np.asarray(vector.decrypt(self._ctx.secret_key()), dtype=np.float64)

    def __repr__(self) -> str:
        return f"CKKSKeyHolder(key_id={self.key_id.hex()[:12]}, parameters={self.parameters})"
