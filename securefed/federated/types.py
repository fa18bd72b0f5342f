"""Typed values of the round engine.

What local training produced at a client (:class:`LocalResult`), the public configuration of
a round (:class:`LocalConfig`), what the server saw in a round (:class:`RoundTranscript`) and
what a whole run produced (:class:`RunResult`).  Attacks read transcripts; evaluation reads
run results.  The hospital arrays live in :mod:`securefed.arrays` and the channel contract
(``Upload``, ``ChannelResult``, ...) in :mod:`securefed.channel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from securefed.channel import ReceivedMessage

__all__ = [
    "FederationFacts",
    "LocalConfig",
    "LocalResult",
    "RoundTranscript",
    "RoundRecord",
    "RunResult",
]

# Names that moved below the engine; importing them from here still works, with a warning.
_MOVED = {
    "ClientArrays": "securefed.arrays",
    "FederatedArrays": "securefed.arrays",
    "Upload": "securefed.channel",
    "DropoutPlan": "securefed.channel",
    "ReceivedMessage": "securefed.channel",
    "ChannelResult": "securefed.channel",
}


def __getattr__(name: str) -> Any:
    from securefed._compat import moved

    return moved(__name__, name, _MOVED)


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
class FederationFacts:
    """What a runner tells the strategy before round 0: the federation it really runs on, how
    it samples clients, and whether training continues from saved parameters.

    Privacy accounting depends on every field: the number of clients comes from the data, not
    from a declaration; amplification by sampling is valid only for a Poisson sample drawn
    from a secret CSPRNG and never published (``sampling="poisson"``, ``sample_secret``,
    ``not sample_published``).  The in-process engine and the Flower ServerApp draw a
    fixed-size sample from the seeded server generator and record it, so they state
    ``sampling="fixed"``, ``sample_secret=False``, ``sample_published=True``.

    ``privacy_ledger`` is the ledger saved with the parameters training continues from
    (``RunResult.privacy_ledger``), ``None`` for a fresh model.
    """

    num_clients: int
    clients_per_round: int | None = None
    sampling: str = "fixed"
    sample_secret: bool = False
    sample_published: bool = True
    continuing: bool = False
    privacy_ledger: Any = None


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
    #: hospital name -> {"accuracy", "auc", "loss", "n"} on that hospital's own test patients
    per_hospital: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


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
    privacy_ledger: Mapping[str, Any] | None = None  # saved with the model (securefed.dp.ledger)

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
                    **({"per_hospital": {h: dict(m) for h, m in r.per_hospital.items()}}
                       if r.per_hospital else {}),
                }
                for r in self.history
            ],
            "final_params": [float(x) for x in self.final_params],
            "privacy_ledger": None if self.privacy_ledger is None else dict(self.privacy_ledger),
        }
