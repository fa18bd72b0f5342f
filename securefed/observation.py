"""What an adversary observes, and what it is assumed to know beforehand.

A training run leaves a :class:`~securefed.federated.types.RunResult` whose transcript records,
round by round, every message as the server received it.  Different adversaries see different
parts of it; :func:`observe` cuts the transcript down to one adversary's view:

``"server"``    an honest-but-curious server (it follows the protocol but keeps and studies
                everything it receives).  Over the plain channel it reads each client's update
                in the clear; over a secure channel (pairwise-masking secure aggregation, CKKS)
                the individual messages are masked integers or ciphertexts, so it gets only the
                aggregate the protocol reveals (Bonawitz et al., CCS 2017, section 2).
``"client"``    a curious hospital: it knows its own update and receives each new global model,
                so it sees the aggregate of the rounds it took part in (as model differences).
``"outsider"``  anyone holding the released final model (white-box parameters, or query access).

:class:`PriorKnowledge` is the separate, declared side-knowledge of an attacker: the schema
of the records (which columns are continuous, which form a one-hot categorical block), public
marginals of each column, the model architecture, and optionally public reference records
(for shadow models).  Attacks take both; they never receive ground truth.

The observation is part of the core package because both the named defense settings and the
attacks build on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from securefed.errors import ConfigurationError, InvalidDataError
from securefed.federated.types import LocalConfig, RoundTranscript, RunResult
from securefed.models import ModelSpec, set_flat_params

__all__ = [
    "ADVERSARIES",
    "CLEAR_CHANNELS",
    "FeatureBlock",
    "PublicMarginals",
    "PriorKnowledge",
    "ObservedUpdate",
    "Observation",
    "observe",
]

#: The adversaries :func:`observe` knows how to model.
ADVERSARIES = ("server", "client", "outsider")

#: Channels whose messages carry each client's update in the clear.
CLEAR_CHANNELS = frozenset({"plain"})


# --------------------------------------------------------------------------- prior knowledge
@dataclass(frozen=True)
class FeatureBlock:
    """One original feature and the model-input columns it occupies.

    A continuous feature takes one column (in standardised units); a two-level feature coded
    as one 0/1 indicator column is ``"binary"``; a categorical feature with ``k`` categories
    takes ``k`` one-hot columns.
    """

    name: str
    kind: str  # "continuous" | "binary" | "categorical"
    columns: tuple[int, ...]
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("continuous", "binary", "categorical"):
            raise ConfigurationError(
                f"feature {self.name!r}: kind must be 'continuous', 'binary' or 'categorical', "
                f"got {self.kind!r}"
            )
        if self.kind in ("continuous", "binary") and len(self.columns) != 1:
            raise ConfigurationError(
                f"{self.kind} feature {self.name!r} must occupy 1 column, got {len(self.columns)}"
            )
        if self.kind == "categorical" and len(self.columns) < 2:
            raise ConfigurationError(
                f"categorical feature {self.name!r} needs >= 2 one-hot columns, got {len(self.columns)}"
            )


@dataclass(frozen=True)
class PublicMarginals:
    """Per-column public statistics of the model inputs, and the public rate of positive labels.

    ``mean``, ``std``, ``low`` and ``high`` have one entry per input column (for one-hot columns
    ``mean`` is the category frequency).  ``label_rate`` is ``P(y = 1)``.  ``quantiles`` holds,
    for each column, sorted public values used to sample from the marginal without assuming a
    shape.
    """

    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    label_rate: float
    quantiles: np.ndarray  # shape (q, d)

    @classmethod
    def from_data(cls, X: np.ndarray, y: np.ndarray | None = None, *, n_quantiles: int = 101
                  ) -> PublicMarginals:
        """Marginals estimated from public records ``X`` (and labels ``y`` when given)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 2:
            raise InvalidDataError(f"public data must be a 2-D array with >= 2 rows, got shape {X.shape}")
        qs = np.quantile(X, np.linspace(0.0, 1.0, n_quantiles), axis=0)
        rate = float(np.mean(y)) if y is not None and len(y) else 0.5
        return cls(mean=X.mean(0), std=X.std(0) + 1e-12, low=X.min(0), high=X.max(0),
                   label_rate=rate, quantiles=qs)

    def sample(self, n: int, *, rng: np.random.Generator) -> np.ndarray:
        """``n`` rows with each column drawn independently from its public marginal."""
        q = self.quantiles.shape[0]
        u = rng.uniform(0, q - 1, size=(n, self.quantiles.shape[1]))
        lo = np.floor(u).astype(int)
        hi = np.minimum(lo + 1, q - 1)
        frac = u - lo
        cols = np.arange(self.quantiles.shape[1])
        return self.quantiles[lo, cols] * (1 - frac) + self.quantiles[hi, cols] * frac


@dataclass(frozen=True)
class PriorKnowledge:
    """What an attacker is declared to know before it observes anything.

    ``features`` is the schema (how input columns map to original features); ``marginals`` the
    public per-column statistics; ``model`` the architecture; ``local_config`` overrides the
    training hyper-parameters read from the transcript (an attacker that must *guess* local
    epochs and learning rate puts its guess here); ``reference_X``/``reference_y`` are public
    records from the same population (for shadow models), never the targets' training data.
    """

    features: tuple[FeatureBlock, ...]
    marginals: PublicMarginals
    model: ModelSpec | None = None
    local_config: LocalConfig | None = None
    reference_X: np.ndarray | None = None
    reference_y: np.ndarray | None = None

    def __post_init__(self) -> None:
        cols = sorted(c for f in self.features for c in f.columns)
        if cols != list(range(len(cols))):
            raise ConfigurationError(
                f"feature blocks must cover columns 0..d-1 exactly once, got {cols}"
            )
        if self.marginals.mean.shape != (len(cols),):
            raise ConfigurationError(
                f"marginals describe {self.marginals.mean.shape[0]} columns, schema has {len(cols)}"
            )
        if self.model is not None and self.model.n_features != len(cols):
            raise ConfigurationError(
                f"model expects {self.model.n_features} features, schema has {len(cols)}"
            )

    @property
    def n_columns(self) -> int:
        return int(self.marginals.mean.shape[0])

    @property
    def continuous_columns(self) -> tuple[int, ...]:
        return tuple(f.columns[0] for f in self.features if f.kind == "continuous")

    @property
    def binary_columns(self) -> tuple[int, ...]:
        return tuple(f.columns[0] for f in self.features if f.kind == "binary")

    @property
    def categorical_blocks(self) -> tuple[FeatureBlock, ...]:
        return tuple(f for f in self.features if f.kind == "categorical")

    def feature(self, name: str) -> FeatureBlock:
        for f in self.features:
            if f.name == name:
                return f
        raise ConfigurationError(
            f"unknown feature {name!r}; valid: {[f.name for f in self.features]}"
        )

    @classmethod
    def from_schema(
        cls,
        schema: Any,
        X: np.ndarray,
        y: np.ndarray | None = None,
        **kwargs: Any,
    ) -> PriorKnowledge:
        """The prior for data encoded by a :class:`securefed.data.Schema`.

        Numeric features are continuous columns; a two-category feature is one 0/1 indicator
        column (``binary``); a feature with more categories is a one-hot block, in the order
        of ``schema.encoded_feature_names``.  ``X``/``y`` are public records so encoded.
        """
        names: list[str] = []
        categorical: dict[str, list[int]] = {}
        binary: list[int] = []
        j = 0
        for f in schema.features:
            cols = list(f.encoded_names)
            names.extend(cols)
            if f.kind == "categorical" and len(cols) == 1:
                binary.append(j)
            elif f.kind == "categorical":
                categorical[f.name] = list(range(j, j + len(cols)))
            j += len(cols)
        prior = cls.from_public_data(X, y, feature_names=names, categorical=categorical,
                                     binary=binary, **kwargs)
        # name a binary feature after the original feature, not after its indicator column
        by_column = {n: f for f in schema.features for n in f.encoded_names}
        renamed = []
        for blk in prior.features:
            if blk.kind == "binary":
                f = by_column[blk.name]
                blk = FeatureBlock(f.name, "binary", blk.columns, tuple(f.categories))
            renamed.append(blk)
        return dataclasses.replace(prior, features=tuple(renamed))

    @classmethod
    def from_public_data(
        cls,
        X: np.ndarray,
        y: np.ndarray | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        categorical: Mapping[str, Sequence[int]] | None = None,
        binary: Sequence[int] = (),
        model: ModelSpec | None = None,
        local_config: LocalConfig | None = None,
        keep_reference: bool = False,
    ) -> PriorKnowledge:
        """Build the prior from public records.

        ``categorical`` maps a feature name to the one-hot columns it occupies; ``binary``
        lists 0/1 indicator columns; every other column is a continuous feature named by
        ``feature_names`` (default ``x0, x1, ...``).  With ``keep_reference`` the public rows
        are kept as shadow data.
        """
        X = np.asarray(X, dtype=np.float64)
        d = X.shape[1]
        names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(d)]
        if len(names) != d:
            raise ConfigurationError(f"feature_names has {len(names)} names, data has {d} columns")
        categorical = dict(categorical or {})
        in_blocks = {c for cols in categorical.values() for c in cols}
        blocks: list[FeatureBlock] = []
        for j in range(d):
            if j in in_blocks:
                for fname, cols in categorical.items():
                    if min(cols) == j:
                        blocks.append(FeatureBlock(fname, "categorical", tuple(int(c) for c in cols),
                                                   tuple(names[c] for c in cols)))
                continue
            blocks.append(FeatureBlock(names[j], "binary" if j in set(binary) else "continuous", (j,)))
        return cls(
            features=tuple(blocks),
            marginals=PublicMarginals.from_data(X, y),
            model=model,
            local_config=local_config,
            reference_X=X.astype(np.float32) if keep_reference else None,
            reference_y=None if (y is None or not keep_reference) else np.asarray(y, np.float32),
        )


# --------------------------------------------------------------------------- observations
@dataclass(frozen=True)
class ObservedUpdate:
    """One model update as an adversary sees it.

    ``source`` is ``"client"`` for an individual client's update (``update`` is that client's own
    model delta ``w_local - w_global``, i.e. the received weighted vector divided by its weight;
    ``weight`` is the weight as received, which under FedAvg is the client's example count) or
    ``"aggregate"`` for the revealed mean over ``contributors`` (``weight`` is ``None``).
    ``global_params`` is the model the round started from and ``config`` its public local
    hyper-parameters.
    """

    round_index: int
    source: str
    sender: int | None
    update: np.ndarray
    weight: float | None
    contributors: tuple[int, ...]
    global_params: np.ndarray
    config: LocalConfig


@dataclass(frozen=True)
class Observation:
    """Everything one adversary observed of a run (see :func:`observe`)."""

    adversary: str
    channel: str
    model: ModelSpec | None
    updates: tuple[ObservedUpdate, ...]
    final_params: np.ndarray | None
    per_client: bool
    client_id: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def select(
        self,
        *,
        round_index: int | None = None,
        sender: int | None = None,
        source: str | None = None,
    ) -> tuple[ObservedUpdate, ...]:
        """The observed updates matching every given filter."""
        return tuple(
            u for u in self.updates
            if (round_index is None or u.round_index == round_index)
            and (sender is None or u.sender == sender)
            and (source is None or u.source == source)
        )

    def build_final_model(self) -> torch.nn.Module:
        """The released model as a torch module (white-box access)."""
        if self.final_params is None or self.model is None:
            raise ConfigurationError(
                f"the {self.adversary!r} observation holds no final model "
                f"(final_params is {'set' if self.final_params is not None else 'None'}, "
                f"model is {self.model!r})"
            )
        net = self.model.build(seed=0)
        set_flat_params(net, self.final_params)
        net.eval()
        return net

    def predict_logits(self, X: np.ndarray) -> np.ndarray:
        """Black-box query: the final model's logit ``log P(y=1|x) / P(y=0|x)`` for each row.

        Membership attacks score logits, not probabilities: a float32 probability rounds to
        exactly 0 or 1 once the logit passes about 17, and an overfitted model puts many
        training records there, so every score computed from the probability would tie.
        """
        net = self.build_final_model()
        with torch.no_grad():
            logits = net(torch.as_tensor(np.asarray(X), dtype=torch.float32))
        return logits.double().numpy().reshape(-1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Black-box query: ``P(y = 1 | x)`` of the final model for each row of ``X``
        (computed in float64 from the logits)."""
        z = self.predict_logits(X)
        return 1.0 / (1.0 + np.exp(-z))


def _client_updates(t: RoundTranscript, dim: int) -> tuple[list, list[str]]:
    """Per-client updates readable in the clear from one round's messages (plain channel only)."""
    out = []
    notes: list[str] = []
    if t.channel not in CLEAR_CHANNELS:
        return out, notes
    for msg in t.received:
        u = msg.content.get("update")
        w = msg.content.get("weight")
        if not isinstance(u, np.ndarray) or u.shape != (dim,) or not np.issubdtype(u.dtype, np.floating):
            notes.append(f"round {t.round_index}: message from client {msg.sender} carries no clear update")
            continue
        if w is None or not float(w) > 0:
            notes.append(f"round {t.round_index}: client {msg.sender} sent weight {w!r}; update skipped")
            continue
        out.append(ObservedUpdate(
            round_index=t.round_index, source="client", sender=int(msg.sender),
            update=np.asarray(u, np.float64) / float(w), weight=float(w),
            contributors=(int(msg.sender),), global_params=np.asarray(t.global_params, np.float64),
            config=t.config,
        ))
    return out, notes


def _aggregate(t: RoundTranscript, delta: np.ndarray | None = None) -> ObservedUpdate | None:
    vec = delta if delta is not None else t.revealed_update
    if vec is None:
        return None
    return ObservedUpdate(
        round_index=t.round_index, source="aggregate", sender=None,
        update=np.asarray(vec, np.float64), weight=None, contributors=tuple(t.contributors),
        global_params=np.asarray(t.global_params, np.float64), config=t.config,
    )


def observe(
    transcript_or_run: RunResult | RoundTranscript | Sequence[RoundTranscript],
    *,
    adversary: str = "server",
    client_id: int | None = None,
    model: ModelSpec | None = None,
    final_params: np.ndarray | None = None,
) -> Observation:
    """Cut a run (or transcript) down to what ``adversary`` observes.

    Parameters
    ----------
    transcript_or_run:
        A :class:`RunResult` recorded with ``record_transcript=True``, one
        :class:`RoundTranscript`, or a sequence of them.
    adversary:
        ``"server"`` (honest-but-curious server), ``"client"`` (curious client ``client_id``)
        or ``"outsider"`` (holds only the final model).
    model, final_params:
        Needed when a bare transcript is passed (a :class:`RunResult` carries both).

    The curious server gets per-client updates only where the channel sends them in the clear
    (:data:`CLEAR_CHANNELS`); otherwise it gets the revealed aggregate of each round, which
    mixes every contributor's records.  Rounds with a per-client view also carry the aggregate.
    """
    if adversary not in ADVERSARIES:
        raise ConfigurationError(f"unknown adversary {adversary!r}; valid: {list(ADVERSARIES)}")
    if isinstance(transcript_or_run, RunResult):
        run = transcript_or_run
        model = model or run.model
        final_params = run.final_params if final_params is None else final_params
        transcripts: tuple[RoundTranscript, ...] = tuple(run.transcript or ())
        channel = run.channel
        if run.transcript is None and adversary != "outsider":
            raise ConfigurationError(
                "the run was recorded with record_transcript=False; a server or client observation "
                "needs the transcript (run again with record_transcript=True)"
            )
    elif isinstance(transcript_or_run, RoundTranscript):
        transcripts = (transcript_or_run,)
        channel = transcript_or_run.channel
    else:
        transcripts = tuple(transcript_or_run)
        if not transcripts or not all(isinstance(t, RoundTranscript) for t in transcripts):
            raise ConfigurationError(
                "expected a RunResult, a RoundTranscript or a non-empty sequence of them, got "
                f"{type(transcript_or_run).__name__}"
            )
        channel = transcripts[0].channel
    final = None if final_params is None else np.asarray(final_params, np.float64)

    if adversary == "outsider":
        if final is None:
            raise ConfigurationError("an outsider observation needs the final model (final_params)")
        return Observation(adversary="outsider", channel=channel, model=model, updates=(),
                           final_params=final, per_client=False)

    updates: list[ObservedUpdate] = []
    notes: list[str] = []
    if adversary == "server":
        per_client = channel in CLEAR_CHANNELS
        if not per_client:
            notes.append(f"channel {channel!r} hides individual updates; only aggregates observed")
        for t in transcripts:
            dim = int(np.asarray(t.global_params).shape[0])
            clients, n = _client_updates(t, dim)
            updates.extend(clients)
            notes.extend(n)
            agg = _aggregate(t)
            if agg is not None:
                updates.append(agg)
        return Observation(adversary="server", channel=channel, model=model, updates=tuple(updates),
                           final_params=final, per_client=per_client, notes=tuple(notes))

    # curious client: the global models it received, hence the aggregates of its rounds
    if client_id is None:
        raise ConfigurationError("a client observation needs client_id (which hospital is curious)")
    by_round = {t.round_index: t for t in transcripts}
    for t in transcripts:
        if client_id not in t.selected:
            continue
        nxt = by_round.get(t.round_index + 1)
        if nxt is not None:
            delta = np.asarray(nxt.global_params, np.float64) - np.asarray(t.global_params, np.float64)
        elif final is not None and t.round_index == max(by_round):
            delta = final - np.asarray(t.global_params, np.float64)
        else:
            notes.append(f"round {t.round_index}: the next global model is not in the transcript")
            continue
        agg = _aggregate(t, delta)
        if agg is not None:
            updates.append(agg)
    return Observation(adversary="client", channel=channel, model=model, updates=tuple(updates),
                       final_params=final, per_client=False, client_id=int(client_id),
                       notes=tuple(notes))
