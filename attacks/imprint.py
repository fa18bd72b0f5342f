"""A malicious server that chooses the model: imprint (binning) layer, "Robbing the Fed".

Fowl, Geiping, Czaja, Goldblum and Goldstein (ICLR 2022, "Robbing the fed: directly
obtaining private data in federated learning with modified models", section 3) let the
server send a model whose first fully connected layer is an *imprint*: every unit ``i``
measures the same linear statistic ``s(x) = a . x`` of a record and fires when it exceeds its
own threshold ``t_i``,

    h_i = relu(eps (a . x - t_i)),      t_1 < t_2 < ... < t_k,

with thresholds at quantiles of ``s`` on public records.  The gradient of the first layer
for a batch is ``dL/dW_i = sum_j g_j v_i eps [s(x_j) > t_i] x_j`` and ``dL/db_i`` the same
without ``x_j`` (``g_j`` the loss gradient at the output, ``v_i`` the unit's output
weight), so the difference of two neighbouring units, divided by ``v_i``, holds only the
records whose statistic falls between their thresholds.  A bin that holds one record gives it
back exactly: ``x = (dW_i/v_i - dW_{i+1}/v_{i+1}) / (db_i/v_i - db_{i+1}/v_{i+1})``.

The attack works on the *aggregate*: one full-batch step of FedAvg (or of any rule that
weighs hospitals by a per-hospital factor) sums the per-record gradients of every hospital,
and a bin still isolates a record whatever hospital holds it.  Secure aggregation therefore
does not stop it; noise added before the server sees the sum (local or distributed DP)
does, because a bin's difference is then drowned in noise.  A malicious model is not a
deviation from the aggregation protocol, so protocol checks do not refuse it.

:func:`imprint_model` builds the model the server sends; :class:`ImprintAttack` reads the
records back from an observed update.  The attack keeps a bin only when its bias
difference stands out of the noise (more than ``z_threshold`` robust standard deviations
of all bins' differences, the median absolute deviation times 1.4826), and only rows inside
the public range; the rest of the federation's records are left to the prior guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks._functional import ParamLayout
from attacks.base import (
    Attack,
    GradientReconstruction,
    RowReconstruction,
    ThreatModel,
    register_attack,
)
from attacks.gradient import select_targets
from securefed.errors import ConfigurationError
from securefed.models import ModelSpec
from securefed.observation import Observation, PriorKnowledge

__all__ = ["ImprintModel", "imprint_model", "ImprintAttack"]


@dataclass(frozen=True)
class ImprintModel:
    """The model a malicious server sends: an MLP ``d -> bins -> 1`` whose first layer is an
    imprint of the statistic ``direction . x`` at ``thresholds`` (ascending)."""

    spec: ModelSpec
    params: np.ndarray
    direction: np.ndarray
    thresholds: np.ndarray
    output_weights: np.ndarray
    scale: float


def imprint_model(prior: PriorKnowledge, *, bins: int, rng: np.random.Generator,
                  scale: float = 1e-3, output_weight: float = 0.1) -> ImprintModel:
    """Craft the imprint model from public knowledge only.

    ``direction`` is a random unit vector over the input columns (a continuous statistic, so
    that records sharing a value of one feature still fall into different bins);
    ``thresholds`` are ``bins`` evenly spaced quantiles of ``direction . x`` over public
    records (``prior.reference_X`` when given, else rows drawn from the public marginals).
    ``scale`` (``eps``) keeps the hidden activations, hence the second layer's gradient,
    small; the output weights alternate in sign (``+-output_weight``) so that the logit stays
    near the public log-odds and every record keeps a non-zero output gradient.
    """
    if bins < 2:
        raise ConfigurationError(f"bins must be >= 2, got {bins}")
    if not scale > 0 or not output_weight > 0:
        raise ConfigurationError(
            f"scale and output_weight must be > 0, got {scale!r} and {output_weight!r}")
    d = prior.n_columns
    a = rng.normal(size=d)
    a /= np.linalg.norm(a)
    public = (np.asarray(prior.reference_X, np.float64) if prior.reference_X is not None
              else prior.marginals.sample(4096, rng=rng))
    stats = public @ a
    # interior quantiles, so that the lowest and highest bins are not empty by construction
    t = np.quantile(stats, (np.arange(bins) + 0.5) / bins)
    t = t + 1e-9 * np.arange(bins)  # strictly increasing even with ties in the public data
    spec = ModelSpec("mlp", n_features=d, hidden=(bins,))
    W1 = scale * np.tile(a, (bins, 1))
    b1 = -scale * t
    v = output_weight * np.where(np.arange(bins) % 2 == 0, 1.0, -1.0)
    hidden = np.maximum(scale * (stats[:, None] - t[None, :]), 0.0)
    rate = float(np.clip(prior.marginals.label_rate, 0.05, 0.95))
    c = float(np.log(rate / (1 - rate)) - np.mean(hidden @ v))
    params = np.concatenate([W1.ravel(), b1, v, [c]])
    ParamLayout(spec).check(params)
    return ImprintModel(spec, params, a, t, v, float(scale))


@register_attack("imprint")
@dataclass(kw_only=True)
class ImprintAttack(Attack):
    """Read records out of an update of an imprint model (Fowl et al. 2022, section 3).

    ``model`` is the :class:`ImprintModel` the server sent.  ``z_threshold``: a bin is used
    when its bias difference exceeds that many robust standard deviations of all bins'
    differences (empty bins have none, so without noise any record stands out); ``margin``:
    rows farther than ``margin`` public spans outside the public range are dropped (a bin
    holding several records gives their weighted mean, which can land anywhere once
    gradients of opposite sign mix).  Labels come from the sign of the bin's output
    gradient: ``g = p - y`` is negative exactly for a positive record.
    """

    model: ImprintModel
    z_threshold: float = 5.0
    margin: float = 0.25
    round_index: int = 0
    target: str = "auto"

    name = "imprint"
    threat_model = ThreatModel(
        attacker="malicious server: chooses the model it sends and the local training it "
                 "announces (one full-batch step), follows the aggregation protocol otherwise",
        observes="the round's aggregate (secure aggregation) or each hospital's update",
        knows="the schema and public records of the population (to place the bins); not the "
              "number of records behind the aggregate",
        goal="recover individual patients' records from the aggregate")

    def __post_init__(self) -> None:
        if not self.z_threshold > 0 or not self.margin >= 0:
            raise ConfigurationError(
                f"need z_threshold > 0 and margin >= 0, got {self.z_threshold!r}, {self.margin!r}")

    def run(self, observation: Observation, prior: PriorKnowledge, *, rng: np.random.Generator,
            senders: tuple[int, ...] | None = None) -> GradientReconstruction:
        self._require(observation, ("server",))
        items = [self.read(u.update, prior=prior, round_index=u.round_index, source=u.source,
                           sender=u.sender)
                 for u in select_targets(observation, round_index=self.round_index,
                                         senders=senders, target=self.target)]
        return GradientReconstruction(attack=self.name, items=tuple(items))

    def read(self, update: np.ndarray, *, prior: PriorKnowledge, round_index: int = 0,
             source: str = "aggregate", sender: int | None = None) -> RowReconstruction:
        """The records one observed update of the imprint model gives away."""
        m = self.model
        layout = ParamLayout(m.spec)
        layout.check(update)
        w_sl, b_sl, units, inputs = layout.first_layer()
        g = -np.asarray(update, np.float64)  # minus the step; the learning rate cancels
        dW = g[w_sl].reshape(units, inputs) / m.output_weights[:, None]
        db = g[b_sl] / m.output_weights
        # unit i fires for s > t_i; bin i = (t_i, t_{i+1}] is unit i minus unit i + 1
        dW_bin = dW - np.vstack([dW[1:], np.zeros((1, inputs))])
        db_bin = db - np.append(db[1:], 0.0)
        mad = float(np.median(np.abs(db_bin - np.median(db_bin))))
        floor = 1e-6 * float(np.max(np.abs(db_bin), initial=0.0))
        cut = max(self.z_threshold * 1.4826 * mad, floor)
        hit = np.abs(db_bin) > cut
        if not hit.any():
            return RowReconstruction(round_index, source, sender, np.zeros((0, inputs)), np.zeros(0),
                                     fallback=True, note=f"no bin stands out of the noise ({units} bins)")
        X = dW_bin[hit] / db_bin[hit][:, None]
        y = (db_bin[hit] < 0).astype(float)
        lo, hi = prior.marginals.low, prior.marginals.high
        span = np.maximum(hi - lo, 1e-9)
        inside = np.all((X >= lo - self.margin * span) & (X <= hi + self.margin * span), axis=1)
        X, y = X[inside], y[inside]
        return RowReconstruction(
            round_index, source, sender, X, y, fallback=len(X) == 0,
            note=f"{int(hit.sum())} of {units} bins stand out; {len(X)} rows inside the public range")
