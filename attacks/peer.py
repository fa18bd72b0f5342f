"""A curious hospital recovers the other hospitals' update from the change of the global model.

Every participant receives the new global model, so it knows the round's aggregate
``Delta = w_{t+1} - w_t = eta_s sum_k p_k u_k / sum_k p_k`` (``eta_s`` the server's step, 1
for FedAvg).  It also knows its own upload ``p_own u_own``.  Subtracting it leaves the
weighted sum of the others' updates,

    sum_{k != own} p_k u_k = (sum_k p_k) Delta / eta_s - p_own u_own,

and with two participants that *is* the other hospital's update: secure aggregation hides
individual updates from the server, not from the only other contributor (Bonawitz et al.,
CCS 2017, section 2, assume enough honest participants for exactly this reason).  With more
participants the peer learns only the weighted mean of the others.

The attack needs the total weight ``sum_k p_k``: under FedAvg it is the total number of
patients, which the peer is assumed to know (hospitals in a consortium know each other's
enrolment); under client-level DP every weight is 1, so it is the number of participants.
When the protocol's weights are not known to the peer (FedMedHeter's heterogeneity weights
depend on each hospital's loss) it uses the counts as its guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.base import Attack, ThreatModel, register_attack
from securefed.errors import ConfigurationError, InvalidDataError
from securefed.observation import Observation, PriorKnowledge

__all__ = ["UpdateEstimate", "PeerSubtraction"]


@dataclass(frozen=True)
class UpdateEstimate:
    """The peer's estimate of the other participants' (weighted mean) update of one round."""

    attack: str
    round_index: int
    update: np.ndarray
    participants: int
    fallback: bool = False


@register_attack("peer-subtraction")
@dataclass(kw_only=True)
class PeerSubtraction(Attack):
    """Subtract one's own upload from the revealed aggregate (see the module docstring).

    ``round_index``: the round attacked; ``server_learning_rate``: the server's public step
    ``eta_s`` (the aggregate is the model change divided by it); ``max_norm_ratio``: an
    estimate longer than that many times the peer's own update is judged to be noise (DP
    noise added to the aggregate), and the peer falls back to its own update as its guess,
    the no-observation baseline.
    """

    round_index: int = 0
    server_learning_rate: float = 1.0
    max_norm_ratio: float = 3.0

    name = "peer-subtraction"
    threat_model = ThreatModel(
        attacker="a participating hospital (honest-but-curious)",
        observes="the global model before and after each round it takes part in, and its own "
                 "upload",
        knows="the participants' weights (FedAvg: patient counts; DP: 1 each), or its guess of them",
        goal="recover the other participants' update")

    def __post_init__(self) -> None:
        if not self.server_learning_rate > 0 or not self.max_norm_ratio > 0:
            raise ConfigurationError(
                f"server_learning_rate and max_norm_ratio must be > 0, got "
                f"{self.server_learning_rate!r} and {self.max_norm_ratio!r}")

    def run(self, observation: Observation, prior: PriorKnowledge | None = None, *,
            rng: np.random.Generator | None = None, own_vector: np.ndarray, own_weight: float,
            total_weight: float) -> UpdateEstimate:
        """``own_vector`` is the hospital's own upload ``p_own u_own`` (pre-scaled, as sent);
        ``total_weight`` its knowledge or guess of ``sum_k p_k``."""
        self._require(observation, ("client",))
        rounds = [u for u in observation.updates if u.round_index == self.round_index]
        if not rounds:
            raise ConfigurationError(
                f"hospital {observation.client_id} did not observe round {self.round_index}")
        agg = rounds[0]
        own = np.asarray(own_vector, np.float64)
        if own.shape != agg.update.shape:
            raise InvalidDataError(
                f"own upload has shape {own.shape}, the model has {agg.update.shape}")
        rest = float(total_weight) - float(own_weight)
        if not rest > 0:
            raise ConfigurationError(
                f"total_weight {total_weight!r} must exceed the own weight {own_weight!r}")
        others = (float(total_weight) * agg.update / self.server_learning_rate - own) / rest
        own_update = own / float(own_weight) if own_weight > 0 else own
        if np.linalg.norm(others) > self.max_norm_ratio * np.linalg.norm(own_update):
            return UpdateEstimate(self.name, self.round_index, own_update, len(agg.contributors),
                                  fallback=True)
        return UpdateEstimate(self.name, self.round_index, others, len(agg.contributors))
