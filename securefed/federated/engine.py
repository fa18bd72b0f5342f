"""The in-process simulation engine: rounds of configure -> local train -> upload ->
aggregate -> update, with client sampling, simulated dropouts, per-round evaluation, real
byte counts, per-phase wall times and a transcript of what the server received.

Randomness: one root seed; per-client and per-round streams come from
``numpy.random.SeedSequence`` so that the same seed gives the same run, bit for bit.
Cryptographic channels draw their secrets from the OS CSPRNG, never from this seed, and so
does differential-privacy noise unless a strategy was built with ``reproducible_noise=True``.

Privacy ledger.  A strategy with differential privacy keeps a ledger of what every round
cost; it belongs to the model, so the result carries it (``RunResult.privacy_ledger``) and a
run that continues from saved parameters must be given it back (``privacy_ledger=``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from securefed.arrays import ClientArrays, FederatedArrays
from securefed.channel import AggregationChannel, DropoutPlan, PlainChannel, Upload
from securefed.errors import ConfigurationError, PrivacyBudgetExceeded
from securefed.federated.metrics import roc_auc
from securefed.federated.round import client_step, sample_clients, seed_streams
from securefed.federated.strategy import Strategy
from securefed.federated.types import FederationFacts, RoundRecord, RoundTranscript, RunResult
from securefed.federated.weight_bound import check_weight_bound
from securefed.models import ModelSpec, get_flat_params, set_flat_params

__all__ = ["run_federated", "evaluate", "evaluate_per_hospital", "ProgressCallback"]

ProgressCallback = Callable[[RoundRecord], None]


def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(log loss, accuracy at threshold 0.5, ROC AUC) of ``model`` on ``(X, y)``."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(X, dtype=torch.float32))
        yt = torch.as_tensor(y, dtype=torch.float32)
        loss = float(nn.functional.binary_cross_entropy_with_logits(logits, yt))
        pred = (logits > 0).float()
        acc = float((pred == yt).float().mean())
    probs = torch.sigmoid(logits).numpy()
    auc = roc_auc(y, probs)
    return loss, acc, auc


PersonalParams = Callable[[ClientArrays], "np.ndarray | None"]


def evaluate_per_hospital(
    net: nn.Module, data: FederatedArrays, *, personal: PersonalParams | None = None
) -> dict[str, dict[str, float]]:
    """Loss, accuracy and AUC on each hospital's own test patients (where it has any).

    Each hospital evaluates at home, on patients labelled by its own convention, the model it
    uses: ``personal(client)`` when that gives parameters (computed at the client from state
    that never leaves it; ``net`` may serve as its scratch space), else the global model held
    in ``net``.  Only these summary numbers are reported; ``"personal"`` is 1 where the
    hospital's own parameters were used.  ``net`` holds the global model again on return.
    """
    global_params = get_flat_params(net)
    out: dict[str, dict[str, float]] = {}
    for client in data.clients:
        if client.X_test is None or client.y_test is None or len(client.y_test) == 0:
            continue
        own = None if personal is None else personal(client)
        set_flat_params(net, global_params if own is None else own)
        loss, acc, auc = evaluate(net, client.X_test, client.y_test)
        out[client.name] = {"loss": loss, "accuracy": acc, "auc": auc,
                            "n": float(len(client.y_test)), "personal": float(own is not None)}
    set_flat_params(net, global_params)
    return out


def _dropout_plan(
    selected: tuple[int, ...],
    *,
    dropout_rate: float,
    stage: str | None,
    stages: tuple[str, ...],
    rng: np.random.Generator,
) -> DropoutPlan:
    if dropout_rate <= 0:
        return DropoutPlan()
    drops: dict[int, str] = {}
    for cid in selected:
        if rng.random() < dropout_rate:
            drops[cid] = stage if stage is not None else stages[int(rng.integers(len(stages)))]
    return DropoutPlan(drops)


def run_federated(
    data: FederatedArrays,
    *,
    strategy: Strategy,
    model: ModelSpec,
    rounds: int,
    seed: int = 0,
    channel: AggregationChannel | None = None,
    clients_per_round: int | None = None,
    dropout_rate: float = 0.0,
    dropout_stage: str | None = None,
    record_transcript: bool = True,
    initial_params: np.ndarray | None = None,
    privacy_ledger: Mapping[str, Any] | None = None,
    progress: bool | ProgressCallback = False,
) -> RunResult:
    """Simulate ``rounds`` rounds of federated training and return a :class:`RunResult`.

    Parameters
    ----------
    clients_per_round:
        How many hospitals are sampled each round (``None``: all of them).
    dropout_rate:
        Probability that a sampled client drops out during the round; ``dropout_stage``
        names the channel stage before which it drops (``None``: a random stage).
    initial_params:
        Parameters to continue training from (``None``: a fresh model from the seed).
    privacy_ledger:
        The privacy ledger saved with ``initial_params`` (``RunResult.privacy_ledger`` or the
        ``"privacy_ledger"`` of a result JSON).  A strategy with differential privacy refuses
        to continue from ``initial_params`` without it: the model's epsilon includes every
        round that produced those parameters.
    progress:
        ``True`` shows a progress bar; a callable is called with each round's record.

    If the strategy raises :class:`PrivacyBudgetExceeded`, before a round or during one, the
    run stops and the exception carries the result of the completed rounds in ``partial``.
    """
    channel = channel or PlainChannel()
    _check_run(data, strategy=strategy, model=model, rounds=rounds, channel=channel,
               clients_per_round=clients_per_round, dropout_rate=dropout_rate,
               dropout_stage=dropout_stage, initial_params=initial_params,
               privacy_ledger=privacy_ledger)
    strategy.start_run(FederationFacts(
        num_clients=len(data.clients), clients_per_round=clients_per_round, sampling="fixed",
        sample_secret=False, sample_published=True, continuing=initial_params is not None,
        privacy_ledger=privacy_ledger))
    run = _Run(data, strategy=strategy, model=model, seed=seed, channel=channel,
               clients_per_round=clients_per_round, dropout_rate=dropout_rate,
               dropout_stage=dropout_stage, record_transcript=record_transcript,
               initial_params=initial_params)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds, desc=f"{strategy.name}/{channel.name}", unit="round")
    try:
        for r in range(rounds):
            try:
                record = run.round(r)
            except PrivacyBudgetExceeded as exc:  # before the round, or a hospital refused
                raise PrivacyBudgetExceeded(str(exc), partial=run.result(rounds)) from exc
            if bar is not None:
                bar.update(1)
                bar.set_postfix(acc=f"{record.test_accuracy:.3f}", loss=f"{record.test_loss:.3f}")
            elif callable(progress):
                progress(record)
    finally:
        if bar is not None:
            bar.close()
    return run.result(rounds)


def _check_run(data: FederatedArrays, *, strategy: Strategy, model: ModelSpec, rounds: int,
               channel: AggregationChannel, clients_per_round: int | None, dropout_rate: float,
               dropout_stage: str | None, initial_params: np.ndarray | None,
               privacy_ledger: Mapping[str, Any] | None) -> None:
    """Refuse a run whose settings cannot hold, before round 0 (each error names the setting)."""
    if rounds < 1:
        raise ConfigurationError(f"rounds must be >= 1, got {rounds}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ConfigurationError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if clients_per_round is not None and not 1 <= clients_per_round:
        raise ConfigurationError(f"clients_per_round must be >= 1, got {clients_per_round}")
    if model.n_features != data.num_features:
        raise ConfigurationError(
            f"model expects {model.n_features} features, data has {data.num_features}"
        )
    check_weight_bound(strategy, channel, data)  # before round 0, not at the first upload
    per_round = len(data.clients) if clients_per_round is None else min(clients_per_round,
                                                                            len(data.clients))
    if per_round < channel.min_contributors:
        raise ConfigurationError(
            f"channel {channel.name!r} releases only sums of at least {channel.min_contributors} "
            f"hospitals, and this run has {per_round} per round; add hospitals or, knowing that "
            "a sum of two reveals each to the other, lower the channel's minimum "
            "(SecAggChannel(min_clients=...), CKKSChannel(min_contributors=...))")
    if dropout_stage is not None and dropout_stage not in channel.stages:
        raise ConfigurationError(
            f"dropout_stage {dropout_stage!r} is not a stage of channel {channel.name!r}; "
            f"valid: {list(channel.stages)}"
        )
    uses_dp = strategy.privacy_ledger() is not None
    if initial_params is not None and uses_dp and privacy_ledger is None:
        raise ConfigurationError(
            "training continues from initial_params under differential privacy, but no "
            "privacy_ledger was given; expected the ledger saved with those parameters "
            "(RunResult.privacy_ledger, or the 'privacy_ledger' of the result JSON), since "
            "their epsilon includes every round that produced them")
    if privacy_ledger is not None and not uses_dp:
        raise ConfigurationError(
            "a privacy_ledger was given but the strategy adds no differential privacy; "
            "training on without DP would void that ledger's epsilon; got strategy "
            f"{strategy.name!r} without a DP wrapper")


class _Run:
    """The state of one simulated run: model, per-client streams and state, history."""

    def __init__(self, data: FederatedArrays, *, strategy: Strategy, model: ModelSpec, seed: int,
                 channel: AggregationChannel, clients_per_round: int | None,
                 dropout_rate: float, dropout_stage: str | None, record_transcript: bool,
                 initial_params: np.ndarray | None) -> None:
        self.data, self.strategy, self.model, self.seed = data, strategy, model, seed
        self.channel, self.clients_per_round = channel, clients_per_round
        self.dropout_rate, self.dropout_stage = dropout_rate, dropout_stage
        self.record_transcript = record_transcript
        self.streams = seed_streams(seed, len(data.clients))
        self.client_rngs = [self.streams.client_rng(i) for i in range(len(data.clients))]
        self.server_rng = self.streams.server_rng()
        self.net = model.build(seed=self.streams.init_seed)
        self.params = (get_flat_params(self.net) if initial_params is None
                       else np.asarray(initial_params, np.float64))
        self.client_states: list[dict] = [{} for _ in data.clients]
        self.history: list[RoundRecord] = []
        self.transcript: list[RoundTranscript] = []

    def result(self, rounds: int) -> RunResult:
        """The run so far (``rounds``: the number planned)."""
        settings = {"strategy": self.strategy.describe(), "rounds": rounds,
                    "clients_per_round": self.clients_per_round,
                    "dropout_rate": self.dropout_rate, "dropout_stage": self.dropout_stage,
                    "num_clients": len(self.data.clients)}
        return RunResult(
            algorithm=self.strategy.name, channel=self.channel.name, model=self.model,
            seed=self.seed, history=tuple(self.history), final_params=self.params.copy(),
            transcript=tuple(self.transcript) if self.record_transcript else None,
            privacy_ledger=self.strategy.privacy_ledger(), settings=settings,
        )

    def round(self, r: int) -> RoundRecord:
        """Round ``r``: sample, train locally, aggregate, update, evaluate; returns its record."""
        strategy, channel, data = self.strategy, self.channel, self.data
        strategy.before_round(r)
        config = strategy.configure(r)
        selected = sample_clients(len(data.clients), self.clients_per_round, self.server_rng)
        plan = _dropout_plan(selected, dropout_rate=self.dropout_rate, stage=self.dropout_stage,
                             stages=channel.stages, rng=self.server_rng)
        bytes_down_model = channel.broadcast_bytes(self.params, round_index=r)
        uploads: list[Upload] = []
        losses: list[float] = []
        t_train = t_process = 0.0
        try:
            for cid in selected:
                step = client_step(strategy, self.net, data.clients[cid], self.params, config,
                                   rng=self.client_rngs[cid], client_state=self.client_states[cid])
                t_train += step.train_seconds
                t_process += step.process_seconds
                losses.append(step.local.train_loss)
                # the channel's client-side steps draw from the client's own stream
                uploads.append(dataclasses.replace(step.upload,
                                                   rng=self.streams.channel_rng(cid, r)))
            t0 = time.perf_counter()
            result = channel.aggregate(uploads, round_index=r, dim=self.params.shape[0],
                                       codec=strategy.codec, dropouts=plan, rng=self.server_rng)
            t1 = time.perf_counter()
            mean_update = strategy.server_aggregate(result, rng=self.server_rng)
            new_params = strategy.server_update(self.params, mean_update, round_index=r)
            t2 = time.perf_counter()
        except BaseException:
            strategy.end_round(r, completed=False)
            raise
        strategy.end_round(r, completed=True)
        if self.record_transcript:
            self.transcript.append(RoundTranscript(
                round_index=r, global_params=self.params.copy(), config=config,
                selected=selected, contributors=result.contributors, channel=channel.name,
                received=result.received, revealed_update=mean_update.copy(),
            ))
        self.params = new_params
        t3 = time.perf_counter()
        test_loss, test_acc, test_auc, per_hospital = self._evaluate()
        t4 = time.perf_counter()
        times = {
            "local_training": t_train, "client_processing": t_process, "channel": t1 - t0,
            "server_update": t2 - t1, "evaluation": t4 - t3,
            **{f"channel.{k}": v for k, v in dict(result.timings).items()},
        }
        record = RoundRecord(
            round_index=r,
            train_loss=float(np.mean(losses)) if losses else float("nan"),
            test_loss=test_loss, test_accuracy=test_acc, test_auc=test_auc,
            bytes_up=int(sum(result.bytes_up.values())),
            bytes_down=int(bytes_down_model * len(selected) + sum(result.bytes_down.values())),
            times=times, num_selected=len(selected), num_contributors=len(result.contributors),
            extra=dict(strategy.round_metrics(r)), per_hospital=per_hospital,
        )
        self.history.append(record)
        return record

    def _evaluate(self) -> tuple[float, float, float, dict[str, dict[str, float]]]:
        """The global model on the pooled test set, and each hospital's own model on its own."""
        set_flat_params(self.net, self.params)
        test_loss, test_acc, test_auc = evaluate(self.net, self.data.X_test, self.data.y_test)
        params = self.params

        def own(c: ClientArrays) -> np.ndarray | None:
            return self.strategy.personal_params(
                self.net, c, params, rng=self.client_rngs[c.client_id].spawn(1)[0],
                client_state=self.client_states[c.client_id])

        return test_loss, test_acc, test_auc, evaluate_per_hospital(self.net, self.data, personal=own)
