"""Aggregation channels: how the clients' uploads are combined into one sum.

The channel contract (the values a client hands over and a channel hands back, and the
abstract channel) sits below the engine and below every protection that implements it, so
that secure aggregation and CKKS never import the engine.

A channel receives, for one round, every surviving client's :class:`Upload` (its update
pre-scaled by its weight, plus the weight) and returns the sum of the contributors' vectors
and of their weights, the bytes each client really sent and received, the time of each
phase, and what the server received (for the transcript).

Implementations:

* :class:`PlainChannel` (here): each client sends its encoded update in the clear.
* ``securefed.secagg.SecAggChannel``: pairwise-masking secure aggregation.
* ``securefed.he.CKKSChannel``: additively homomorphic CKKS encryption.

A channel declares the ordered names of its protocol ``stages``; a :class:`DropoutPlan`
names the stage before which a client drops.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefed.codec import Codec
from securefed.errors import InvalidDataError
from securefed.wire import pack, unpack

__all__ = [
    "Upload",
    "DropoutPlan",
    "ReceivedMessage",
    "ChannelResult",
    "AggregationChannel",
    "PlainChannel",
    "check_uploads",
]


@dataclass(frozen=True)
class Upload:
    """What one client hands to the aggregation channel.

    ``vector`` is the client's update pre-scaled by its weight (after any clipping, noise and
    compression, in decoded float form); ``payload`` is the encoded form of the same vector
    that a plain channel transmits (see :mod:`securefed.codec`); ``weight`` is the
    client-side weight, which the channel sums alongside.

    ``rng`` is the client's own generator for the steps a channel performs on the client's
    behalf in a simulation (secure aggregation's stochastic rounding to the fixed-point grid
    and a distributed-DP noise share): client-side randomness comes from the client, never
    from the server's generator.  The engine hands each client a stream of its own per round
    (:meth:`securefed.federated.round.SeedStreams.channel_rng`); ``None`` lets the channel
    draw from the OS.
    """

    client_id: int
    vector: np.ndarray
    weight: float
    payload: Mapping[str, Any]
    rng: np.random.Generator | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class DropoutPlan:
    """Which clients drop out of a round, and before which stage of the channel's protocol.

    ``drops`` maps a client id to the name of the first stage whose message it never sends.
    A client not in ``drops`` stays to the end.
    """

    drops: Mapping[int, str] = field(default_factory=dict)

    def alive_at(self, client_id: int, stage: str, stages: tuple[str, ...]) -> bool:
        """True when ``client_id`` still sends its message of ``stage``."""
        if client_id not in self.drops:
            return True
        return stages.index(stage) < stages.index(self.drops[client_id])


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the server received it (what an honest-but-curious server observes)."""

    stage: str
    sender: int
    nbytes: int
    content: Mapping[str, Any]


@dataclass(frozen=True)
class ChannelResult:
    """What an aggregation channel returns for one round."""

    weighted_sum: np.ndarray  # sum of contributors' weighted vectors, float64
    weight_sum: float
    contributors: tuple[int, ...]
    bytes_up: Mapping[int, int]
    bytes_down: Mapping[int, int]
    received: tuple[ReceivedMessage, ...]
    timings: Mapping[str, float]
    revealed: Mapping[str, Any] = field(default_factory=dict)


def check_uploads(uploads: Sequence[Upload], *, dim: int) -> None:
    """Validate uploads before aggregation: unique ids, right length, finite values, weight >= 0."""
    seen: set[int] = set()
    for up in uploads:
        if up.client_id in seen:
            raise InvalidDataError(f"duplicate client id {up.client_id} in one round")
        seen.add(up.client_id)
        v = np.asarray(up.vector)
        if v.shape != (dim,):
            raise InvalidDataError(
                f"client {up.client_id} sent a vector of shape {v.shape}, expected ({dim},)"
            )
        if not np.all(np.isfinite(v)):
            raise InvalidDataError(f"client {up.client_id} sent a vector with NaN or inf values")
        if not np.isfinite(up.weight) or up.weight < 0:
            raise InvalidDataError(
                f"client {up.client_id} sent weight {up.weight!r}, expected a finite value >= 0"
            )


class AggregationChannel(ABC):
    """How uploads are combined. Subclasses set ``name`` and ``stages``."""

    name: str = "abstract"
    stages: tuple[str, ...] = ("upload",)
    #: the fewest contributors whose sum the channel releases (a protecting channel refuses
    #: to reveal the aggregate of fewer: with one or two, it is a hospital's own update)
    min_contributors: int = 1

    @abstractmethod
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
        """Combine one round's uploads; clients dropped per ``dropouts`` contribute nothing."""

    def broadcast_bytes(self, params: np.ndarray, *, round_index: int) -> int:
        """Bytes of the message that carries the global model to one client."""
        return len(pack({"round": round_index, "w": np.asarray(params, dtype=np.float32)}))


class PlainChannel(AggregationChannel):
    """No protection: each client sends its encoded weighted update and weight in the clear.

    The server sees every individual update; this is the baseline that attacks target.
    """

    name = "plain"
    stages = ("upload",)

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
        total = np.zeros(dim, dtype=np.float64)
        weight_sum = 0.0
        contributors: list[int] = []
        bytes_up: dict[int, int] = {}
        received: list[ReceivedMessage] = []
        t_encode = 0.0
        t_agg = 0.0
        for up in uploads:
            if not dropouts.alive_at(up.client_id, "upload", self.stages):
                bytes_up[up.client_id] = 0
                continue
            t0 = time.perf_counter()
            blob = pack({"round": round_index, "client": up.client_id, "weight": float(up.weight),
                         **up.payload})
            t1 = time.perf_counter()
            fields = unpack(blob)
            if fields["round"] != round_index or fields["client"] != up.client_id:
                raise InvalidDataError(
                    f"message for round {fields['round']} from client {fields['client']}, "
                    f"expected round {round_index} from client {up.client_id}"
                )
            vec = codec.decode(fields, dim=dim)
            total += vec
            weight_sum += float(fields["weight"])
            t2 = time.perf_counter()
            t_encode += t1 - t0
            t_agg += t2 - t1
            contributors.append(up.client_id)
            bytes_up[up.client_id] = len(blob)
            received.append(ReceivedMessage(stage="upload", sender=up.client_id, nbytes=len(blob),
                                            content={"update": vec, "weight": float(fields["weight"])}))
        return ChannelResult(
            weighted_sum=total,
            weight_sum=weight_sum,
            contributors=tuple(contributors),
            bytes_up=bytes_up,
            bytes_down={},
            received=tuple(received),
            timings={"upload_encode": t_encode, "aggregation": t_agg},
        )
