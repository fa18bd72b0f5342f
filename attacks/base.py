"""The attack interface: a threat model on every class, typed results, and a name registry.

Every attack reads an :class:`~securefed.observation.Observation` (what one adversary saw)
and a :class:`~securefed.observation.PriorKnowledge` (what it knew beforehand) and returns
a reconstruction.  It never receives ground truth: scoring happens in
:mod:`evaluation.scoring`.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from securefed.errors import ConfigurationError
from securefed.observation import Observation, PriorKnowledge
from securefed.registry import Registry

__all__ = [
    "ThreatModel",
    "Attack",
    "RowReconstruction",
    "GradientReconstruction",
    "AttributeGuess",
    "ClassRepresentatives",
    "MembershipScores",
    "register",
    "get_attack",
    "attack_names",
    "register_attack",
    "available_attacks",
]


@dataclass(frozen=True)
class ThreatModel:
    """Who the attacker is, what it observes, what it knows beforehand, and what it wants."""

    attacker: str
    observes: str
    knows: str
    goal: str

    def __str__(self) -> str:
        return (f"attacker: {self.attacker}; observes: {self.observes}; knows: {self.knows}; "
                f"goal: {self.goal}")


class Attack(ABC):
    """Base class of all attacks.

    Subclasses set ``name`` (the registry key) and ``threat_model``, take their settings as
    keyword-only constructor arguments (stored unchanged), and implement :meth:`run`.  Extra
    inputs that are the attacker's own (target records it already partly knows, candidate
    records whose membership it asks about) are keyword arguments of ``run``.
    """

    name: ClassVar[str] = "attack"
    threat_model: ClassVar[ThreatModel]

    @abstractmethod
    def run(self, observation: Observation, prior: PriorKnowledge, *,
            rng: np.random.Generator, **inputs: Any) -> Any:
        """Attack ``observation`` with ``prior`` knowledge; returns a typed reconstruction."""

    def _require(self, observation: Observation, adversaries: tuple[str, ...]) -> None:
        if observation.adversary not in adversaries:
            raise ConfigurationError(
                f"{self.name} needs an observation by {list(adversaries)}, got {observation.adversary!r}"
            )


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class RowReconstruction:
    """Records reconstructed from one observed update.

    ``X`` holds rows in model-input space (standardised continuous columns, one-hot blocks);
    ``y`` their labels (or ``None``).  ``loss`` is the final matching loss of an optimisation
    attack; ``support`` the number of first-layer units that agreed on each analytic row.
    """

    round_index: int
    source: str
    sender: int | None
    X: np.ndarray
    y: np.ndarray | None
    loss: float | None = None
    support: np.ndarray | None = None
    fallback: bool = False  # True: the observation was judged worthless, X is the prior guess
    note: str | None = None  # how the attack went (row count, steps, why it fell back)


@dataclass(frozen=True)
class GradientReconstruction:
    """A gradient attack's reconstructions, one per attacked update."""

    attack: str
    items: tuple[RowReconstruction, ...]

    def for_sender(self, sender: int | None, *, round_index: int = 0) -> RowReconstruction:
        for it in self.items:
            if it.sender == sender and it.round_index == round_index:
                return it
        raise ConfigurationError(
            f"no reconstruction for sender {sender!r} in round {round_index}; have "
            f"{[(i.round_index, i.sender) for i in self.items]}"
        )


@dataclass(frozen=True)
class AttributeGuess:
    """Inferred values of one sensitive feature for each target record.

    ``values`` is in the feature's own terms: a standardised value for a continuous feature,
    a category index for a categorical one.  ``posterior`` (targets x candidates) and
    ``candidates`` are kept when the attack scores a grid of candidates.
    """

    attack: str
    feature: str
    kind: str
    values: np.ndarray
    candidates: np.ndarray | None = None
    posterior: np.ndarray | None = None
    queries: int = 0


@dataclass(frozen=True)
class ClassRepresentatives:
    """One optimised input per class (rows in model-input space) and the model's confidence."""

    attack: str
    classes: tuple[int, ...]
    X: np.ndarray
    confidence: np.ndarray


@dataclass(frozen=True)
class MembershipScores:
    """A membership score per candidate record (higher: more likely a training member).

    ``threshold`` is the attacker's own decision threshold (score >= threshold means member).
    """

    attack: str
    scores: np.ndarray
    threshold: float


# --------------------------------------------------------------------------- registry
ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(name: str, cls: type[Attack] | None = None, *, replace: bool = False) -> Any:
    """Add an attack class under ``name`` (its ``name`` attribute); a decorator without ``cls``.

    The class must state its :class:`ThreatModel`.
    """
    if cls is None:
        return lambda c: register_attack(name, c, replace=replace)
    if getattr(cls, "name", None) != name:
        raise ConfigurationError(
            f"attack class {cls.__name__} has name {getattr(cls, 'name', None)!r}, "
            f"registered as {name!r}: they must agree")
    if not isinstance(getattr(cls, "threat_model", None), ThreatModel):
        raise ConfigurationError(f"attack class {cls.__name__} must state its threat_model")
    return ATTACKS.register(name, cls, replace=replace)


def attack_names() -> tuple[str, ...]:
    """The registered attack names, in registration order."""
    return ATTACKS.names()


def get_attack(name: str, **kwargs: Any) -> Attack:
    """An attack instance by registered name; an unknown name lists the valid ones."""
    return ATTACKS.build(name, **kwargs)


def register(cls: type[Attack]) -> type[Attack]:
    """Deprecated: use ``@register_attack(name)``."""
    warnings.warn("attacks.register is deprecated; use @attacks.register_attack(name)",
                  DeprecationWarning, stacklevel=2)
    return register_attack(cls.name, cls)


def available_attacks() -> dict[str, ThreatModel]:
    """Deprecated: use :func:`attack_names` and each class's ``threat_model``."""
    warnings.warn("attacks.available_attacks is deprecated; use attacks.attack_names()",
                  DeprecationWarning, stacklevel=2)
    return {n: ATTACKS.get(n).threat_model for n in sorted(ATTACKS.names())}
