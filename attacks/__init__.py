"""Privacy attacks that measure what each party of a federated run could learn.

Each attack reads a :class:`securefed.observation.Observation` and the attacker's declared
:class:`securefed.observation.PriorKnowledge`, states its threat model on the class, and
returns a typed reconstruction; scoring against ground truth lives in :mod:`evaluation`.
"""

from attacks._functional import torch_threads
from attacks.base import (
    ATTACKS,
    Attack,
    AttributeGuess,
    ClassRepresentatives,
    GradientReconstruction,
    MembershipScores,
    RowReconstruction,
    ThreatModel,
    attack_names,
    available_attacks,
    get_attack,
    register,
    register_attack,
)
from attacks.gradient import AnalyticFirstLayer, TabularInversion, infer_label_count
from attacks.membership import LossThreshold, ShadowLiRA
from attacks.model_inversion import (
    AttributeInferenceBlackBox,
    AttributeInferenceWhiteBox,
    ClassRepresentative,
)

__all__ = [
    "Attack", "ThreatModel", "register_attack", "attack_names", "get_attack", "ATTACKS",
    "register", "available_attacks",
    "RowReconstruction", "GradientReconstruction", "AttributeGuess", "ClassRepresentatives",
    "MembershipScores", "AnalyticFirstLayer", "TabularInversion", "infer_label_count",
    "AttributeInferenceBlackBox", "AttributeInferenceWhiteBox", "ClassRepresentative",
    "LossThreshold", "ShadowLiRA", "torch_threads",
]
