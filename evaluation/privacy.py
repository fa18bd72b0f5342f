"""The attacks an audit runs against each trained cell, by name.

An audit attack entry wires one attack from the :mod:`attacks` package to the audit: it
builds the attacker's observation from the run (through the defense's threat model), runs
the attack, and scores the reconstruction against the ground truth and a baseline that does
not use the observation.  The attack itself never sees the ground truth; only the scorer
here does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from defenses import Defense
from evaluation.cv import Fold
from securefed.errors import ConfigurationError
from securefed.federated import RunResult
from securefed.models import ModelSpec
from securefed.registry import Registry

__all__ = [
    "AttackScore",
    "AttackContext",
    "AuditAttack",
    "AUDIT_ATTACKS",
    "register_audit_attack",
    "get_audit_attack",
    "audit_attack_names",
]


@dataclass(frozen=True)
class AttackScore:
    """One scored attack outcome.

    ``value`` is the attack's success on ``metric`` (higher means more leakage), ``baseline``
    the same metric for a guess that ignores the observation, ``gain = value - baseline``.
    ``examples`` may carry a few reconstructed rows or images beside the truth for figures.
    """

    attack: str
    party: str
    metric: str
    value: float
    baseline: float
    details: Mapping[str, Any] = field(default_factory=dict)
    examples: Mapping[str, Any] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        if math.isnan(self.value) or math.isnan(self.baseline):
            return float("nan")
        return self.value - self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "party": self.party, "metric": self.metric,
                "value": self.value, "baseline": self.baseline, "gain": self.gain,
                "details": dict(self.details), "examples": dict(self.examples)}


@dataclass(frozen=True)
class AttackContext:
    """Everything an audit attack entry may use for one cell."""

    run: RunResult
    fold: Fold
    defense: Defense
    model: ModelSpec
    algorithm: str
    rng: np.random.Generator
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditAttack:
    """An attack as the audit runs it.

    ``needs_transcript`` asks the engine to record the server's transcript for the cell;
    ``applies`` says whether the attack is meaningful for an (algorithm kind, defense) pair.
    """

    name: str
    summary: str
    threat_model: str
    run: Callable[[AttackContext], list[AttackScore]]
    needs_transcript: bool = False
    applies: Callable[[str, Defense], bool] = lambda kind, defense: True


AUDIT_ATTACKS: Registry[AuditAttack] = Registry("audit attack")


def register_audit_attack(name: str, attack: AuditAttack | None = None, *,
                          replace: bool = False) -> Any:
    """Add an audit attack under ``name`` (its ``name`` field); a decorator without it."""
    if attack is None:
        return lambda a: register_audit_attack(name, a, replace=replace)
    if attack.name != name:
        raise ConfigurationError(f"audit attack {attack.name!r} registered as {name!r}")
    return AUDIT_ATTACKS.register(name, attack, replace=replace)


def audit_attack_names() -> tuple[str, ...]:
    return AUDIT_ATTACKS.names()


def get_audit_attack(name: str) -> AuditAttack:
    return AUDIT_ATTACKS.get(name)


_DEPRECATED = {"register_attack": register_audit_attack, "attack_names": audit_attack_names,
               "get_attack": get_audit_attack}


def __getattr__(name: str) -> Any:
    # evaluation.get_attack shared its name with attacks.get_attack and meant another thing
    if name in _DEPRECATED:
        new = _DEPRECATED[name].__name__
        warnings.warn(f"evaluation.privacy.{name} is deprecated; use {new}", DeprecationWarning,
                      stacklevel=2)
        return _DEPRECATED[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
