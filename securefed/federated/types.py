"""Typed values that travel between the layers of securefed.

These frozen dataclasses are the contracts of the round engine: what a client hands to an
aggregation channel (:class:`Upload`), what a channel hands back (:class:`ChannelResult`),
what the server saw in a round (:class:`RoundTranscript`) and what a whole run produced
(:class:`RunResult`).  Attacks read transcripts; evaluation reads run results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ClientArrays",
    "FederatedArrays",
    "LocalConfig",
    "LocalResult",
    "Upload",
    "DropoutPlan",
    "ReceivedMessage",
    "ChannelResult",
    "RoundTranscript",
    "RoundRecord",
    "RunResult",
]


@dataclass(frozen=True)
class ClientArrays:
    """One hospital's training data, harmonised and standardised, as float32 arrays.

    ``X`` has shape ``(n, d)``; ``y`` holds 0/1 labels of shape ``(n,)``.
    """

    client_id: int
    name: str
    X: np.ndarray
    y: np.ndarray

    @property
    def num_examples(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True)
class FederatedArrays:
    """Training data of every hospital plus held-out test data, ready for a model."""

    clients: tuple[ClientArrays, ...]
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    description: str = ""

    @property
    def num_features(self) -> int:
        return int(self.X_test.shape[1])

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """All training rows stacked (only the centralised baseline may use this)."""
        return (
            np.concatenate([c.X for c in self.clients]),
            np.concatenate([c.y for c in self.clients]),
        )


@dataclass(frozen=True)
class LocalConfig:
    """The public hyper-parameters of one round of local training (sent with the model)."""

    learning_rate: float
    local_epochs: int
    batch_size: int | None  # None: full batch
    proximal_mu: float = 0.0
    optimizer: str = "sgd"
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalResult:
    """What local training produced at one client (never leaves the client as such)."""

    update: np.ndarray  # w_local - w_global, float64
    num_examples: int
    train_loss: float  # mean loss over the local epochs
    initial_loss: float  # loss of the incoming global model on the local data
    label_balance: float  # fraction of positive labels
    steps: int


@dataclass(frozen=True)
class Upload:
    """What one client hands to the aggregation channel.

    ``vector`` is the client's update pre-scaled by its weight (after any clipping, noise and
    compression, in decoded float form); ``payload`` is the encoded form of the same vector
    that a plain channel transmits (see :mod:`securefed.federated.codec`); ``weight`` is the
    client-side weight, which the channel sums alongside.
    """

    client_id: int
    vector: np.ndarray
    weight: float
    payload: Mapping[str, Any]


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


@dataclass(frozen=True)
class RoundTranscript:
    """What the server (and so a curious server) saw during one round."""

    round_index: int
    global_params: np.ndarray
    config: LocalConfig
    selected: tuple[int, ...]
    contributors: tuple[int, ...]
    channel: str
    received: tuple[ReceivedMessage, ...]
    revealed_update: np.ndarray | None  # the aggregate the protocol revealed (weighted mean)


@dataclass(frozen=True)
class RoundRecord:
    """Metrics of one round."""

    round_index: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    test_auc: float
    bytes_up: int
    bytes_down: int
    times: Mapping[str, float]
    num_selected: int
    num_contributors: int
    extra: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """A whole training run: per-round history, the final model and (optionally) the transcript."""

    algorithm: str
    channel: str
    model: Any  # ModelSpec
    seed: int
    history: tuple[RoundRecord, ...]
    final_params: np.ndarray
    transcript: tuple[RoundTranscript, ...] | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> RoundRecord:
        return self.history[-1]

    def total_bytes_up(self) -> int:
        return int(sum(r.bytes_up for r in self.history))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no transcript, parameters as a list)."""
        return {
            "algorithm": self.algorithm,
            "channel": self.channel,
            "model": self.model.to_dict() if hasattr(self.model, "to_dict") else str(self.model),
            "seed": self.seed,
            "settings": dict(self.settings),
            "history": [
                {
                    "round": r.round_index,
                    "train_loss": r.train_loss,
                    "test_loss": r.test_loss,
                    "test_accuracy": r.test_accuracy,
                    "test_auc": r.test_auc,
                    "bytes_up": r.bytes_up,
                    "bytes_down": r.bytes_down,
                    "times": dict(r.times),
                    "num_selected": r.num_selected,
                    "num_contributors": r.num_contributors,
                    **{k: v for k, v in r.extra.items()},
                }
                for r in self.history
            ],
            "final_params": [float(x) for x in self.final_params],
        }
