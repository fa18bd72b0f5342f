"""Model inversion: what the released model tells about the records it was trained on.

* :class:`AttributeInferenceBlackBox` and :class:`AttributeInferenceWhiteBox`: the attacker
  knows every feature of a patient except one sensitive attribute, and the patient's
  diagnosis, and uses the model to infer the attribute (Fredrikson et al., "Privacy in
  pharmacogenetics", USENIX Security 2014, section 4: choose the value that maximises the
  model's likelihood of the known outcome times the attribute's prior).
* :class:`ClassRepresentative`: optimise an input so that the model is confident in a class,
  under a Gaussian prior around the public mean (Fredrikson, Jha and Ristenpart, CCS 2015,
  section 5, with a prior term in place of their image denoiser); the result is compared
  with the training class mean in :mod:`evaluation.scoring`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attacks._functional import torch_threads
from attacks.base import Attack, AttributeGuess, ClassRepresentatives, ThreatModel, register_attack
from securefed.errors import ConfigurationError, InvalidDataError
from securefed.observation import FeatureBlock, Observation, PriorKnowledge

__all__ = ["AttributeInferenceBlackBox", "AttributeInferenceWhiteBox", "ClassRepresentative",
           "attribute_candidates"]

_KNOWS = ("every feature of the target patient except the sensitive one, the patient's "
          "diagnosis, the schema and the public marginal of the sensitive attribute")


def attribute_candidates(feature: FeatureBlock, prior: PriorKnowledge, *, grid: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate values of ``feature``, the column values each implies, and their log prior.

    Binary: 0 and 1 with the public rate.  Categorical: each category (one-hot), with its
    public frequency.  Continuous: ``grid``
    evenly spaced values between the public 0.5% and 99.5% quantiles, weighted by a Gaussian
    kernel density of the public marginal (estimated from its quantiles).  Returns
    ``(values, column_values, log_prior)`` with ``log_prior`` normalised over the candidates.
    """
    m = prior.marginals
    cols = list(feature.columns)
    if feature.kind == "binary":
        p1 = float(np.clip(m.mean[cols[0]], 1e-6, 1 - 1e-6))
        return np.array([0.0, 1.0]), np.array([[0.0], [1.0]]), np.log([1 - p1, p1])
    if feature.kind == "categorical":
        k = len(cols)
        freq = np.clip(m.mean[cols], 1e-6, None)
        return np.arange(k, dtype=float), np.eye(k), np.log(freq / freq.sum())
    q = m.quantiles[:, cols[0]]
    lo, hi = np.quantile(q, [0.005, 0.995])
    values = np.linspace(lo, hi, grid)
    spread = float(np.std(q)) or 1.0
    bw = 1.06 * spread * len(q) ** (-0.2)  # Silverman's rule of thumb
    dens = np.exp(-0.5 * ((values[:, None] - q[None, :]) / bw) ** 2).sum(1) + 1e-12
    return values, values[:, None], np.log(dens / dens.sum())


def _targets(targets_X: np.ndarray, targets_y: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(targets_X, np.float64)
    y = np.asarray(targets_y, np.float64)
    if X.ndim != 2 or X.shape[1] != d:
        raise InvalidDataError(f"targets_X must have shape (n, {d}), got {X.shape}")
    if y.shape != (X.shape[0],):
        raise InvalidDataError(f"targets_y must have shape ({X.shape[0]},), got {y.shape}")
    return X, y


def _log_lik(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return y * np.log(p) + (1 - y) * np.log1p(-p)


@register_attack("attribute-inference-blackbox")
@dataclass(kw_only=True)
class AttributeInferenceBlackBox(Attack):
    """Fredrikson et al. 2014 with query access only.

    For each target and each candidate value ``v`` of ``feature`` the attacker queries
    ``P(y | x with s = v)`` and picks ``argmax_v P(y_target | x_v) * prior(v)``; ``estimate``
    ``"mean"`` returns the posterior mean instead (continuous attributes only).  A continuous
    attribute is searched over a ``grid`` of values weighted by its public density.
    """

    feature: str
    grid: int = 61
    estimate: str = "map"

    name = "attribute-inference-blackbox"
    threat_model = ThreatModel(
        attacker="anyone with query access to the released model (confidence scores)",
        observes="the model's predicted probability for inputs of its choice",
        knows=_KNOWS, goal="infer the sensitive attribute of known target patients")

    def run(self, observation: Observation, prior: PriorKnowledge, *, rng: np.random.Generator,
            targets_X: np.ndarray, targets_y: np.ndarray) -> AttributeGuess:
        if self.estimate not in ("map", "mean"):
            raise ConfigurationError(f"estimate must be 'map' or 'mean', got {self.estimate!r}")
        f = prior.feature(self.feature)
        X, y = _targets(targets_X, targets_y, prior.n_columns)
        values, colvals, logp = attribute_candidates(f, prior, grid=self.grid)
        n, k = len(X), len(values)
        queries = np.repeat(X[:, None, :], k, axis=1)
        queries[:, :, list(f.columns)] = colvals[None, :, :]
        proba = observation.predict_proba(queries.reshape(n * k, -1)).reshape(n, k)
        post = _log_lik(proba, y[:, None]) + logp[None, :]
        post = np.exp(post - post.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        if self.estimate == "mean" and f.kind == "continuous":
            guess = post @ values
        else:
            guess = values[np.argmax(post, axis=1)]
        return AttributeGuess(attack=self.name, feature=f.name, kind=f.kind, values=guess,
                              candidates=values, posterior=post, queries=n * k)


@register_attack("attribute-inference-whitebox")
@dataclass(kw_only=True)
class AttributeInferenceWhiteBox(Attack):
    """Attribute inference with the model's parameters: gradient-based MAP search.

    Minimises ``BCE(f(x_s), y) - log prior(s)`` over the sensitive attribute by Adam from
    ``starts`` starting values (public quantiles); a categorical attribute is relaxed with a
    softmax over its one-hot block and its prior is the public frequency, a continuous one
    has a Gaussian prior with the public mean and standard deviation.  Unlike the grid search,
    this scales to several sensitive columns and needs no queries.
    """

    feature: str
    starts: int = 8
    iterations: int = 150
    step_size: float = 0.1
    num_threads: int | None = 1

    name = "attribute-inference-whitebox"
    threat_model = ThreatModel(
        attacker="anyone holding the released model's parameters",
        observes="the final model (white-box)", knows=_KNOWS,
        goal="infer the sensitive attribute of known target patients")

    def run(self, observation: Observation, prior: PriorKnowledge, *, rng: np.random.Generator,
            targets_X: np.ndarray, targets_y: np.ndarray) -> AttributeGuess:
        f = prior.feature(self.feature)
        X, y = _targets(targets_X, targets_y, prior.n_columns)
        with torch_threads(self.num_threads):
            net = observation.build_final_model()
            for p in net.parameters():
                p.requires_grad_(False)
            return self._search(net, f, prior, X, y, rng)

    def _search(self, net: nn.Module, f: FeatureBlock, prior: PriorKnowledge, X: np.ndarray,
                y: np.ndarray, rng: np.random.Generator) -> AttributeGuess:
        m = prior.marginals
        cols = list(f.columns)
        n, S = len(X), self.starts
        base = torch.as_tensor(np.repeat(X[None], S, 0), dtype=torch.float32)  # (S, n, d)
        yt = torch.as_tensor(y, dtype=torch.float32).expand(S, n)
        col_idx = torch.as_tensor(cols)
        discrete = f.kind in ("categorical", "binary")
        if discrete:
            freq = m.mean[cols] if f.kind == "categorical" else np.array(
                [1 - m.mean[cols[0]], m.mean[cols[0]]])
            freq = np.clip(freq, 1e-6, None)
            logp = torch.as_tensor(np.log(freq / freq.sum()), dtype=torch.float32)
            z = torch.tensor(rng.normal(0, 1.0, size=(S, n, len(freq))), dtype=torch.float32,
                             requires_grad=True)
        else:
            mu, sd = float(m.mean[cols[0]]), float(m.std[cols[0]])
            starts = np.quantile(m.quantiles[:, cols[0]], (np.arange(S) + 0.5) / S)
            z = torch.tensor(np.repeat(starts[:, None, None], n, 1), dtype=torch.float32,
                             requires_grad=True)
            lo, hi = float(m.low[cols[0]]), float(m.high[cols[0]])

        def objective() -> torch.Tensor:
            Xq = base.clone()
            if discrete:
                probs = torch.softmax(z, -1)
                Xq[:, :, col_idx] = probs if f.kind == "categorical" else probs[..., 1:]
                neg_prior = -(probs * logp).sum(-1)
            else:
                Xq[:, :, col_idx] = z
                neg_prior = 0.5 * ((z.squeeze(-1) - mu) / sd) ** 2
            logits = net(Xq.reshape(S * n, -1)).reshape(S, n)
            bce = nn.functional.binary_cross_entropy_with_logits(logits, yt, reduction="none")
            return bce + neg_prior  # (S, n)

        opt = torch.optim.Adam([z], lr=self.step_size)
        for _ in range(self.iterations):
            opt.zero_grad()
            objective().sum().backward()
            opt.step()
            if f.kind == "continuous":
                with torch.no_grad():
                    z.clamp_(lo, hi)
        with torch.no_grad():
            obj = objective()
            best = obj.argmin(0)  # (n,)
            zb = z[best, torch.arange(n)]
            guess = zb.argmax(-1).double().numpy() if discrete else zb.squeeze(-1).double().numpy()
        return AttributeGuess(attack=self.name, feature=f.name, kind=f.kind, values=guess)


@register_attack("class-representative")
@dataclass(kw_only=True)
class ClassRepresentative(Attack):
    """An input the model finds most typical of each class, under a public-mean prior.

    Maximises ``log P(y = c | x) - prior_weight * ||(x - mean) / std||^2`` over ``x`` by Adam,
    with categorical blocks relaxed by a softmax and continuous columns kept inside the public
    range (Fredrikson et al. 2015, section 5).
    """

    classes: tuple[int, ...] = (0, 1)
    prior_weight: float = 0.2
    iterations: int = 300
    step_size: float = 0.05
    num_threads: int | None = 1

    name = "class-representative"
    threat_model = ThreatModel(
        attacker="anyone holding the released model's parameters",
        observes="the final model (white-box)",
        knows="the schema and public per-column means, deviations and ranges",
        goal="reconstruct what a typical training patient of each class looks like")

    def run(self, observation: Observation, prior: PriorKnowledge, *,
            rng: np.random.Generator) -> ClassRepresentatives:
        if self.prior_weight < 0:
            raise ConfigurationError(f"prior_weight must be >= 0, got {self.prior_weight}")
        if any(c not in (0, 1) for c in self.classes):
            raise ConfigurationError(f"classes of a binary model are 0 and 1, got {self.classes}")
        m = prior.marginals
        cont = list(prior.continuous_columns)
        bins = list(prior.binary_columns)
        blocks = [list(b.columns) for b in prior.categorical_blocks]
        inv = torch.as_tensor(np.argsort(cont + bins + [c for b in blocks for c in b]))
        C = len(self.classes)
        mean = torch.as_tensor(m.mean, dtype=torch.float32)
        std = torch.as_tensor(m.std, dtype=torch.float32)
        lo = torch.as_tensor(m.low[cont], dtype=torch.float32)
        hi = torch.as_tensor(m.high[cont], dtype=torch.float32)
        target = torch.as_tensor(self.classes, dtype=torch.float32)
        with torch_threads(self.num_threads):
            net = observation.build_final_model()
            for p in net.parameters():
                p.requires_grad_(False)
            zc = torch.tensor(np.repeat(m.mean[cont][None], C, 0) + rng.normal(0, 0.01, (C, len(cont))),
                              dtype=torch.float32, requires_grad=True)
            zb = torch.zeros(C, len(bins), requires_grad=True)
            zk = [torch.zeros(C, len(b), requires_grad=True) for b in blocks]

            def assemble() -> torch.Tensor:
                parts = [zc, torch.sigmoid(zb)] + [torch.softmax(z, -1) for z in zk]
                return torch.cat(parts, -1)[:, inv]

            opt = torch.optim.Adam([zc, zb, *zk], lr=self.step_size)
            for _ in range(self.iterations):
                opt.zero_grad()
                x = assemble()
                ll = -nn.functional.binary_cross_entropy_with_logits(net(x), target, reduction="none")
                reg = self.prior_weight * (((x - mean) / std) ** 2).sum(-1)
                (reg - ll).sum().backward()
                opt.step()
                with torch.no_grad():
                    zc.copy_(torch.maximum(torch.minimum(zc, hi), lo))
            with torch.no_grad():
                x = assemble()
                p1 = torch.sigmoid(net(x))
                conf = torch.where(target > 0.5, p1, 1 - p1)
        return ClassRepresentatives(attack=self.name, classes=tuple(self.classes),
                                    X=x.double().numpy(), confidence=conf.double().numpy())
