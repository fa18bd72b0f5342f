"""``SecAggChannel``: secure aggregation as an aggregation channel of the round engine."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from securefed.channel import AggregationChannel, ChannelResult, DropoutPlan, Upload, check_uploads
from securefed.codec import Codec
from securefed.errors import ConfigurationError, InvalidDataError, KeyMaterialError, ProtocolAbort
from securefed.identity import IdentityKey, Roster
from securefed.secagg.encoding import FixedPointEncoder, choose_scale
from securefed.secagg.graph import choose_degree_and_threshold, complete_graph, harary_graph
from securefed.secagg.messages import NO_MODEL
from securefed.secagg.modes import (
    DEFAULT_MIN_CLIENTS,
    MALICIOUS,
    check_min_clients,
    check_mode,
    is_majority,
)
from securefed.secagg.protocol import STAGES, model_digest, run_round, stages_for

__all__ = ["SecAggChannel", "IntegerNoise"]


@runtime_checkable
class IntegerNoise(Protocol):
    """Distributed discrete noise for DP: each client adds one share of the total noise."""

    def sample(self, dim: int, *, scale: float, num_clients: int,
               rng: np.random.Generator) -> np.ndarray: ...


class SecAggChannel(AggregationChannel):
    """Pairwise-masking secure aggregation (Bonawitz et al., CCS 2017), optionally over the
    sparse SecAgg+ graph (Bell et al., CCS 2020).

    Each round, every selected client encodes ``[weight * update, weight]`` in fixed point
    (:class:`~securefed.secagg.encoding.FixedPointEncoder`), double-masks it and runs the four
    stages of :mod:`securefed.secagg.protocol`.  The server learns only the sum over the
    clients whose masked input arrived (``contributors``), and the channel returns its exact
    float decoding.  What the server received (public keys, share ciphertexts, masked
    vectors, revealed shares) is returned for the transcript; plaintext updates never are.

    Parameters
    ----------
    clip_range:
        Declared bound on ``|weight * update|`` per coordinate; values beyond are clipped
        (and a warning says how many were).
    max_weight:
        Declared bound on a client's weight (the extra coordinate); a larger weight is an error.
    scale:
        Fixed-point scale; ``None`` picks, each round, the largest power of two for which the
        round's ``n`` inputs cannot overflow ``Z_{2^bits}``.
    bits:
        ``b``: inputs and masks live in ``Z_{2^b}`` (default 32).
    mode:
        ``"malicious"`` (default): secure against a server that deviates from the protocol
        (signed advertisements bound to pinned identity keys, the consistency round with the
        model digest, client-side checks of everything the server sends, commitments to the
        self-mask seeds).  ``"honest-but-curious"``: the faster protocol against a server
        that follows it; the only mode that accepts a sub-majority threshold.
    min_clients:
        No round releases the sum of fewer contributors (default 3); the server and every
        client enforce it, and a round that falls below it aborts with
        :class:`~securefed.errors.ProtocolAbort`.  Values below 3 are accepted with a
        warning (with two contributors each learns the other's input).
    identities, roster:
        Malicious mode: the hospitals' identity keys (client id ->
        :class:`~securefed.identity.IdentityKey`) and the pinned roster.  Omitted, the
        channel plays the out-of-band distribution itself: it generates one identity per
        client id the first time it sees it (from the OS CSPRNG) and keeps it for later rounds.
    threshold:
        Shamir threshold ``t``; ``None`` means ``floor((n + c) / 2) + 1`` on the complete
        graph with ``c = floor(corrupt_fraction * n)`` colluding clients (a majority, as
        Bonawitz et al. require against an active server, large enough that two survivor
        sets each signed by ``t`` clients share an honest signer), and the value of
        :func:`~securefed.secagg.graph.choose_degree_and_threshold` in SecAgg+ mode.  A
        threshold that is not more than half of the share holders is refused in malicious
        mode (:class:`~securefed.errors.ConfigurationError`).
    secagg_plus:
        Use the random Harary graph of degree ``degree`` (``None``: chosen from
        ``corrupt_fraction``, ``dropout_fraction``, ``sigma`` and ``eta``).
    integer_noise:
        Distributed-DP hook.  When given, each client calls
        ``integer_noise.sample(dim, scale=<fixed-point scale>, num_clients=<n this round>,
        rng=<the client's generator>)`` and adds the returned int64 vector to the fixed-point encoding of its
        ``dim`` update coordinates (not to the weight coordinate), after clipping and
        rounding and before wrapping into ``Z_{2^b}`` and masking.  Only the sum, which
        carries the noise of every contributor, is ever unmasked.  The overflow check covers
        the clipped values only: choose ``bits``/``scale`` with headroom for the noise.

    Randomness.  Each client's stochastic rounding and noise share (in that order) come from
    its upload's own generator (:attr:`securefed.channel.Upload.rng`: the engine hands each
    client a per-round stream derived from the client's seed,
    :meth:`~securefed.federated.round.SeedStreams.channel_rng`), or from the OS when it has
    none; a deployed node does the same at the hospital.  The ``rng`` argument (the server's
    generator) is not used, so the server's stream (sampling, central DP noise) is the same
    whichever channel runs.  Keys, seeds and the SecAgg+ graph come from the OS CSPRNG.

    Threat model (see ``docs/secure-aggregation.md``): in malicious mode the server may
    deviate arbitrarily and collude with up to ``c`` clients; the roster is trusted; the
    server learns only sums of at least ``max(t, min_clients)`` contributors.  In
    honest-but-curious mode the server follows the protocol.  Neither mode validates inputs
    (a client can send any update).
    """

    name = "secagg"
    stages = STAGES

    def __init__(
        self,
        *,
        clip_range: float = 100.0,
        max_weight: float = 10_000.0,
        scale: float | None = None,
        bits: int = 32,
        threshold: int | None = None,
        secagg_plus: bool = False,
        degree: int | None = None,
        corrupt_fraction: float = 0.05,
        dropout_fraction: float = 0.1,
        sigma: float = 40.0,
        eta: float = 20.0,
        integer_noise: IntegerNoise | None = None,
        mode: str = MALICIOUS,
        min_clients: int = DEFAULT_MIN_CLIENTS,
        identities: Mapping[int, IdentityKey] | None = None,
        roster: Roster | None = None,
    ) -> None:
        for label, value in (("clip_range", clip_range), ("max_weight", max_weight)):
            if not (np.isfinite(value) and value > 0):
                raise ConfigurationError(f"{label} must be a finite value > 0, got {value!r}")
        if scale is not None and not (np.isfinite(scale) and scale > 0):
            raise ConfigurationError(f"scale must be None or a finite value > 0, got {scale!r}")
        if not isinstance(bits, int) or not 2 <= bits <= 64:
            raise ConfigurationError(f"bits must be an integer in [2, 64], got {bits!r}")
        if threshold is not None and (not isinstance(threshold, int) or threshold < 1):
            raise ConfigurationError(f"threshold must be None or an integer >= 1, got {threshold!r}")
        if degree is not None and (not isinstance(degree, int) or degree < 2 or degree % 2):
            raise ConfigurationError(f"degree must be None or an even integer >= 2, got {degree!r}")
        if integer_noise is not None and not callable(getattr(integer_noise, "sample", None)):
            raise ConfigurationError("integer_noise must have a sample(dim, *, scale, num_clients, rng) method")
        self.clip_range = float(clip_range)
        self.max_weight = float(max_weight)
        self.scale = scale
        self.bits = bits
        self.threshold = threshold
        self.secagg_plus = secagg_plus
        self.degree = degree
        self.corrupt_fraction = corrupt_fraction
        self.dropout_fraction = dropout_fraction
        self.sigma = sigma
        self.eta = eta
        self.integer_noise = integer_noise
        self.mode = check_mode(mode)
        self.stages = stages_for(self.mode)
        self.min_clients = check_min_clients(min_clients)
        self.min_contributors = self.min_clients  # the channel contract's name for it
        if self.min_clients < DEFAULT_MIN_CLIENTS:
            warnings.warn(f"secagg: min_clients = {self.min_clients} lets a round release the sum "
                          f"of {self.min_clients} hospital(s): with two, each learns the other's "
                          "input from the sum", stacklevel=2)
        if (identities is None) != (roster is None):
            raise KeyMaterialError("give both identities and roster, or neither (the channel then "
                                   "generates its own)")
        self._identities: dict[int, IdentityKey] = dict(identities or {})
        self._roster = roster
        self._own_pki = roster is None
        self._model_digests: dict[int, bytes] = {}

    def encoder_for(self, num_clients: int) -> FixedPointEncoder:
        """The fixed-point encoder of a round with ``num_clients`` clients (overflow-checked)."""
        scale = self.scale if self.scale is not None else choose_scale(
            clip_range=self.clip_range, max_weight=self.max_weight, bits=self.bits,
            num_clients=num_clients)
        enc = FixedPointEncoder(clip_range=self.clip_range, max_weight=self.max_weight,
                                scale=float(scale), bits=self.bits)
        enc.check_overflow(num_clients=num_clients)
        return enc

    def default_threshold(self, n: int) -> int:
        """``floor((n + c) / 2) + 1`` with ``c = floor(corrupt_fraction * n)`` (complete graph)."""
        c = int(np.floor(self.corrupt_fraction * n))
        return min(n, (n + c) // 2 + 1)

    def graph_for(self, ids: Sequence[int]) -> tuple[dict[int, frozenset[int]], int, int]:
        """``(graph, degree, threshold)`` for a round over ``ids``."""
        n = len(ids)
        if not self.secagg_plus or n <= 2:
            t = self.threshold if self.threshold is not None else self.default_threshold(n)
            graph, k = complete_graph(ids), n - 1
        else:
            if self.degree is None:
                try:
                    k, t_auto = choose_degree_and_threshold(
                        n, corrupt_fraction=self.corrupt_fraction,
                        dropout_fraction=self.dropout_fraction, sigma=self.sigma, eta=self.eta,
                        mode=self.mode)
                except ConfigurationError as exc:  # the complete graph keeps a majority
                    k, t_auto = n - 1, self.default_threshold(n)
                    warnings.warn(f"secagg+: {exc}; using the complete graph with the majority "
                                  f"threshold t = {t_auto}", stacklevel=3)
            else:
                k = min(self.degree, n - 1)
                t_auto = (k + 1) // 2 + 1
            t = self.threshold if self.threshold is not None else t_auto
            graph = complete_graph(ids) if k >= n - 1 else harary_graph(ids, degree=k)
            k = min(k, n - 1)
        if t > k + 1:
            raise ConfigurationError(
                f"threshold {t} exceeds the {k + 1} share holders (degree {k} + the client itself)"
            )
        if self.mode == MALICIOUS and not is_majority(t, k + 1):
            raise ConfigurationError(
                f"threshold t = {t} is not more than half of the {k + 1} share holders (degree "
                f"{k} + the client itself): malicious mode refuses it; choose t >= "
                f"{(k + 1) // 2 + 1} or pass mode='honest-but-curious' explicitly")
        return graph, k, t

    def broadcast_bytes(self, params: np.ndarray, *, round_index: int) -> int:
        """Also records the digest of the model every client receives this round, which the
        survivors sign in the consistency round."""
        self._model_digests = {round_index: model_digest(np.asarray(params, dtype=np.float64))}
        return super().broadcast_bytes(params, round_index=round_index)

    def _pki_for(self, ids: Sequence[int]) -> tuple[dict[int, IdentityKey], Roster]:
        """The identities and pinned roster of a malicious-mode round."""
        missing = [i for i in ids if i not in self._identities]
        if missing:
            if not self._own_pki:
                raise KeyMaterialError(f"no identity key for clients {missing[:10]} in the given "
                                       "identities")
            for i in missing:
                self._identities[i] = IdentityKey.generate(f"client-{i}", i)
            self._roster = Roster(k.entry() for k in self._identities.values())
        assert self._roster is not None
        return self._identities, self._roster

    def aggregate(
        self,
        uploads: Sequence[Upload],
        *,
        round_index: int,
        dim: int,
        codec: Codec,
        dropouts: DropoutPlan,
        rng: np.random.Generator,
    ) -> ChannelResult:
        check_uploads(uploads, dim=dim)
        if not uploads:
            raise InvalidDataError("secure aggregation needs at least one upload, got none")
        ids = [int(up.client_id) for up in uploads]
        n = len(ids)
        if n < self.min_clients:
            raise ProtocolAbort(
                f"secagg round {round_index} has {n} contributor(s), below the minimum of "
                f"{self.min_clients}: the sum would reveal too much about each; round aborted")
        identities, roster = self._pki_for(ids) if self.mode == MALICIOUS else (None, None)
        encoder = self.encoder_for(n)
        graph, degree, t = self.graph_for(ids)
        by_id = {int(up.client_id): up for up in uploads}
        clipped = [0]

        def encode(cid: int) -> np.ndarray:
            up = by_id[cid]
            # the client's own stream (never the server's): rounding, then its noise share
            own = up.rng if up.rng is not None else _os_generator()
            v = np.asarray(up.vector, dtype=np.float64)
            clipped[0] += int(np.count_nonzero(np.abs(v) > self.clip_range))
            ints, w = encoder.encode_signed(v, float(up.weight), rng=own)
            if self.integer_noise is not None:
                noise = np.asarray(self.integer_noise.sample(dim, scale=encoder.scale,
                                                             num_clients=n, rng=own))
                if noise.shape != (dim,) or noise.dtype.kind not in "iu":
                    raise InvalidDataError(
                        f"integer_noise.sample returned {noise.dtype} of shape {noise.shape}, "
                        f"expected an integer array of shape ({dim},)"
                    )
                ints = ints + noise.astype(np.int64)
            return encoder.wrap(np.append(ints, w))

        t0 = time.perf_counter()
        outcome = run_round(
            ids, encode, round_index=round_index, threshold=t, bits=self.bits, length=dim + 1,
            graph=graph, alive=lambda cid, stage: dropouts.alive_at(cid, stage, self.stages),
            mode=self.mode, min_clients=self.min_clients, identities=identities, roster=roster,
            model_digest=self._model_digests.get(round_index, NO_MODEL),
        )
        wall = time.perf_counter() - t0
        if clipped[0]:
            warnings.warn(f"secagg: {clipped[0]} coordinates were clipped to +-{self.clip_range}; "
                          "raise clip_range if this is frequent", stacklevel=2)
        decoded = encoder.decode(outcome.total)
        weighted_sum, weight_sum = decoded[:dim], float(decoded[dim])
        per_client = [outcome.client_seconds[c] for c in outcome.advertised] or [0.0]
        timings = {f"client.{s}": v for s, v in outcome.client_stage_seconds.items()}
        timings.update({f"server.{s}": v for s, v in outcome.server_stage_seconds.items()})
        timings.update({
            "client_mean": float(np.mean(per_client)),
            "client_max": float(np.max(per_client)),
            "server_total": float(sum(outcome.server_stage_seconds.values())),
            "protocol_wall": wall,
        })
        return ChannelResult(
            weighted_sum=weighted_sum,
            weight_sum=weight_sum,
            contributors=outcome.survivors,
            bytes_up=outcome.bytes_up,
            bytes_down=outcome.bytes_down,
            received=outcome.received,
            timings=timings,
            revealed={
                "weighted_sum": weighted_sum,
                "weight_sum": weight_sum,
                "survivors": outcome.survivors,
                "dropped_after_sharing": tuple(sorted(set(outcome.shared) - set(outcome.survivors))),
                "threshold": t,
                "degree": degree,
                "scale": encoder.scale,
                "bits": self.bits,
                "mode": self.mode,
                "min_clients": self.min_clients,
            },
        )


def _os_generator() -> np.random.Generator:
    """A generator seeded with 256 bits from the OS, for a client that brought none."""
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(os.urandom(32), "big")))


def secagg_channel_for(dp: Any, *, bits: int = 32, tail: float = 8.0, **kwargs: Any) -> SecAggChannel:
    """A :class:`SecAggChannel` that adds a distributed-DP mechanism's integer noise shares.

    ``dp`` is a :class:`securefed.dp.DistributedDP` (anything with ``integer_noise`` and
    ``secagg_clip_range``): its :meth:`~securefed.dp.DistributedDP.secagg_clip_range` widens
    the overflow range so the noise fits.  Weights are uniform, so ``max_weight=1``.  Extra
    keyword arguments go to :class:`SecAggChannel`.
    """
    return SecAggChannel(clip_range=dp.secagg_clip_range(tail=tail), max_weight=1.0, bits=bits,
                         integer_noise=dp.integer_noise, **kwargs)
