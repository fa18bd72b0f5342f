"""SEAL objects of one CKKS party and ciphertext (de)serialisation, shared by encrypted
training (:mod:`securefed.he.encrypted_lr`) and the key authority
(:mod:`securefed.he.authority`).

Scales: after each rescaling the ciphertext's scale is set back to ``2^scale_bits`` (as
TenSEAL does); the primes differ from ``2^30`` by a relative ``~1e-4``, which is the size of
the resulting multiplicative error per level.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
from tenseal import sealapi as seal

from securefed.errors import InvalidDataError, KeyMaterialError
from securefed.he.keys import CKKSParameters

__all__ = ["Blobs", "Party"]


class Blobs:
    """Ciphertext <-> bytes through SEAL's own (compressed) format, via a private temp dir."""

    def __init__(self) -> None:
        shm = "/dev/shm"
        base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
        self._dir = tempfile.TemporaryDirectory(prefix="securefed-ckks-", dir=base)
        self._path = os.path.join(self._dir.name, "ct")

    def dump(self, ct: seal.Ciphertext) -> bytes:
        ct.save(self._path)
        with open(self._path, "rb") as fh:
            return fh.read()

    def load(self, context: Any, blob: bytes, *, what: str) -> seal.Ciphertext:
        with open(self._path, "wb") as fh:
            fh.write(blob)
        ct = seal.Ciphertext()
        try:
            ct.load(context, self._path)
        except (RuntimeError, ValueError) as exc:
            raise InvalidDataError(f"{what}: not a valid ciphertext for these parameters ({exc})") from exc
        return ct

    def close(self) -> None:
        self._dir.cleanup()


class Party:
    """SEAL objects of one party, built from a TenSEAL context."""

    def __init__(self, context: Any, parameters: CKKSParameters, *, secret: bool,
                 rotation_keys: Any = None) -> None:
        self.ctx = context.seal_context().data
        self.encoder = seal.CKKSEncoder(self.ctx)
        self.evaluator = seal.Evaluator(self.ctx)
        self.encryptor = seal.Encryptor(self.ctx, context.public_key().data)
        self.decryptor = seal.Decryptor(self.ctx, context.secret_key().data) if secret else None
        self.relin = context.relin_keys().data if context.has_relin_keys() else None
        self.galois = rotation_keys
        self.scale = parameters.scale
        self.slots = parameters.slots
        self._parms_at: dict[int, Any] = {}
        cd = self.ctx.first_context_data()
        while cd is not None:
            self._parms_at[int(cd.chain_index())] = cd.parms_id()
            cd = cd.next_context_data()

    def encode(self, values: np.ndarray | float, *, like: seal.Ciphertext | None = None,
               scale: float | None = None) -> seal.Plaintext:
        pt = seal.Plaintext()
        sc = self.scale if scale is None else scale
        vals = values if isinstance(values, float) else [float(v) for v in values]
        if like is None:
            self.encoder.encode(vals, sc, pt)
        else:
            self.encoder.encode(vals, like.parms_id(), sc, pt)
        return pt

    def encrypt(self, values: np.ndarray) -> seal.Ciphertext:
        ct = seal.Ciphertext()
        self.encryptor.encrypt(self.encode(np.asarray(values, dtype=np.float64)), ct)
        return ct

    def decrypt(self, ct: seal.Ciphertext) -> np.ndarray:
        if self.decryptor is None:
            raise KeyMaterialError("this CKKS context holds no secret key and cannot decrypt "
                                   "(only the key authority decrypts)")
        pt = seal.Plaintext()
        self.decryptor.decrypt(ct, pt)
        return np.asarray(self.encoder.decode_double(pt), dtype=np.float64)

    # -- arithmetic with scale bookkeeping (scale reset to 2^scale_bits after each rescale)
    def _rescale(self, ct: seal.Ciphertext) -> None:
        self.evaluator.rescale_to_next_inplace(ct)
        ct.scale = self.scale

    def mul(self, a: seal.Ciphertext, b: seal.Ciphertext) -> seal.Ciphertext:
        a, b = self.align(a, b)
        out = seal.Ciphertext()
        self.evaluator.multiply(a, b, out)
        self.evaluator.relinearize_inplace(out, self.relin)
        self._rescale(out)
        return out

    def square(self, a: seal.Ciphertext) -> seal.Ciphertext:
        out = seal.Ciphertext()
        self.evaluator.square(a, out)
        self.evaluator.relinearize_inplace(out, self.relin)
        self._rescale(out)
        return out

    def mul_plain(self, a: seal.Ciphertext, values: np.ndarray | float) -> seal.Ciphertext:
        out = seal.Ciphertext()
        self.evaluator.multiply_plain(a, self.encode(values, like=a), out)
        self._rescale(out)
        return out

    def level(self, ct: seal.Ciphertext) -> int:
        return int(self.ctx.get_context_data(ct.parms_id()).chain_index())

    def lower(self, ct: seal.Ciphertext, level: int) -> seal.Ciphertext:
        """A copy of ``ct`` mod-switched down to chain index ``level``."""
        out = seal.Ciphertext()
        self.evaluator.mod_switch_to(ct, self._parms_at[level], out)
        return out

    def align(self, a: seal.Ciphertext, b: seal.Ciphertext) -> tuple[seal.Ciphertext, seal.Ciphertext]:
        la, lb = self.level(a), self.level(b)
        if la > lb:
            a = self.lower(a, lb)
        elif lb > la:
            b = self.lower(b, la)
        return a, b

    def add(self, a: seal.Ciphertext, b: seal.Ciphertext) -> seal.Ciphertext:
        a, b = self.align(a, b)
        out = seal.Ciphertext()
        self.evaluator.add(a, b, out)
        return out

    def sub(self, a: seal.Ciphertext, b: seal.Ciphertext) -> seal.Ciphertext:
        a, b = self.align(a, b)
        out = seal.Ciphertext()
        self.evaluator.sub(a, b, out)
        return out

    def add_const(self, a: seal.Ciphertext, value: float) -> seal.Ciphertext:
        out = seal.Ciphertext()
        self.evaluator.add_plain(a, self.encode(float(value), like=a, scale=a.scale), out)
        return out

    def replicate_sum(self, a: seal.Ciphertext) -> seal.Ciphertext:
        """Rotate-and-add by 1, 2, ..., N/4: every slot ends up holding the sum of all slots."""
        out = seal.Ciphertext()
        self.evaluator.rotate_vector(a, 1, self.galois, out)
        self.evaluator.add_inplace(out, a)
        tmp = seal.Ciphertext()
        step = 2
        while step < self.slots:
            self.evaluator.rotate_vector(out, step, self.galois, tmp)
            self.evaluator.add_inplace(out, tmp)
            step *= 2
        return out
