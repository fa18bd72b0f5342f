r"""Personalisation: each hospital's own model, derived from the federation's and kept at home.

A single global model cannot be right for a hospital whose diagnosis rule differs from the
others' (a clinic that counts impaired glucose tolerance as diabetes) or whose patients
differ.  Personalised federated learning keeps the shared training and lets each hospital
adapt the result to its own patients.  Three methods from the literature are implemented,
each as a :class:`Personalisation` that a strategy holds (FedMedHeter's ``personalisation``
option; the :class:`Ditto` baseline):

``"finetune"``  **local fine-tuning** (Wang et al., "Federated evaluation of on-device
    personalization", arXiv:1910.10252, 2019; Yu, Bagdasaryan and Shmatikov, "Salvaging
    federated learning by local adaptation", arXiv:2002.04758, 2020; Cheng, Chadha and Duchi,
    "Fine-tuning is fine in federated learning", arXiv:2108.07313).  The hospital's model is
    the current global model after ``epochs`` epochs of mini-batch SGD on its own rows,
    optionally pulled back towards the global model by ``(lambda/2)||v - w_t||^2``.  Computed
    when needed; no state.

``"finetune-select"``  **local fine-tuning of a locally chosen length**: as ``"finetune"``,
    but each hospital picks the number of epochs (0, 1, 5 or 20 by default; 0 keeps the
    global model) by the log-loss on a quarter of its own rows set aside, then fine-tunes on
    all of them (:class:`SelectedFineTuning`).

``"ditto"``  **Ditto** (Li, Hu, Beirami and Smith, "Ditto: fair and robust federated
    learning through personalization", ICML 2021, Alg. 1).  Each hospital keeps a personal
    model :math:`v_k` in its own state; every round it takes part in, after its ordinary
    local training of the global model, it also takes ``epochs`` epochs of SGD on
    :math:`F_k(v) + \tfrac{\lambda}{2}\lVert v - w_t\rVert^2` starting from its current
    :math:`v_k`.  :math:`\lambda = 0` is local-only training; large :math:`\lambda` is the
    global model.

``"fedper"``  **personal head** (FedPer: Arivazhagan et al., "Federated learning with
    personalization layers", arXiv:1912.00818, 2019; the base/head split of FedRep, Collins
    et al., ICML 2021).  The last layer is the hospital's own: it trains the shared body and
    its head together from (global body, own head), uploads the body's update with the head
    entries set to zero, and keeps the head.  The global model then has no trained head (its
    head stays at the initial values), so it is not a usable model on its own; for the
    logistic-regression model the "head" is the whole model and FedPer is local training.

FedBN-style local normalisation (Li et al., ICLR 2021) does not apply: securefed's models have
no normalisation layers (features are standardised from federated statistics once).

**Threat model and what leaves a hospital.**  The personal parameters (``v_k``, the head,
the fine-tuned model) are computed at the hospital from the global model it received and its
own rows, are kept in its ``client_state`` and are never uploaded: nothing new is sent.  With
``"finetune"`` and ``"ditto"`` the upload is *exactly* the one the strategy sends without
personalisation (a test checks it bit for bit): the personal steps draw from a child of the
client's generator (``Generator.spawn``), which leaves its stream unchanged.  With
``"fedper"`` the upload is the body's update with zeros where the head is; it goes through
the strategy's ``client_process`` (compression) and any DP wrapper like every upload.  The
same adversaries as for the strategy apply (an honest-but-curious server, other hospitals);
none of them observes a personal model.  What a hospital reports is the accuracy of its own
model on its own test patients (the engine's ``RoundRecord.per_hospital``), as it already does
for the global model.  Differential privacy wrappers bound what is *uploaded*; a personal
model is not protected by them, because it is never released (if it were published, it would
need its own DP training).  Under DP-SGD (``securefed.dp.DPSGD``), which replaces local
training, Ditto and fine-tuning still run (they are not part of local training); FedPer's
body/head split is not applied (DP-SGD uploads the whole model's noisy update).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from securefed.arrays import ClientArrays
from securefed.errors import ConfigurationError
from securefed.federated.strategy import FedAvg
from securefed.federated.types import LocalConfig, LocalResult, RoundRecord, RunResult
from securefed.models import get_flat_params, set_flat_params

__all__ = [
    "PERSONALISATIONS",
    "Personalisation",
    "LocalFineTuning",
    "SelectedFineTuning",
    "DittoPersonalisation",
    "PersonalHead",
    "make_personalisation",
    "personal_sgd",
    "head_size",
    "Ditto",
    "HospitalSummary",
    "hospital_summary",
]

PERSONALISATIONS = ("finetune", "finetune-select", "ditto", "fedper")


def _check_epochs(value: Any) -> int:
    if not (isinstance(value, (int, np.integer)) and value >= 1):
        raise ConfigurationError(f"personal epochs must be an integer >= 1, got {value!r}")
    return int(value)


def _check_lr(value: Any) -> float:
    if not (isinstance(value, (int, float)) and value > 0):
        raise ConfigurationError(f"personal learning rate must be > 0, got {value!r}")
    return float(value)


def _check_lambda(value: Any) -> float:
    if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
        raise ConfigurationError(f"ditto lambda must be a finite number >= 0, got {value!r}")
    return float(value)


def personal_sgd(
    model: nn.Module,
    client: ClientArrays,
    start: np.ndarray,
    *,
    anchor: np.ndarray | None,
    lam: float,
    learning_rate: float,
    epochs: int,
    batch_size: int | None,
    rng: np.random.Generator,
) -> np.ndarray:
    r"""``epochs`` epochs of mini-batch SGD from ``start`` on the client's rows; the final
    parameters.

    The loss is the mean binary cross-entropy plus, when ``lam > 0``,
    :math:`\tfrac{\lambda}{2}\lVert v - \mathrm{anchor}\rVert^2` (Ditto's regulariser).
    Mini-batches come from a permutation drawn from ``rng`` each epoch.
    """
    set_flat_params(model, start)
    X = torch.as_tensor(client.X, dtype=torch.float32)
    y = torch.as_tensor(client.y, dtype=torch.float32)
    n = X.shape[0]
    if n == 0:
        raise ConfigurationError(f"client {client.name!r} has no training examples")
    anchors = None
    if lam > 0:
        if anchor is None:
            raise ConfigurationError("personal_sgd with lam > 0 needs an anchor")
        flat = torch.as_tensor(np.asarray(anchor), dtype=torch.float32)
        anchors, offset = [], 0
        for p in model.parameters():
            anchors.append(flat[offset:offset + p.numel()].reshape(p.shape))
            offset += p.numel()
    opt = torch.optim.SGD(model.parameters(), lr=learning_rate)
    bs = n if batch_size is None else min(batch_size, n)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n, bs):
            idx = torch.as_tensor(order[s:s + bs])
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.binary_cross_entropy_with_logits(model(X[idx]), y[idx])
            if anchors is not None:
                loss = loss + 0.5 * lam * sum(((p - a) ** 2).sum()
                                              for p, a in zip(model.parameters(), anchors, strict=True))
            loss.backward()
            opt.step()
    return get_flat_params(model)


def head_size(model: nn.Module) -> int:
    """Number of parameters of the model's last ``nn.Linear`` layer, which must come last in
    ``model.parameters()`` (true of securefed's models)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigurationError(f"{type(model).__name__} has no linear layer to personalise")
    head = list(linears[-1].parameters())
    params = list(model.parameters())
    if [id(p) for p in params[-len(head):]] != [id(p) for p in head]:
        raise ConfigurationError(
            f"the last linear layer of {type(model).__name__} is not last in its parameters")
    return int(sum(p.numel() for p in head))


class Personalisation:
    """How a hospital derives and keeps its own model (base class: no personal model).

    The strategy calls :meth:`training_start` and :meth:`finish_local` around its local
    training, :meth:`step` after it (through ``Strategy.personal_step``) and :meth:`params`
    when a hospital evaluates its own model (``Strategy.personal_params``).  Everything a
    method keeps goes in ``client_state`` as numpy arrays (so a Flower node can save it).
    """

    name: ClassVar[str] = "none"
    #: True when the method changes what is uploaded (then it is not a pure add-on)
    changes_upload: ClassVar[bool] = False

    def training_start(self, global_params: np.ndarray, *, model: nn.Module,
                       client_state: dict[str, Any]) -> np.ndarray:
        """The parameters local training starts from (default: the global ones)."""
        return global_params

    def finish_local(self, result: LocalResult, *, start: np.ndarray, global_params: np.ndarray,
                     model: nn.Module, client_state: dict[str, Any]) -> LocalResult:
        """The local result to upload, given training from ``start`` (default: unchanged)."""
        return result

    def step(self, model: nn.Module, client: ClientArrays, global_params: np.ndarray,
             config: LocalConfig, *, rng: np.random.Generator, client_state: dict[str, Any]) -> None:
        """Update the personal state after local training (default: nothing)."""

    def params(self, model: nn.Module, client: ClientArrays, global_params: np.ndarray, *,
               rng: np.random.Generator, client_state: dict[str, Any]) -> np.ndarray | None:
        """The hospital's own parameters, or ``None`` when it has none yet."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class LocalFineTuning(Personalisation):
    """``"finetune"``: the global model after ``epochs`` epochs of local SGD (module docstring)."""

    name: ClassVar[str] = "finetune"
    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int | None = 16
    lam: float = 0.0

    def __post_init__(self) -> None:
        _check_epochs(self.epochs)
        _check_lr(self.learning_rate)
        _check_lambda(self.lam)

    def params(self, model, client, global_params, *, rng, client_state):  # type: ignore[override]
        return personal_sgd(model, client, global_params, anchor=global_params, lam=self.lam,
                            learning_rate=self.learning_rate, epochs=self.epochs,
                            batch_size=self.batch_size, rng=rng)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "epochs": self.epochs, "learning_rate": self.learning_rate,
                "batch_size": self.batch_size, "lambda": self.lam}


@dataclass(frozen=True)
class SelectedFineTuning(Personalisation):
    """``"finetune-select"``: local fine-tuning whose length each hospital chooses for itself.

    The hospital sets aside ``validation_fraction`` of its own rows (stratified by label),
    fine-tunes the global model on the rest and measures its validation log-loss after each
    number of epochs in ``epoch_grid`` (0 = the global model as it is); it then fine-tunes
    on all its rows for the best number.  So a hospital whose patients the global model
    already serves keeps it, and one whose convention differs adapts further: early stopping
    on local validation data, as in the local-adaptation studies cited in the module
    docstring.  Everything happens at the hospital; nothing is uploaded.
    """

    name: ClassVar[str] = "finetune-select"
    epoch_grid: tuple[int, ...] = (0, 1, 5, 20)
    learning_rate: float = 0.1
    batch_size: int | None = 16
    validation_fraction: float = 0.25

    def __post_init__(self) -> None:
        grid = tuple(int(e) for e in self.epoch_grid)
        if not grid or any(e < 0 for e in grid) or list(grid) != sorted(set(grid)):
            raise ConfigurationError(
                f"epoch_grid must be increasing non-negative integers, got {self.epoch_grid!r}")
        object.__setattr__(self, "epoch_grid", grid)
        _check_lr(self.learning_rate)
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigurationError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")

    def choose_epochs(self, model: nn.Module, client: ClientArrays, global_params: np.ndarray,
                      *, rng: np.random.Generator) -> int:
        """The number of epochs in ``epoch_grid`` with the lowest local validation log-loss."""
        held = np.zeros(client.num_examples, dtype=bool)
        for cls in (0.0, 1.0):
            idx = np.flatnonzero(client.y == cls)
            held[rng.choice(idx, size=int(round(self.validation_fraction * len(idx))),
                            replace=False)] = True
        if held.all() or not held.any():
            return self.epoch_grid[0]
        fit = ClientArrays(client.client_id, client.name, client.X[~held], client.y[~held])
        Xv = torch.as_tensor(client.X[held], dtype=torch.float32)
        yv = torch.as_tensor(client.y[held], dtype=torch.float32)
        params = np.asarray(global_params, dtype=np.float64)
        done, losses = 0, []
        for e in self.epoch_grid:
            if e > done:
                params = personal_sgd(model, fit, params, anchor=None, lam=0.0,
                                      learning_rate=self.learning_rate, epochs=e - done,
                                      batch_size=self.batch_size, rng=rng)
                done = e
            set_flat_params(model, params)
            model.eval()
            with torch.no_grad():
                losses.append(float(nn.functional.binary_cross_entropy_with_logits(model(Xv), yv)))
        return self.epoch_grid[int(np.argmin(losses))]

    def params(self, model, client, global_params, *, rng, client_state):  # type: ignore[override]
        epochs = self.choose_epochs(model, client, global_params, rng=rng)
        client_state["finetune_epochs"] = epochs  # for the hospital's own record
        if epochs == 0:
            return np.asarray(global_params, dtype=np.float64).copy()
        return personal_sgd(model, client, global_params, anchor=None, lam=0.0,
                            learning_rate=self.learning_rate, epochs=epochs,
                            batch_size=self.batch_size, rng=rng)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "epoch_grid": list(self.epoch_grid),
                "learning_rate": self.learning_rate, "batch_size": self.batch_size,
                "validation_fraction": self.validation_fraction}


@dataclass(frozen=True)
class DittoPersonalisation(Personalisation):
    r"""``"ditto"``: a personal model trained on :math:`F_k(v) + \frac{\lambda}{2}\lVert v - w_t\rVert^2`."""

    name: ClassVar[str] = "ditto"
    lam: float = 1.0
    epochs: int = 1
    learning_rate: float = 0.1
    state_key: str = field(default="ditto_personal", repr=False)

    def __post_init__(self) -> None:
        _check_epochs(self.epochs)
        _check_lr(self.learning_rate)
        _check_lambda(self.lam)

    def step(self, model, client, global_params, config, *, rng, client_state):  # type: ignore[override]
        v = client_state.get(self.state_key)
        start = np.asarray(global_params, dtype=np.float64) if v is None else v
        client_state[self.state_key] = personal_sgd(
            model, client, start, anchor=global_params, lam=self.lam,
            learning_rate=self.learning_rate, epochs=self.epochs,
            batch_size=config.batch_size, rng=rng)

    def params(self, model, client, global_params, *, rng, client_state):  # type: ignore[override]
        v = client_state.get(self.state_key)
        return None if v is None else np.asarray(v, dtype=np.float64).copy()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lambda": self.lam, "epochs": self.epochs,
                "learning_rate": self.learning_rate}


@dataclass(frozen=True)
class PersonalHead(Personalisation):
    """``"fedper"``: the last layer stays at the hospital; only the body's update is uploaded."""

    name: ClassVar[str] = "fedper"
    changes_upload: ClassVar[bool] = True
    state_key: str = field(default="personal_head", repr=False)

    def training_start(self, global_params, *, model, client_state):  # type: ignore[override]
        head = client_state.get(self.state_key)
        start = np.asarray(global_params, dtype=np.float64).copy()
        if head is not None:
            start[-len(head):] = head
        return start

    def finish_local(self, result, *, start, global_params, model, client_state):  # type: ignore[override]
        h = head_size(model)
        trained = start + result.update
        client_state[self.state_key] = trained[-h:].copy()
        update = trained - np.asarray(global_params, dtype=np.float64)
        update[-h:] = 0.0  # the head never leaves the hospital
        return replace(result, update=update)

    def params(self, model, client, global_params, *, rng, client_state):  # type: ignore[override]
        head = client_state.get(self.state_key)
        if head is None:
            return None
        own = np.asarray(global_params, dtype=np.float64).copy()
        own[-len(head):] = head
        return own


def make_personalisation(
    name: str | None,
    *,
    epochs: int = 1,
    learning_rate: float = 0.1,
    batch_size: int | None = 16,
    lam: float = 0.0,
) -> Personalisation | None:
    """The :class:`Personalisation` called ``name`` (``None``: no personalisation).

    ``epochs``, ``learning_rate`` and ``lam`` are the personal training's (fine-tuning,
    Ditto); ``batch_size`` is fine-tuning's (Ditto uses the round's batch size).
    """
    if name is None:
        return None
    if name == "finetune":
        return LocalFineTuning(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                               lam=lam)
    if name == "finetune-select":
        return SelectedFineTuning(learning_rate=learning_rate, batch_size=batch_size)
    if name == "ditto":
        return DittoPersonalisation(lam=lam, epochs=epochs, learning_rate=learning_rate)
    if name == "fedper":
        return PersonalHead()
    raise ConfigurationError(
        f"personalisation must be None or one of {list(PERSONALISATIONS)}, got {name!r}")


class Ditto(FedAvg):
    r"""Ditto (Li, Hu, Beirami and Smith, ICML 2021, Alg. 1) over FedAvg: the global model is
    trained by FedAvg, unchanged; each hospital also keeps a personal model trained on
    :math:`F_k(v) + \frac{\lambda}{2}\lVert v - w_t\rVert^2` for ``personal_epochs`` epochs
    each round it takes part in (see :class:`DittoPersonalisation`).

    ``ditto_lambda`` is :math:`\lambda`; ``personal_learning_rate`` defaults to
    ``learning_rate``.  The upload is FedAvg's, bit for bit.
    """

    name = "ditto"

    def __init__(self, *, ditto_lambda: float = 1.0, personal_epochs: int = 1,
                 personal_learning_rate: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        lr = self.learning_rate if personal_learning_rate is None else personal_learning_rate
        self.personalisation = DittoPersonalisation(lam=ditto_lambda, epochs=personal_epochs,
                                                    learning_rate=lr)
        self.ditto_lambda = float(ditto_lambda)
        self.personal_epochs = int(personal_epochs)
        self.personal_learning_rate = float(lr)

    def personal_step(self, model, client, global_params, config, *, rng, client_state):  # type: ignore[override]
        self.personalisation.step(model, client, global_params, config, rng=rng,
                                  client_state=client_state)

    def personal_params(self, model, client, global_params, *, rng, client_state):  # type: ignore[override]
        return self.personalisation.params(model, client, global_params, rng=rng,
                                           client_state=client_state)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "personalisation": self.personalisation.describe()}


@dataclass(frozen=True)
class HospitalSummary:
    """Accuracy on each hospital's own test patients: the mean over hospitals (each hospital
    counts once, whatever its size) and the worst hospital."""

    mean_accuracy: float
    worst_accuracy: float
    worst_hospital: str
    accuracy: dict[str, float]
    personal: dict[str, bool]

    def to_dict(self) -> dict[str, Any]:
        return {"mean_accuracy": self.mean_accuracy, "worst_accuracy": self.worst_accuracy,
                "worst_hospital": self.worst_hospital, "accuracy": dict(self.accuracy),
                "personal": dict(self.personal)}


def hospital_summary(run: RunResult | RoundRecord) -> HospitalSummary | None:
    """Mean and worst accuracy over ``per_hospital`` of a run's last round (or of a record);
    ``None`` when no hospital holds test patients.

    >>> rec = RoundRecord(0, 0.0, 0.0, 0.8, 0.9, 0, 0, {}, 2, 2, per_hospital={
    ...     "a": {"accuracy": 0.9, "personal": 1.0}, "b": {"accuracy": 0.6, "personal": 1.0}})
    >>> s = hospital_summary(rec); round(s.mean_accuracy, 3), s.worst_hospital
    (0.75, 'b')
    """
    record = run.final if isinstance(run, RunResult) else run
    per = record.per_hospital
    if not per:
        return None
    values = {h: float(m["accuracy"]) for h, m in per.items()}
    worst = min(values, key=lambda h: values[h])
    return HospitalSummary(
        mean_accuracy=float(np.mean(list(values.values()))), worst_accuracy=values[worst],
        worst_hospital=worst, accuracy=values,
        personal={h: bool(m.get("personal", 0.0)) for h, m in per.items()})

