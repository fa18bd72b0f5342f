"""Membership inference: was this patient's record used to train the released model?

* :class:`LossThreshold`: a record is called a member when the model's loss on it is low
  (Yeom et al., "Privacy risk in machine learning", CSF 2018, section 3.2) or its confidence in
  the true label is high (Salem et al., NDSS 2019, "ML-Leaks", attack 3).
* :class:`ShadowLiRA`: the likelihood-ratio attack with shadow models (Carlini et al.,
  "Membership inference attacks from first principles", IEEE S&P 2022, algorithm 1): the
  attacker trains shadow models on random halves of a population that contains the
  candidates, fits Gaussians to each candidate's logit-scaled confidence with it IN and OUT
  of training, and scores the target model's confidence by their likelihood ratio.

Scores are "higher means member"; metrics (AUC, TPR at low FPR, balanced accuracy, the DP
bound) are in :mod:`evaluation.scoring`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

from attacks._functional import ParamLayout, torch_threads
from attacks.base import Attack, MembershipScores, ThreatModel, register_attack
from securefed.errors import ConfigurationError, InvalidDataError
from securefed.models import get_flat_params
from securefed.observation import Observation, PriorKnowledge

__all__ = ["LossThreshold", "ShadowLiRA", "logit_confidence", "label_logit"]


def _candidates(X: np.ndarray, y: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    if X.ndim != 2 or X.shape[1] != d or y.shape != (X.shape[0],):
        raise InvalidDataError(
            f"candidates must be X of shape (n, {d}) and y of shape (n,), got {X.shape} and {y.shape}"
        )
    return X, y


def logit_confidence(p1: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log(p_y / (1 - p_y))`` with ``p_y`` the probability of the true label (LiRA's scaling).

    Saturates where ``p1`` rounds to 0 or 1; prefer :func:`label_logit` on the logits."""
    py = np.where(np.asarray(y) > 0.5, p1, 1.0 - p1)
    py = np.clip(py, 1e-12, 1 - 1e-12)
    return np.log(py) - np.log1p(-py)


def label_logit(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's scaled confidence ``log(p_y / (1 - p_y))`` computed from the logit ``z``: it is
    ``z`` for a positive record and ``-z`` for a negative one, exact at any confidence.

    >>> label_logit(np.array([40.0, 40.0]), np.array([1.0, 0.0])).tolist()
    [40.0, -40.0]
    """
    return np.where(np.asarray(y) > 0.5, 1.0, -1.0) * np.asarray(z, np.float64)


@register_attack("membership-loss")
@dataclass(kw_only=True)
class LossThreshold(Attack):
    """Loss (or confidence) threshold membership inference on the released model.

    ``score="loss"``: the score is minus the cross-entropy of the true label; ``"confidence"``:
    the probability of the true label.  ``threshold=None`` puts the decision threshold at the
    median score of the queried candidates (the attacker assumes half of them are members,
    the balanced membership game of Yeom et al. 2018).
    """

    score: str = "loss"
    threshold: float | None = None

    name = "membership-loss"
    threat_model = ThreatModel(
        attacker="anyone with query access to the released model",
        observes="the model's predicted probability on candidate records",
        knows="the candidate records and their labels",
        goal="tell training patients (members) from other patients")

    def run(self, observation: Observation, prior: PriorKnowledge, *, rng: np.random.Generator,
            candidates_X: np.ndarray, candidates_y: np.ndarray) -> MembershipScores:
        if self.score not in ("loss", "confidence"):
            raise ConfigurationError(f"score must be 'loss' or 'confidence', got {self.score!r}")
        X, y = _candidates(candidates_X, candidates_y, prior.n_columns)
        zy = label_logit(observation.predict_logits(X), y)
        # log p_y = -softplus(-z_y), exact from the logit (no float32 probability to saturate)
        s = -np.logaddexp(0.0, -zy) if self.score == "loss" else np.exp(-np.logaddexp(0.0, -zy))
        thr = float(np.median(s)) if self.threshold is None else float(self.threshold)
        return MembershipScores(attack=f"{self.name}:{self.score}", scores=s, threshold=thr)


@register_attack("membership-lira")
@dataclass(kw_only=True)
class ShadowLiRA(Attack):
    """LiRA with shadow models trained by the attacker (Carlini et al. 2022).

    The attacker's shadow population is the candidates plus ``prior.reference_X`` (public
    records from the same population).  Each of ``n_shadow`` models is trained on a random
    half of it with the attacker's guess of the training recipe (``steps`` full-batch steps of
    ``optimizer`` at ``learning_rate``, optional ``weight_decay``), starting from independent
    initialisations; all shadows are trained at once as one batched model.  ``online=True``
    uses IN and OUT models (score: log-likelihood ratio, threshold 0); ``online=False`` only
    OUT models (score: one-sided z of the target's confidence, threshold: median).  Variances
    are pooled over candidates, as the paper recommends for few shadow models.
    """

    n_shadow: int = 16
    steps: int = 300
    learning_rate: float = 0.01
    optimizer: str = "adam"
    weight_decay: float = 0.0
    online: bool = True
    num_threads: int | None = 1

    name = "membership-lira"
    threat_model = ThreatModel(
        attacker="anyone with query access to the released model and public records",
        observes="the model's predicted probability on candidate records",
        knows="the candidate records and labels, the model architecture, a guess of the training "
              "recipe, and public records from the same population",
        goal="tell training patients (members) from other patients")

    def __post_init__(self) -> None:
        if self.n_shadow < 2 or self.steps < 1 or self.learning_rate <= 0:
            raise ConfigurationError(
                f"need n_shadow >= 2, steps >= 1, learning_rate > 0; got {self.n_shadow}, "
                f"{self.steps}, {self.learning_rate}"
            )
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigurationError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")

    def run(self, observation: Observation, prior: PriorKnowledge, *, rng: np.random.Generator,
            candidates_X: np.ndarray, candidates_y: np.ndarray) -> MembershipScores:
        spec = prior.model or observation.model
        if spec is None:
            raise ConfigurationError("LiRA needs the model architecture (prior.model)")
        X, y = _candidates(candidates_X, candidates_y, prior.n_columns)
        pop_X, pop_y = X, y
        if prior.reference_X is not None and prior.reference_y is not None:
            pop_X = np.concatenate([X, np.asarray(prior.reference_X, np.float64)])
            pop_y = np.concatenate([y, np.asarray(prior.reference_y, np.float64)])
        K, N, n = self.n_shadow, len(pop_X), len(X)
        # each candidate is IN exactly half of the shadows (Carlini et al. 2022, section 4.2)
        inside = np.zeros((K, N), dtype=bool)
        for j in range(N):
            inside[rng.permutation(K)[: K // 2], j] = True
        with torch_threads(self.num_threads):
            conf = self._train_shadows(spec, pop_X, pop_y, inside, rng)[:, :n]  # (K, n)
        target = label_logit(observation.predict_logits(X), y)
        ins = inside[:, :n]
        mu_out = np.array([conf[~ins[:, j], j].mean() for j in range(n)])
        sd_out = np.sqrt(np.mean([conf[~ins[:, j], j].var() for j in range(n)])) + 1e-6
        if not self.online:
            s = (target - mu_out) / sd_out
            return MembershipScores(attack=self.name + ":offline", scores=s, threshold=float(np.median(s)))
        mu_in = np.array([conf[ins[:, j], j].mean() for j in range(n)])
        sd_in = np.sqrt(np.mean([conf[ins[:, j], j].var() for j in range(n)])) + 1e-6
        s = norm.logpdf(target, mu_in, sd_in) - norm.logpdf(target, mu_out, sd_out)
        return MembershipScores(attack=self.name, scores=s, threshold=0.0)

    def _train_shadows(self, spec, X, y, inside, rng) -> np.ndarray:
        layout = ParamLayout(spec)
        K = inside.shape[0]
        seeds = rng.integers(0, 2**31 - 1, size=K)
        init = np.stack([get_flat_params(spec.build(seed=int(s))) for s in seeds])
        params = [p.clone().requires_grad_(True)
                  for p in layout.split(torch.as_tensor(init, dtype=torch.float32))]
        Xt = torch.as_tensor(X, dtype=torch.float32).expand(K, *X.shape)
        yt = torch.as_tensor(y, dtype=torch.float32).expand(K, len(y))
        mask = torch.as_tensor(inside, dtype=torch.float32)
        count = mask.sum(1).clamp_min(1.0)
        if self.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=self.learning_rate,
                                                          weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        for _ in range(self.steps):
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(
                layout.logits(params, Xt), yt, reduction="none")
            ((loss * mask).sum(1) / count).sum().backward()
            opt.step()
        with torch.no_grad():
            z = layout.logits(params, Xt).double().numpy()
        return label_logit(z, y[None, :])
