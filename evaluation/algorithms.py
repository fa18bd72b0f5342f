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
    evaluate,
    run_federated,
)
from securefed.federated.centralized import run_centralized
from securefed.models import ModelSpec, set_flat_params
from securefed.registry import Registry, check_parameters

__all__ = [
    "HyperParams",
    "Algorithm",
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


@dataclass(frozen=True)
class Algorithm:
    """One trainable algorithm.

    ``kind`` is ``"federated"`` (a :class:`Strategy` run by the engine through the defense's
    channel) or ``"centralized"`` (pooled rows; applies to a defense whose
    ``centralized_channel`` equals ``centralized_channel`` here).  With
    ``library_defaults`` the strategy is built from its own parameters only (its library
    defaults, changed by the audit's ``[algorithm_params.NAME]``), not from the audit's shared
    learning rate, epochs and batch size.
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

    def __post_init__(self) -> None:
        if self.kind not in ("federated", "centralized"):
            raise ConfigurationError(
                f"algorithm kind must be 'federated' or 'centralized', got {self.kind!r}")
        needed = "strategy_factory" if self.kind == "federated" else "centralized_trainer"
        if getattr(self, needed) is None:
            raise ConfigurationError(f"a {self.kind} algorithm ({self.name!r}) needs {needed}")

    def _factory(self) -> Callable[..., Any]:
        factory = self.strategy_factory if self.kind == "federated" else self.centralized_trainer
        if factory is None:  # unreachable after __post_init__; keeps type checkers honest
            raise ConfigurationError(f"algorithm {self.name!r} has nothing to train with")
        return factory

    def supports(self, defense: Defense, model: ModelSpec | None = None) -> bool:
        """Whether (this algorithm, ``defense``) is a meaningful audit cell."""
        if model is not None and model.kind not in self.models:
            return False
        if self.kind == "centralized":
            return defense.centralized_channel == self.centralized_channel
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
    ) -> RunResult:
        """Train on ``data`` under ``defense``; returns the engine's :class:`RunResult`."""
        if not self.supports(defense, model):
            raise ConfigurationError(
                f"algorithm {self.name!r} does not run under defense {defense.name!r} "
                f"with model {model.kind!r}"
            )
        kwargs = {**self.default_params, **(params or {})}
        self.validate(params or {}, hyper)
        if self.kind == "centralized":
            return self._factory()(data, model=model, rounds=rounds, seed=seed,
                                   progress=progress, **hyper.local(), **kwargs)
        shared = {} if self.library_defaults else hyper.local()
        strategy = self._factory()(**{**shared, **kwargs})
        strategy, channel = defense.build(strategy, RunContext(
            num_clients=len(data.clients), rounds=rounds, clients_per_round=hyper.clients_per_round))
        return run_federated(
            data, strategy=strategy, model=model, rounds=rounds, seed=seed,
            channel=channel, clients_per_round=hyper.clients_per_round,
            dropout_rate=hyper.dropout_rate, record_transcript=record_transcript,
            progress=progress,
        )


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
            "0.3, batch 16, one local epoch), not the audit's shared hyper-parameters",
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
