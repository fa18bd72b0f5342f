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
from attacks.gradient import (
    AnalyticFirstLayer,
    TabularInversion,
    infer_label_count,
    prior_guess_rows,
    rank_row_estimate,
)
from attacks.imprint import ImprintAttack, ImprintModel, imprint_model
from attacks.membership import LossThreshold, ShadowLiRA, label_logit
from attacks.model_inversion import (
    AttributeInferenceBlackBox,
    AttributeInferenceWhiteBox,
    ClassRepresentative,
)
from attacks.peer import PeerSubtraction, UpdateEstimate

__all__ = [
    "Attack", "ThreatModel", "register_attack", "attack_names", "get_attack", "ATTACKS",
    "register", "available_attacks",
    "RowReconstruction", "GradientReconstruction", "AttributeGuess", "ClassRepresentatives",
    "MembershipScores", "AnalyticFirstLayer", "TabularInversion", "infer_label_count",
    "AttributeInferenceBlackBox", "AttributeInferenceWhiteBox", "ClassRepresentative",
    "LossThreshold", "ShadowLiRA", "torch_threads", "label_logit", "rank_row_estimate",
    "prior_guess_rows", "ImprintAttack", "ImprintModel", "imprint_model", "PeerSubtraction",
    "UpdateEstimate",
]
