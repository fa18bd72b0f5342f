"""Encrypted-centralised logistic regression: hospitals encrypt, a server trains on ciphertexts.

The baseline "encrypt the data, then train centrally" of the seed document, built so that
it is as cheap as CKKS allows.

Packing (SIMD, one ciphertext per feature column across patients)
------------------------------------------------------------------
Patients get consecutive global indices (hospital 0 first; the counts per hospital are
public metadata).  Patient ``p`` lives in slot ``p mod N/2`` of chunk ``p div N/2``.  For
every chunk it has patients in, a hospital encrypts one ciphertext per feature column and one
for the labels, with its own patients' values in their slots and zeros elsewhere; the server
adds the hospitals' ciphertexts of a column (addition costs no depth) and so holds, per
chunk, ``d`` feature ciphertexts ``X_j`` and one label ciphertext ``Y``.  The bias column is
a public 0/1 plaintext mask ``M`` (which slots hold a patient), so it costs no upload.

The weights are ``d + 1`` ciphertexts ``W_j``, each holding the same value ``w_j`` in every
slot.  One epoch of full-batch gradient descent on the mean log-loss,
``w <- w - (lr / n) * sum_i (sigma(w . x_i + b) - y_i) x_i``, runs as:

====================================================  =====
step                                                  level
====================================================  =====
``z = sum_j W_j * X_j + W_b * M``                     1
``z^2``; ``(k a3) z``; ``(k a1) z`` (plain factors)   2
``e = z^2 * (k a3) z + (k a1) z + k a0 - k Y``        3
``P_j = e * X_j``, ``P_b = e * M``                    4
``G_j = rotate-and-add(P_j)`` over all ``N/2`` slots  4
``W_j <- W_j - G_j``                                  4
====================================================  =====

with ``k = lr / n`` folded into the polynomial's coefficients, so that it costs no level.
Rotating-and-adding by ``1, 2, 4, ..., N/4`` slots leaves the full sum ``G_j`` in *every*
slot: nothing but complete sums over all patients is ever decrypted, so the key holder
learns the weights and nothing about single patients (no partial sums, no masks needed).
Four levels fit ``N = 8192`` at 128-bit security (:meth:`CKKSParameters.training`).

Key-authority refresh
---------------------
After four levels the weights cannot be multiplied again.  Each epoch the server sends the
``d + 1`` weight ciphertexts to the key authority
(:meth:`~securefed.he.authority.CKKSKeyAuthority.refresh_weights`), which checks them
(declared epoch, count, level, one value replicated in every slot), decrypts, averages the
replicated slots, releases the mean rounded to a grid calibrated on the ciphertext's own
error, and returns fresh encryptions.  The server never sees a decryption; the released
weights (history and final model) are never exact decryptions (IND-CPA^D, see
:mod:`securefed.he.uploads`).  Hospitals encrypt their columns with the public context
only.  The time and bytes of every refresh are counted.

Sigmoid
-------
``sigma(t) ~ a0 + a1 t + a3 t^3``, least squares on ``[-8, 8]`` by default (the interval and
degree follow Kim et al., "Secure Logistic Regression Based on Homomorphic Encryption:
Design and Evaluation", JMIR Med. Inform. 2018), which gives ``0.5 + 0.15007 t - 0.0015911 t^3``
here (they report ``0.5 + 0.15012 t - 0.0015930 t^3``); its worst error on the interval is
0.114, at the ends.
Outside the interval the cubic turns back (at ``|t| ~ 5.6`` it peaks), so standardised
features and a moderate learning rate matter; :attr:`EncryptedLRResult.out_of_interval`
reports how many training decision values of the final model fell outside it (a
simulation diagnostic computed from the plaintext rows, never by the server).

Scales: after each rescaling the ciphertext's scale is set back to ``2^scale_bits`` (as
TenSEAL does); the primes differ from ``2^30`` by a relative ``~1e-4``, which is the size of
the resulting multiplicative error per level.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tenseal import sealapi as seal

from securefed.arrays import FederatedArrays
from securefed.errors import ConfigurationError, InvalidDataError, KeyMaterialError, ProtocolAbort
from securefed.he.authority import CKKSKeyAuthority
from securefed.he.keys import CKKSKeyHolder, CKKSParameters, CKKSPublicContext
from securefed.he.seal_ops import Blobs, Party

__all__ = [
    "fit_sigmoid_polynomial",
    "EncryptedLRResult",
    "train_encrypted_logreg",
    "train_plain_logreg",
    "accuracy",
]

REQUIRED_DEPTH = 4


def fit_sigmoid_polynomial(*, interval: tuple[float, float] = (-8.0, 8.0),
                           degree: int = 3) -> np.ndarray:
    """Least-squares odd polynomial ``0.5 + sum a_k t^k`` (``k`` odd) fitting the sigmoid.

    Returns coefficients in increasing powers (``a0, a1, ..., a_degree``).

    >>> np.round(fit_sigmoid_polynomial(), 6)
    array([ 0.5     ,  0.150067,  0.      , -0.001591])
    """
    lo, hi = interval
    if not (lo < 0 < hi and np.isclose(lo, -hi)):
        raise ConfigurationError(f"interval must be symmetric around 0, got {interval}")
    if degree not in (1, 3):
        raise ConfigurationError(f"degree must be 1 or 3 (depth budget), got {degree}")
    t = np.linspace(lo, hi, 2001)
    target = 1.0 / (1.0 + np.exp(-t)) - 0.5
    powers = list(range(1, degree + 1, 2))
    A = np.stack([t**k for k in powers], axis=1)
    sol, *_ = np.linalg.lstsq(A, target, rcond=None)
    coef = np.zeros(degree + 1)
    coef[0] = 0.5
    for k, c in zip(powers, sol, strict=True):
        coef[k] = c
    return coef


def accuracy(w: np.ndarray, b: float, X: np.ndarray, y: np.ndarray) -> float:
    """Share of rows with ``(X w + b > 0) == y``."""
    return float(np.mean(((X @ w + b) > 0).astype(np.float64) == y))


def train_plain_logreg(
    X: np.ndarray, y: np.ndarray, *, epochs: int, learning_rate: float,
    sigmoid: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, float, float]:
    """Full-batch gradient descent in the clear from zero: ``(w, b, seconds)``.

    ``sigmoid=None`` uses the exact logistic function (the plaintext baseline); pass the
    polynomial to isolate the approximation's effect from the CKKS noise.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    act = sigmoid or (lambda t: 1.0 / (1.0 + np.exp(-t)))
    w = np.zeros(d)
    b = 0.0
    t0 = time.perf_counter()
    for _ in range(epochs):
        err = act(X @ w + b) - y
        w = w - learning_rate / n * (X.T @ err)
        b = b - learning_rate / n * float(err.sum())
    return w, b, time.perf_counter() - t0


@dataclass(frozen=True)
class EncryptedLRResult:
    """Outcome of :func:`train_encrypted_logreg`; all times in seconds, sizes in bytes."""

    weights: np.ndarray  # (d,)
    bias: float
    epochs: int
    n_patients: int
    n_features: int
    parameters: CKKSParameters
    sigmoid_coefficients: np.ndarray
    interval: tuple[float, float]
    time_encrypt: float  # hospitals encrypting their columns
    time_setup_server: float  # server: load uploads, sum hospitals, label pre-scaling
    epoch_server_times: tuple[float, ...]  # homomorphic epoch on the server
    epoch_refresh_times: tuple[float, ...]  # key holder decrypt + re-encrypt (incl. transfer parsing)
    bytes_public_context: int  # public + evaluation keys sent to the server once
    bytes_data_upload: int  # all hospitals' column ciphertexts
    bytes_refresh_per_epoch: int  # weights to the key holder and back
    ciphertexts_per_hospital: tuple[int, ...]
    weight_history: tuple[np.ndarray, ...] = field(default_factory=tuple)  # (w, b) after each epoch
    out_of_interval: int = 0

    @property
    def seconds_per_epoch(self) -> float:
        """Mean server time plus refresh time per epoch."""
        return float(np.mean(np.add(self.epoch_server_times, self.epoch_refresh_times)))

    @property
    def seconds_per_patient_epoch(self) -> float:
        return self.seconds_per_epoch / self.n_patients

    @property
    def total_bytes(self) -> int:
        return self.bytes_public_context + self.bytes_data_upload + self.epochs * self.bytes_refresh_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "n_patients": self.n_patients,
            "n_features": self.n_features,
            "parameters": self.parameters.to_dict(),
            "sigmoid_coefficients": [float(c) for c in self.sigmoid_coefficients],
            "interval": list(self.interval),
            "seconds_per_epoch": self.seconds_per_epoch,
            "seconds_per_patient_epoch": self.seconds_per_patient_epoch,
            "time_encrypt": self.time_encrypt,
            "time_setup_server": self.time_setup_server,
            "bytes_public_context": self.bytes_public_context,
            "bytes_data_upload": self.bytes_data_upload,
            "bytes_refresh_per_epoch": self.bytes_refresh_per_epoch,
            "total_bytes": self.total_bytes,
            "out_of_interval": self.out_of_interval,
            "weights": [float(x) for x in self.weights],
            "bias": self.bias,
        }


_Blobs = Blobs  # the names the tests and older code use
_Party = Party


# ---------------------------------------------------------------------------- training
def _layout(counts: Sequence[int], slots: int) -> list[list[tuple[int, int, int]]]:
    """Per hospital: (chunk, first slot, row offset within the hospital, count) spans."""
    spans: list[list[tuple[int, int, int]]] = []
    start = 0
    for n_h in counts:
        mine: list[tuple[int, int, int]] = []
        row = 0
        while row < n_h:
            p = start + row
            chunk, slot = divmod(p, slots)
            take = min(n_h - row, slots - slot)
            mine.append((chunk, slot, row))
            row += take
        spans.append(mine)
        start += n_h
    return spans


def _keys_for_training(key_holder: CKKSKeyHolder | None, server_context: Any,
                       key_authority: CKKSKeyAuthority | None, *, epochs: int
                       ) -> tuple[CKKSKeyAuthority, CKKSPublicContext]:
    """The key authority and the public context the hospitals and the server use, checked.

    An authority built here grants exactly the ``epochs`` refreshes of this training."""
    if key_authority is None:
        if key_holder is None:
            key_holder = CKKSKeyHolder.generate(CKKSParameters.training(), galois_keys=True)
        key_authority = CKKSKeyAuthority(key_holder, require_signatures=False,
                                         max_training_epochs=epochs)
    holder = key_authority.key_holder
    params = holder.parameters
    if params.depth < REQUIRED_DEPTH:
        raise ConfigurationError(
            f"encrypted logistic regression needs multiplicative depth {REQUIRED_DEPTH}, the key "
            f"holder's parameters give {params.depth} (use CKKSParameters.training())"
        )
    if not holder.has_rotation_keys:
        raise KeyMaterialError("encrypted training needs rotation (Galois) keys; generate them "
                               "with CKKSKeyHolder.generate(..., galois_keys=True)")
    if server_context is None:  # the authority sends its public share; the server loads it
        server_pub = CKKSPublicContext.from_bytes(holder.public_context().to_bytes())
    elif not isinstance(server_context, CKKSPublicContext):
        raise KeyMaterialError(
            f"server_context must be a CKKSPublicContext (public keys only), got "
            f"{type(server_context).__name__}"
        )
    else:
        server_pub = server_context
    if server_pub.key_id != holder.key_id:
        raise KeyMaterialError(
            f"server context is for key {server_pub.key_id.hex()[:16]}, the key holder holds "
            f"{holder.key_id.hex()[:16]}"
        )
    if not server_pub.has_rotation_keys:
        raise KeyMaterialError("the server's public context lacks rotation (Galois) keys")
    return key_authority, server_pub


def _check_rows(data: FederatedArrays) -> list[int]:
    """Every hospital's rows: shape, finite values, 0/1 labels; returns the row counts."""
    clients = data.clients
    if not clients:
        raise InvalidDataError("no hospital in the data")
    d = data.num_features
    for c in clients:
        if c.X.ndim != 2 or c.X.shape[1] != d or c.y.shape != (c.X.shape[0],):
            raise InvalidDataError(
                f"hospital {c.name!r}: X of shape {c.X.shape} and y of shape {c.y.shape}, "
                f"expected (n, {d}) and (n,)"
            )
        if not np.all(np.isfinite(c.X)):
            raise InvalidDataError(f"hospital {c.name!r}: X holds NaN or infinite values")
        if not np.all((c.y == 0) | (c.y == 1)):
            raise InvalidDataError(f"hospital {c.name!r}: labels must be 0 or 1, got "
                                   f"{sorted(set(np.unique(c.y).tolist()))[:5]}")
    counts = [c.num_examples for c in clients]
    if sum(counts) == 0:
        raise InvalidDataError("no training rows in any hospital")
    return counts


def _encrypt_columns(data: FederatedArrays, counts: Sequence[int], hospital: Party,
                     blobs: Blobs) -> list[list[tuple[int, list[bytes]]]]:
    """Hospitals: one ciphertext per feature column and one for the labels, per chunk they
    have patients in, in the shared layout (public key only)."""
    slots = hospital.slots
    d = data.num_features
    uploads: list[list[tuple[int, list[bytes]]]] = []
    for c, spans in zip(data.clients, _layout(counts, slots), strict=True):
        X = np.asarray(c.X, dtype=np.float64)
        y = np.asarray(c.y, dtype=np.float64)
        mine: list[tuple[int, list[bytes]]] = []
        for chunk, slot, row in spans:
            take = min(c.num_examples - row, slots - slot)
            cts = []
            for col in [X[row:row + take, j] for j in range(d)] + [y[row:row + take]]:
                full = np.zeros(slots)
                full[slot:slot + take] = col
                cts.append(blobs.dump(hospital.encrypt(full)))
            mine.append((chunk, cts))
        uploads.append(mine)
    return uploads


@dataclass
class _ServerData:
    """What the server holds after the upload: per chunk, the summed column and label
    ciphertexts, the public 0/1 mask of used slots, and ``-k y`` (level 1)."""

    X: list[list[Any]]
    masks: list[np.ndarray]
    kY: list[Any]


def _server_setup(server: Party, blobs: Blobs, uploads: list[list[tuple[int, list[bytes]]]], *,
                  d: int, n: int, k: float) -> _ServerData:
    slots = server.slots
    n_chunks = -(-n // slots)
    Xc: list[list[seal.Ciphertext | None]] = [[None] * d for _ in range(n_chunks)]
    Yc: list[seal.Ciphertext | None] = [None] * n_chunks
    for h, mine in enumerate(uploads):
        for chunk, cts in mine:
            parsed = [blobs.load(server.ctx, b, what=f"hospital {h} column upload") for b in cts]
            for j in range(d):
                prev = Xc[chunk][j]
                Xc[chunk][j] = parsed[j] if prev is None else server.add(prev, parsed[j])
            Yc[chunk] = parsed[d] if Yc[chunk] is None else server.add(Yc[chunk], parsed[d])
    masks = []
    for chunk in range(n_chunks):
        m = np.zeros(slots)
        m[:min(slots, n - chunk * slots)] = 1.0
        masks.append(m)
    kY = [server.mul_plain(Yc[c], -k) for c in range(n_chunks)]
    return _ServerData(X=Xc, masks=masks, kY=kY)  # type: ignore[arg-type]


def _server_epoch(server: Party, W: list[Any], data: _ServerData, *, coef: np.ndarray, k: float,
                  d: int) -> list[Any]:
    """One homomorphic epoch (the table of the module docstring): new weight ciphertexts."""
    G: list[seal.Ciphertext | None] = [None] * (d + 1)
    for c, Xc in enumerate(data.X):
        z = server.mul_plain(W[d], data.masks[c])
        for j in range(d):
            z = server.add(z, server.mul(W[j], Xc[j]))
        z2 = server.square(z)
        t = server.mul_plain(z, k * coef[3])
        lin = server.mul_plain(z, k * coef[1])
        e = server.add(server.mul(z2, t), lin)
        e = server.add_const(e, k * coef[0])
        e = server.add(e, data.kY[c])
        for j in range(d):
            p = server.mul(e, Xc[j])
            G[j] = p if G[j] is None else server.add(G[j], p)
        pb = server.mul_plain(e, data.masks[c])
        G[d] = pb if G[d] is None else server.add(G[d], pb)
    return [server.sub(W[j], server.replicate_sum(G[j])) for j in range(d + 1)]


def train_encrypted_logreg(
    data: FederatedArrays,
    *,
    epochs: int,
    learning_rate: float = 1.0,
    interval: tuple[float, float] = (-8.0, 8.0),
    key_holder: CKKSKeyHolder | None = None,
    server_context: CKKSPublicContext | None = None,
    key_authority: CKKSKeyAuthority | None = None,
    record_history: bool = False,
    progress: bool = False,
) -> EncryptedLRResult:
    """Train logistic regression on the hospitals' encrypted rows (see the module docstring).

    Parameters
    ----------
    data:
        Hospitals' standardised rows and 0/1 labels (``data.clients``); test data unused here.
    epochs, learning_rate:
        Full-batch gradient descent from zero weights; one refresh per epoch.
    interval:
        Where the degree-3 sigmoid polynomial is fitted.
    key_authority, key_holder, server_context:
        The key authority (built from ``key_holder`` when omitted, granting this training's
        ``epochs`` refreshes; keys generated with rotation keys and
        :meth:`CKKSParameters.training` when both are omitted).  A given authority must grant
        ``epochs`` more refreshes (its ``max_training_epochs``), and the data must hold rows
        of at least its ``min_contributors`` hospitals (:class:`ProtocolAbort` otherwise).  Its
        parameters must support depth 4; the server context must be the matching public
        context with rotation keys (a secret context is refused); when omitted, it is
        derived from the authority through its serialised form.
    record_history:
        Keep the released (rounded) weights after each epoch.
    progress:
        Show a progress bar over the epochs.
    """
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ConfigurationError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not learning_rate > 0:
        raise ConfigurationError(f"learning_rate must be > 0, got {learning_rate!r}")
    authority, server_pub = _keys_for_training(key_holder, server_context, key_authority,
                                               epochs=epochs)
    params = authority.parameters
    counts = _check_rows(data)
    contributing = sum(1 for c in counts if c > 0)
    if contributing < authority.min_contributors:
        raise ProtocolAbort(
            f"encrypted training on the rows of {contributing} hospital(s), below the key "
            f"authority's minimum of {authority.min_contributors} contributors: the released "
            "model would be fitted to fewer hospitals' patients than it accepts in an aggregate")
    d, n = data.num_features, int(sum(counts))
    coef = fit_sigmoid_polynomial(interval=interval, degree=3)
    k = learning_rate / n

    hospital = Party(server_pub.context, params, secret=False)
    server = Party(server_pub.context, params, secret=False, rotation_keys=server_pub.rotation_keys())
    blobs = Blobs()
    bar = None
    try:
        t0 = time.perf_counter()
        uploads = _encrypt_columns(data, counts, hospital, blobs)
        time_encrypt = time.perf_counter() - t0
        t0 = time.perf_counter()
        held = _server_setup(server, blobs, uploads, d=d, n=n, k=k)
        time_setup = time.perf_counter() - t0

        authority.begin_training(epochs=epochs, n_weights=d + 1, level=params.depth - REQUIRED_DEPTH)
        w_plain = np.zeros(d + 1)
        w_blobs = authority.initial_weights(w_plain)
        server_times: list[float] = []
        refresh_times: list[float] = []
        history: list[np.ndarray] = []
        refresh_bytes = 0
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=epochs, desc="encrypted logreg", unit="epoch")
        for epoch in range(epochs):
            t0 = time.perf_counter()
            W = [blobs.load(server.ctx, b, what="refreshed weight") for b in w_blobs]
            to_authority = [blobs.dump(ct) for ct in _server_epoch(server, W, held, coef=coef, k=k, d=d)]
            server_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            w_plain, w_blobs = authority.refresh_weights(to_authority, epoch=epoch)
            refresh_times.append(time.perf_counter() - t0)
            refresh_bytes = sum(len(b) for b in to_authority) + sum(len(b) for b in w_blobs)
            if record_history:
                history.append(w_plain.copy())
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        blobs.close()

    X_all, _ = data.pooled()
    margins = X_all.astype(np.float64) @ w_plain[:d] + w_plain[d]
    out = int(np.sum((margins < interval[0]) | (margins > interval[1])))
    return EncryptedLRResult(
        weights=w_plain[:d].copy(), bias=float(w_plain[d]), epochs=epochs, n_patients=n,
        n_features=d, parameters=params, sigmoid_coefficients=coef, interval=tuple(interval),
        time_encrypt=time_encrypt, time_setup_server=time_setup,
        epoch_server_times=tuple(server_times), epoch_refresh_times=tuple(refresh_times),
        bytes_public_context=server_pub.serialized_size(), bytes_data_upload=sum(
            len(b) for mine in uploads for _, cts in mine for b in cts),
        bytes_refresh_per_epoch=refresh_bytes,
        ciphertexts_per_hospital=tuple(len(m) * (d + 1) for m in uploads),
        weight_history=tuple(history), out_of_interval=out,
    )
