"""The algorithms an audit can train, by name.

Each entry says whether it trains on pooled rows (centralised) or across hospitals
(federated), and how to build it from the audit's shared hyper-parameters plus its own
parameters.  A defense decides the channel and the strategy wrappers; an algorithm only
decides what is learned.  An unknown name lists the valid ones.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from defenses import Defense, RunContext
from securefed.errors import ConfigurationError
from securefed.federated import (
    FedAvg,
    FederatedArrays,
    FedMedHeter,
    FedProx,
    RoundRecord,
    RunResult,
    Strategy,
    StrategyWrapper,
    evaluate,
    run_federated,
)
from securefed.federated.centralized import run_centralized
from securefed.federated.local_only import run_local_only
from securefed.federated.personal import Ditto
from securefed.models import ModelSpec, set_flat_params
from securefed.registry import Registry, check_parameters

__all__ = [
    "HyperParams",
    "Algorithm",
    "PersonalParamsRecorder",
    "register_algorithm",
    "ALGORITHMS",
    "get_algorithm",
    "algorithm_names",
]


@dataclass(frozen=True)
class HyperParams:
    """The public training settings every algorithm of an audit shares."""

    learning_rate: float = 0.1
    local_epochs: int = 1
    batch_size: int | None = 16
    clients_per_round: int | None = None
    dropout_rate: float = 0.0

    def local(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "local_epochs": self.local_epochs,
                "batch_size": self.batch_size}


Trainer = Callable[..., RunResult]

#: The field of :class:`Algorithm` that trains each kind.
_TRAINER = {"federated": "strategy_factory", "centralized": "centralized_trainer",
            "local": "local_trainer"}


@dataclass(frozen=True)
class Algorithm:
    """One trainable algorithm.

    ``kind`` is ``"federated"`` (a :class:`Strategy` run by the engine through the defense's
    channel), ``"centralized"`` (pooled rows; applies to a defense whose
    ``centralized_channel`` equals ``centralized_channel`` here) or ``"local"`` (every
    hospital trains alone and shares nothing, so no defense has anything to protect: it runs
    under ``"none"`` only; ``local_trainer`` has the signature of a centralised trainer).  With
    ``library_defaults`` the strategy is built from its own parameters only (its library
    defaults, changed by the audit's ``[algorithm_params.NAME]``), not from the audit's shared
    learning rate, epochs and batch size.  ``profiles`` names the built-in profiles whose
    utility runs include the algorithm (:func:`evaluation.config.profile`).
    """

    name: str
    kind: str
    summary: str
    strategy_factory: Callable[..., Strategy] | None = None
    centralized_trainer: Trainer | None = None
    centralized_channel: str = "plain"
    default_params: Mapping[str, Any] = field(default_factory=dict)
    models: tuple[str, ...] = ("logreg", "mlp")
    library_defaults: bool = False
    local_trainer: Trainer | None = None
    profiles: tuple[str, ...] = ("quick", "default")

    def __post_init__(self) -> None:
        if self.kind not in _TRAINER:
            raise ConfigurationError(
                f"algorithm kind must be one of {list(_TRAINER)}, got {self.kind!r}")
        needed = _TRAINER[self.kind]
        if getattr(self, needed) is None:
            raise ConfigurationError(f"a {self.kind} algorithm ({self.name!r}) needs {needed}")

    def _factory(self) -> Callable[..., Any]:
        factory = getattr(self, _TRAINER[self.kind])
        if factory is None:  # unreachable after __post_init__; keeps type checkers honest
            raise ConfigurationError(f"algorithm {self.name!r} has nothing to train with")
        return factory

    def supports(self, defense: Defense, model: ModelSpec | None = None) -> bool:
        """Whether (this algorithm, ``defense``) is a meaningful audit cell."""
        if model is not None and model.kind not in self.models:
            return False
        if self.kind == "centralized":
            return defense.centralized_channel == self.centralized_channel
        if self.kind == "local":  # nothing leaves a hospital: there is nothing to defend
            return defense.name == "none"
        return True

    def validate(self, params: Mapping[str, Any], hyper: HyperParams) -> None:
        """Raise :class:`ConfigurationError` now if ``params`` cannot build this algorithm."""
        shared = {} if self.library_defaults else hyper.local()
        kwargs = {**shared, **self.default_params, **params}
        check_parameters(self._factory(), kwargs, what=f"algorithm {self.name!r}")

    def train(
        self,
        data: FederatedArrays,
        *,
        model: ModelSpec,
        rounds: int,
        seed: int,
        defense: Defense,
        hyper: HyperParams,
        params: Mapping[str, Any] | None = None,
        record_transcript: bool = False,
        progress: Any = False,
        wrap: Callable[[Strategy], Strategy] | None = None,
    ) -> RunResult:
        """Train on ``data`` under ``defense``; returns the engine's :class:`RunResult`.

        ``wrap`` (federated algorithms) is applied to the strategy after the defense's
        wrappers, outermost (e.g. :class:`PersonalParamsRecorder`)."""
        if not self.supports(defense, model):
            raise ConfigurationError(
                f"algorithm {self.name!r} does not run under defense {defense.name!r} "
                f"with model {model.kind!r}"
            )
        kwargs = {**self.default_params, **(params or {})}
        self.validate(params or {}, hyper)
        if self.kind in ("centralized", "local"):
            return self._factory()(data, model=model, rounds=rounds, seed=seed,
                                   progress=progress, **hyper.local(), **kwargs)
        shared = {} if self.library_defaults else hyper.local()
        strategy = self._factory()(**{**shared, **kwargs})
        strategy, channel = defense.build(strategy, RunContext(
            num_clients=len(data.clients), rounds=rounds, clients_per_round=hyper.clients_per_round))
        if wrap is not None:
            strategy = wrap(strategy)
        return run_federated(
            data, strategy=strategy, model=model, rounds=rounds, seed=seed,
            channel=channel, clients_per_round=hyper.clients_per_round,
            dropout_rate=hyper.dropout_rate, record_transcript=record_transcript,
            progress=progress,
        )


class PersonalParamsRecorder(StrategyWrapper):
    """Passes every training phase through unchanged and remembers, per hospital, the
    parameters it used for its own patients in the last evaluation (``None``: the global
    model).

    The engine asks each hospital for those parameters whenever it evaluates the hospital on
    its own test patients, every round.  With ``final_round`` set, hospitals derive their own
    models only in that round and use the global model in earlier evaluations, which the
    audit does not keep: local fine-tuning at every round would cost one more local epoch per
    hospital and round.  The final round's models are the same either way (fine-tuning
    starts from the current global model and draws from a child generator the engine spawns
    whether or not it is used; Ditto's and FedPer's personal state is updated in training,
    not here).  In a deployment the parameters never leave the hospital; the audit uses
    them only to score each hospital's model on a second set of its own patients (a
    federation file's test CSV), as the hospital would at home.  Nothing the channel
    carries changes.
    """

    def __init__(self, inner: Strategy, *, final_round: int | None = None) -> None:
        super().__init__(inner)
        self.final_round = final_round
        self.round = -1
        self.last: dict[int, np.ndarray | None] = {}

    def before_round(self, round_index: int) -> None:
        self.round = round_index
        self.inner.before_round(round_index)

    def personal_params(self, model, client, global_params, *, rng, client_state):  # type: ignore[override]
        if self.final_round is not None and self.round != self.final_round:
            own = None
        else:
            own = self.inner.personal_params(model, client, global_params, rng=rng,
                                             client_state=client_state)
        self.last[client.client_id] = None if own is None else np.array(own, dtype=np.float64)
        return own

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")


def register_algorithm(name: str | Algorithm, algorithm: Algorithm | None = None, *,
                       replace: bool = False) -> Any:
    """Add ``algorithm`` under ``name`` (its ``name`` field); a decorator without it."""
    if isinstance(name, Algorithm):  # the older one-argument form
        warnings.warn("register_algorithm(algorithm) is deprecated; use "
                      "register_algorithm(name, algorithm)", DeprecationWarning, stacklevel=2)
        name, algorithm = name.name, name
    if algorithm is None:
        return lambda a: register_algorithm(name, a, replace=replace)
    if algorithm.name != name:
        raise ConfigurationError(
            f"algorithm {algorithm.name!r} registered as {name!r}: they must agree")
    return ALGORITHMS.register(name, algorithm, replace=replace)


def algorithm_names() -> tuple[str, ...]:
    return ALGORITHMS.names()


def get_algorithm(name: str) -> Algorithm:
    return ALGORITHMS.get(name)


register_algorithm("centralized", Algorithm(
    name="centralized", kind="centralized",
    summary="the same model trained on all hospitals' rows pooled at one server",
    centralized_trainer=run_centralized,
))
register_algorithm("fedavg", Algorithm(
    name="fedavg", kind="federated",
    summary="federated averaging (McMahan et al. 2017), weights proportional to sample counts",
    strategy_factory=FedAvg,
))
register_algorithm("fedprox", Algorithm(
    name="fedprox", kind="federated",
    summary="FedAvg plus the proximal term (mu/2)||w - w_global||^2 (Li et al. 2020)",
    strategy_factory=FedProx, default_params={"proximal_mu": 0.01},
))

register_algorithm("fedmedheter", Algorithm(
    name="fedmedheter", kind="federated",
    summary="FedMedHeter: proximal local objective, loss-scaled adaptive local step size, "
            "heterogeneity-aware client-side weights, 2-bit stochastic quantisation with error "
            "feedback; the library defaults of securefed.federated.fedmedheter (learning rate "
            "0.3, batch 16, one local epoch), not the audit's shared hyper-parameters. "
            "Personalisation is on (its default, 'finetune': each hospital fine-tunes the "
            "global model for one epoch on its own rows, at home): pooled columns are the "
            "global model, per-hospital columns each hospital's personalised model",
    strategy_factory=FedMedHeter, library_defaults=True,
))

_KEYS: dict[str, Any] = {}


def _training_keys() -> tuple[Any, Any, bool]:
    """The process's CKKS key holder for encrypted training, the server's public context
    (loaded from its serialised bytes, as it would travel), and whether they were just made."""
    from securefed.he import CKKSKeyHolder, CKKSParameters, CKKSPublicContext

    if "holder" in _KEYS:
        return _KEYS["holder"], _KEYS["server"], False
    holder = CKKSKeyHolder.generate(CKKSParameters.training(), galois_keys=True)
    _KEYS["server"] = CKKSPublicContext.from_bytes(holder.public_context().to_bytes())
    _KEYS["holder"] = holder
    return holder, _KEYS["server"], True


def run_encrypted_centralized(
    data: FederatedArrays,
    *,
    model: ModelSpec,
    rounds: int,
    seed: int = 0,
    progress: bool = False,
    learning_rate: float = 0.1,
    local_epochs: int = 1,
    batch_size: int | None = None,
    gd_learning_rate: float = 1.0,
    interval: tuple[float, float] = (-8.0, 8.0),
    epochs: int | None = None,
) -> RunResult:
    """Encrypt-then-centralise: logistic regression trained on the hospitals' CKKS-encrypted
    rows (:func:`securefed.he.train_encrypted_logreg`), reported as a :class:`RunResult`.

    One round is one full-batch gradient-descent epoch with step ``gd_learning_rate`` (the
    encrypted trainer's own schedule; ``learning_rate``, ``local_epochs`` and ``batch_size``
    of the plaintext algorithms do not apply); ``epochs`` (default ``rounds``) caps the
    number of epochs, since each costs seconds.  The key holder (with rotation keys) is
    generated once per process and reused by later folds, as one deployment would; the
    cell that generated it records the time (with the serialisation of the public context for
    the server) as ``key_generation_and_transfer``.  Bytes: the public context and the encrypted
    columns in round 0, the weight refresh every round; times: encryption, server epoch and
    key-holder refresh, as the trainer measured them.  Keys come from the OS CSPRNG, so
    ``seed`` only names the run.
    """
    from securefed.he import train_encrypted_logreg

    if model.kind != "logreg":
        raise ConfigurationError(f"encrypted-centralised training needs model 'logreg', got {model.kind!r}")
    t0 = time.perf_counter()
    holder, server_context, fresh = _training_keys()
    t_keys = time.perf_counter() - t0
    n_epochs = rounds if epochs is None else int(epochs)
    res = train_encrypted_logreg(data, epochs=n_epochs, learning_rate=gd_learning_rate,
                                 interval=tuple(interval), key_holder=holder,
                                 server_context=server_context, record_history=True)
    net = model.build(seed=0)
    history: list[RoundRecord] = []
    for e, wb in enumerate(res.weight_history):  # each entry: (w_1..w_d, b)
        params = np.asarray(wb, dtype=np.float64).ravel()
        set_flat_params(net, params)
        t0 = time.perf_counter()
        loss, acc, auc = evaluate(net, data.X_test, data.y_test)
        t_eval = time.perf_counter() - t0
        times = {"server_epoch": res.epoch_server_times[e], "refresh": res.epoch_refresh_times[e],
                 "evaluation": t_eval}
        if e == 0:
            times["encryption"] = res.time_encrypt
            times["server_setup"] = res.time_setup_server
            if fresh:
                times["key_generation_and_transfer"] = t_keys
        history.append(RoundRecord(
            round_index=e, train_loss=float("nan"), test_loss=loss, test_accuracy=acc,
            test_auc=auc,
            bytes_up=(res.bytes_data_upload if e == 0 else 0) + res.bytes_refresh_per_epoch // 2,
            bytes_down=(res.bytes_public_context if e == 0 else 0) + res.bytes_refresh_per_epoch // 2,
            times=times, num_selected=len(data.clients), num_contributors=len(data.clients),
        ))
    final = np.concatenate([np.asarray(res.weights, dtype=np.float64).ravel(), [float(res.bias)]])
    return RunResult(
        algorithm="encrypted-centralized", channel="ckks", model=model, seed=seed,
        history=tuple(history), final_params=final, transcript=None,
        settings={"epochs": n_epochs, "gd_learning_rate": gd_learning_rate,
                  "interval": list(interval), "ckks": str(res.parameters),
                  "out_of_interval": res.out_of_interval},
    )


register_algorithm("encrypted-centralized", Algorithm(
    name="encrypted-centralized", kind="centralized",
    summary="encrypt-then-centralise: logistic regression trained by the server on CKKS-encrypted "
            "rows (one full-batch gradient step per round, key holder refreshes the weights)",
    centralized_trainer=run_encrypted_centralized, centralized_channel="ckks", models=("logreg",),
))


register_algorithm("ditto", Algorithm(
    name="ditto", kind="federated",
    summary="Ditto (Li, Hu, Beirami and Smith, ICML 2021): FedAvg's global model, unchanged, "
            "plus a personal model per hospital trained on its own rows with the pull "
            "(lambda/2)||v - w||^2 towards the global model (lambda = 1, the value "
            "benchmarks/personalisation.py chose on validation data, not re-tuned here); the "
            "personal model never leaves the hospital. Pooled columns: the global model; "
            "per-hospital columns: each hospital's personal model",
    strategy_factory=Ditto, default_params={"ditto_lambda": 1.0}, profiles=("default",),
))
register_algorithm("local-only", Algorithm(
    name="local-only", kind="local",
    summary="every hospital trains its own model on its own rows only (the same epochs, rate "
            "and batch size), nothing is shared. There is no global model: per-hospital "
            "columns are each hospital's own model on its own held-out patients; pooled "
            "columns are the mean over hospitals of each hospital's model on all held-out "
            "patients (no F1, no external test)",
    local_trainer=run_local_only, profiles=("default",),
))
