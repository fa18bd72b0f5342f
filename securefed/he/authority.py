"""The CKKS key authority: the only party with the secret key, and what it agrees to decrypt.

Why a separate role: with one secret key shared by all hospitals, the server plus any one
hospital decrypts every upload.  Threshold (multiparty) CKKS decryption would remove the
single key holder, but no maintained library that provides it installs here (the
``openfhe`` wheels are built for CPython 3.10 and 3.12 only; TenSEAL/SEAL have no
multiparty decryption), so the key sits with one **key authority** that is neither a
hospital nor the server.  ``docs/ckks.md`` states which collusions this allows.

What the authority decrypts, and nothing else:

* **Aggregates** (:meth:`CKKSKeyAuthority.decrypt_aggregate`): it receives the signed
  uploads themselves, checks each against the pinned roster (signature, session, round,
  sender, key, parameters, length), requires at least ``min_contributors`` distinct
  hospitals, adds the ciphertexts itself, decrypts once per (session, round), and releases
  the sum rounded or flooded (:func:`~securefed.he.uploads.release`).  A server cannot make
  it decrypt one hospital's upload (or an upload padded with the server's own encryptions,
  which anyone can make with the public key), nor two different subsets of one round.
* **Weight refreshes of encrypted training** (:meth:`CKKSKeyAuthority.refresh_weights`):
  only after :meth:`begin_training` declared the number of epochs and weights, within the
  authority's own budget of refreshes (``max_training_epochs``, set by whoever runs the
  authority, 0 by default: no encrypted training), one training at a time (a second
  declaration while one runs is refused, so a server cannot restart the count), one refresh
  per epoch in order, exactly ``n_weights`` ciphertexts at the level an epoch ends on, each
  holding one value replicated in every slot (the spread across slots must be within
  ``REPLICATION_TOLERANCE``, so a column of patient values is refused).  It returns fresh
  encryptions of the released (rounded) means, never plaintext to the server.  The grid is
  calibrated on the ciphertext itself: all slots carry the same value, so their spread is
  the error, and the grid is the power of two at least four times the largest deviation.

What it remembers across a restart: with ``record`` (a file path), every decrypted (session,
round) and every granted refresh is written to that file, atomically, *before* anything is
released, and a restarted authority loads it, so it still refuses a round it already
decrypted and still counts the refreshes already granted against ``max_training_epochs``.
Without a record it remembers only for its own lifetime; that is enough for an authority
whose key lives and dies with it (the simulation generates a fresh key per run), not for one
whose key is loaded from a file and may be restarted.  The adversary here is the server,
which may ask a restarted authority again; the record sits with the key, on the authority's
machine, and whoever can write it there is as trusted as the key itself (deleting it makes
the authority start afresh).

What it cannot check: that the server computed the agreed function (a deviating server can
still choose which replicated values it asks to refresh; see the threat-model table in
``docs/ckks.md``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tenseal as ts

from securefed.errors import ConfigurationError, KeyMaterialError, MessageRejected, ProtocolAbort
from securefed.he.keys import CKKSKeyHolder, CKKSPublicContext
from securefed.he.seal_ops import Blobs, Party
from securefed.he.uploads import REVEALS, add_uploads, decrypt_sum, parse_upload, release
from securefed.identity import Roster, write_private_file

__all__ = ["CKKSKeyAuthority", "DEFAULT_MIN_CONTRIBUTORS", "REPLICATION_TOLERANCE"]

DEFAULT_MIN_CONTRIBUTORS = 3
#: Largest deviation between the slots of a weight ciphertext sent for refresh (measured
#: deviations of genuine weights are ~2e-4 with the training parameters).
REPLICATION_TOLERANCE = 1e-2


class CKKSKeyAuthority:
    """Holds the CKKS secret key and decrypts only what the module docstring lists.

    ``roster`` pins the hospitals' signing keys (required unless ``require_signatures`` is
    false, which is meant for tests of the weaker setting only).  ``reveal`` is
    ``"rounded"`` (default), ``"flooded"`` or ``"exact"`` (unsafe, for measurements).
    ``max_training_epochs`` is the most weight refreshes it grants over its lifetime, all
    encrypted trainings together (each refresh releases the weights the server sends, so
    this bounds what a deviating server can have decrypted that way); 0 refuses encrypted
    training.  ``record`` is a file where the authority keeps what it has released (see the
    module docstring); it belongs to this key (a record written for another key is refused).

    Threat model: the authority is trusted to keep its secret key and to follow these rules;
    the server may lie about anything it sends; a hospital may collude with the server.  The
    authority colluding with the server decrypts every upload (``docs/ckks.md``).
    """

    def __init__(self, key_holder: CKKSKeyHolder | None = None, *, roster: Roster | None = None,
                 min_contributors: int = DEFAULT_MIN_CONTRIBUTORS, reveal: str = "rounded",
                 flood_bits: int = 8, require_signatures: bool = True,
                 max_training_epochs: int = 0,
                 record: str | os.PathLike[str] | None = None) -> None:
        if reveal not in REVEALS:
            raise ConfigurationError(f"reveal must be one of {REVEALS}, got {reveal!r}")
        if isinstance(min_contributors, bool) or not isinstance(min_contributors, int) \
                or min_contributors < 1:
            raise ConfigurationError(f"min_contributors must be an integer >= 1, got {min_contributors!r}")
        if not isinstance(flood_bits, int) or not 1 <= flood_bits <= 52:
            raise ConfigurationError(f"flood_bits must be an integer in [1, 52], got {flood_bits!r}")
        if min_contributors < DEFAULT_MIN_CONTRIBUTORS:
            warnings.warn(f"ckks: min_contributors = {min_contributors} lets the key authority "
                          f"release the sum of {min_contributors} hospital(s): with two, each "
                          "learns the other's update from the sum", stacklevel=2)
        if isinstance(max_training_epochs, bool) or not isinstance(max_training_epochs, int) \
                or max_training_epochs < 0:
            raise ConfigurationError(
                f"max_training_epochs must be an integer >= 0, got {max_training_epochs!r}")
        if require_signatures and roster is None:
            raise KeyMaterialError("the key authority needs the pinned roster of the hospitals' "
                                   "signing keys (securefed keys identity)")
        self.key_holder = key_holder or CKKSKeyHolder.generate()
        self.roster = roster
        self.require_signatures = require_signatures
        self.min_contributors = min_contributors
        self.reveal = reveal
        self.flood_bits = flood_bits
        self._public = CKKSPublicContext.from_bytes(self.key_holder.public_context().to_bytes())
        self._decrypted: set[tuple[bytes, int]] = set()
        self._training: dict[str, Any] | None = None
        self.max_training_epochs = max_training_epochs
        self._refreshes_granted = 0
        self._record = None if record is None else os.fspath(record)
        if self._record is not None and os.path.exists(self._record):
            self._load_record()

    @property
    def training_epochs_left(self) -> int:
        """Weight refreshes this authority still grants (its lifetime budget, less those
        already granted, including before a restart when it keeps a record)."""
        return max(0, self.max_training_epochs - self._refreshes_granted)

    # -------------------------------------------------------------- the record
    def _load_record(self) -> None:
        assert self._record is not None
        try:
            with open(self._record, encoding="utf-8") as fh:
                data = json.load(fh)
            key_id = bytes.fromhex(data["key_id"])
            decrypted = {(bytes.fromhex(s), int(r)) for s, r in data["decrypted"]}
            granted = int(data["refreshes_granted"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"the key authority's record {self._record} cannot be read ({exc}); refusing to "
                "start without it (it holds the rounds already decrypted)") from exc
        if key_id != self.key_holder.key_id:
            raise ConfigurationError(
                f"the key authority's record {self._record} belongs to key {key_id.hex()[:12]}, "
                f"not to this authority's key {self.key_holder.key_id.hex()[:12]}")
        self._decrypted = decrypted
        self._refreshes_granted = granted

    def _save_record(self, decrypted: set[tuple[bytes, int]], granted: int) -> None:
        """Write the record before anything is released: if this fails, nothing is."""
        if self._record is None:
            return
        data = {"key_id": self.key_holder.key_id.hex(),
                "decrypted": sorted([s.hex(), r] for s, r in decrypted),
                "refreshes_granted": granted}
        write_private_file(self._record, json.dumps(data).encode())

    @property
    def parameters(self) -> Any:
        return self.key_holder.parameters

    def public_context(self) -> CKKSPublicContext:
        """What the hospitals and the server get (no secret key)."""
        return self._public

    # -------------------------------------------------------------- aggregation
    def decrypt_aggregate(self, uploads: Mapping[int, bytes], *, session: bytes, round_index: int,
                          n_values: int) -> np.ndarray:
        """Check the signed uploads of one round, add them, decrypt the sum once, release it."""
        if (bytes(session), int(round_index)) in self._decrypted:
            raise MessageRejected(
                f"round {round_index} of this session was already decrypted; the key authority "
                "decrypts one aggregate per round (two subsets would reveal their difference)")
        if len(uploads) < self.min_contributors:
            raise ProtocolAbort(
                f"aggregate of {len(uploads)} upload(s) for round {round_index}, below the key "
                f"authority's minimum of {self.min_contributors} contributors; refused")
        if self.require_signatures and self.roster is None:
            raise KeyMaterialError("the key authority has no pinned roster to check signatures")
        parts = [parse_upload(self._public, blob, round_index=round_index, client_id=int(cid),
                              n_values=n_values, roster=self.roster, session=bytes(session))
                 for cid, blob in sorted(uploads.items())]
        total = [v.serialize() for v in add_uploads(parts)]
        done = self._decrypted | {(bytes(session), int(round_index))}
        self._save_record(done, self._refreshes_granted)
        self._decrypted = done
        return decrypt_sum(self.key_holder, total, n_values=n_values, n_summed=len(parts),
                           reveal=self.reveal, flood_bits=self.flood_bits)

    # -------------------------------------------------------------- encrypted training
    def begin_training(self, *, epochs: int, n_weights: int, level: int) -> None:
        """Declare an encrypted-training run: ``epochs`` refreshes of ``n_weights``
        ciphertexts, each at chain index ``level`` (where an epoch ends).

        Refused while another training runs, and beyond the authority's remaining budget of
        refreshes (``max_training_epochs``), which the declared epochs use up at once.
        """
        if self._training is not None:
            t = self._training
            raise MessageRejected(
                f"an encrypted training is already running ({t['done']} of its {t['epochs']} "
                "refreshes done); the key authority serves one at a time and refuses a second "
                "declaration")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise MessageRejected(f"encrypted training of {epochs!r} epochs declared; expected "
                                  "an integer >= 1")
        if epochs > self.training_epochs_left:
            raise MessageRejected(
                f"encrypted training of {epochs} epochs declared, but this key authority grants "
                f"{self.training_epochs_left} more weight refreshes (its max_training_epochs, "
                "set by whoever runs it); refused")
        if not self.key_holder.has_rotation_keys:
            raise KeyMaterialError("encrypted training needs rotation (Galois) keys; generate them "
                                   "with CKKSKeyHolder.generate(..., galois_keys=True)")
        self._save_record(self._decrypted, self._refreshes_granted + epochs)
        self._refreshes_granted += epochs
        self._training = {"epochs": int(epochs), "n_weights": int(n_weights), "level": int(level),
                          "done": 0,
                          "party": Party(self.key_holder.context, self.parameters, secret=True),
                          "blobs": Blobs()}

    def initial_weights(self, values: np.ndarray) -> list[bytes]:
        """Encryptions of the initial weights, each replicated in every slot."""
        t = self._expect_training()
        if len(values) != t["n_weights"]:
            raise MessageRejected(f"{len(values)} initial weights, expected {t['n_weights']}")
        return [t["blobs"].dump(t["party"].encrypt(np.full(self.parameters.slots, float(v))))
                for v in values]

    def _expect_training(self) -> dict[str, Any]:
        if self._training is None:
            raise MessageRejected("no encrypted training was declared to the key authority "
                                  "(begin_training); refresh refused")
        return self._training

    def refresh_weights(self, blobs: Sequence[bytes], *, epoch: int) -> tuple[np.ndarray, list[bytes]]:
        """One epoch's refresh: check, decrypt, release the rounded means, re-encrypt.

        Returns ``(released values, fresh ciphertexts)``; the ciphertexts go to the server.
        """
        t = self._expect_training()
        if epoch != t["done"] or epoch >= t["epochs"]:
            raise MessageRejected(
                f"refresh for epoch {epoch}, expected epoch {t['done']} of the {t['epochs']} "
                "declared (one refresh per epoch, in order)")
        if len(blobs) != t["n_weights"]:
            raise MessageRejected(f"refresh of {len(blobs)} ciphertexts, expected the "
                                  f"{t['n_weights']} weights")
        party, store = t["party"], t["blobs"]
        out = np.empty(len(blobs))
        for j, blob in enumerate(blobs):
            ct = store.load(party.ctx, blob, what=f"weight {j} to refresh")
            if party.level(ct) != t["level"]:
                raise MessageRejected(
                    f"weight {j} to refresh is at level {party.level(ct)}, expected level "
                    f"{t['level']} (where an epoch ends)")
            slots = party.decrypt(ct)
            if not np.all(np.isfinite(slots)):
                raise MessageRejected(f"weight {j} to refresh does not decrypt to finite values")
            centre = float(np.median(slots))
            spread = float(np.max(np.abs(slots - centre)))
            if spread > REPLICATION_TOLERANCE:
                raise MessageRejected(
                    f"weight {j} to refresh is not one value replicated in every slot (slots "
                    f"differ by up to {spread:.3g} > {REPLICATION_TOLERANCE}); refused")
            grid = 2.0 ** math.ceil(math.log2(max(4 * spread, 2.0**-40)))
            out[j] = release(np.array([float(np.mean(slots))]), grid=grid, reveal=self.reveal,
                             flood_bits=self.flood_bits)[0]
        if np.max(np.abs(out)) >= self.parameters.max_abs_value:
            raise ProtocolAbort(f"encrypted training diverged: weights {out}")
        t["done"] += 1
        fresh = [store.dump(party.encrypt(np.full(self.parameters.slots, float(v)))) for v in out]
        if t["done"] == t["epochs"]:
            store.close()
            self._training = None
        return out, fresh

    def decrypt_vector(self, vector: ts.CKKSVector) -> np.ndarray:
        """Refused: the authority releases nothing outside the two checked paths."""
        raise MessageRejected("the key authority decrypts only checked aggregates and weight "
                              "refreshes, not arbitrary ciphertexts")

    def __repr__(self) -> str:
        return (f"CKKSKeyAuthority(key_id={self.key_holder.key_id.hex()[:12]}, "
                f"min_contributors={self.min_contributors}, reveal={self.reveal!r})")
