"""The audit's attacks: each wires one attack of the :mod:`attacks` package to a cell.

For every cell the entry builds the adversary's observation from the run (through
:func:`securefed.observation.observe`), declares the attacker's prior knowledge (the schema,
public marginals and public records: the external Pima.te patients, standardised like the
fold; never the targets), runs the attack, and scores it with :mod:`evaluation.scoring`
beside the baseline that ignores the observation.

* ``gradient-inversion`` (curious server): TabLeak-style inversion of the first round's
  update of hospital 0 when the channel shows it, else of the revealed aggregate (for an
  algorithm with adaptive local step sizes the attacker replays plain SGD at the nominal
  rate, a guess, since it cannot replay the adaptive schedule); scored as
  mean per-feature accuracy of the reconstructed rows against the true rows behind that
  update (continuous features within 0.3 standard deviations; the scorer's default).
* ``model-inversion`` (outsider with the released model): white-box attribute inference of
  each target patient's plasma glucose from the other features and the diagnosis
  (Fredrikson et al. 2014), scored as accuracy within the tolerance against the public-median
  guess.
* ``membership`` (outsider): loss-threshold membership inference (Yeom et al. 2018) on the
  fold's training patients (members) against its held-out patients (non-members); scored as
  ROC AUC against the coin flip (0.5), with the advantage bound implied by epsilon where DP
  applies.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from attacks import AttributeInferenceWhiteBox, LossThreshold, TabularInversion
from evaluation.privacy import AttackContext, AttackScore, AuditAttack, register_audit_attack
from evaluation.scoring import score_attribute, score_membership, score_reconstruction
from securefed.observation import PriorKnowledge, observe

__all__: list[str] = []


def _prior(ctx: AttackContext, *, keep_reference: bool = False) -> PriorKnowledge:
    if ctx.fold.external is None:
        X, y = ctx.fold.data.X_test, ctx.fold.data.y_test
    else:
        X, y = ctx.fold.external
    return PriorKnowledge.from_public_data(
        X, y, feature_names=ctx.fold.data.feature_names, model=ctx.model,
        keep_reference=keep_reference)


def _epsilon(ctx: AttackContext) -> tuple[float | None, float]:
    eps = [r.extra.get("epsilon") for r in ctx.run.history if "epsilon" in r.extra]
    delta = [r.extra.get("delta") for r in ctx.run.history if "delta" in r.extra]
    if not eps:
        return None, 0.0
    return float(eps[-1]), float(delta[-1]) if delta else 0.0


# ------------------------------------------------------------------ gradient inversion
def _gradient_inversion(ctx: AttackContext) -> list[AttackScore]:
    p = {"restarts": 30, "iterations": 1500, **ctx.params}
    obs = observe(ctx.run, adversary="server")
    prior = _prior(ctx)
    clients = ctx.fold.data.clients
    first = obs.select(round_index=0)
    per_client = [u for u in first if u.source == "client"]
    if per_client:
        target = next((u for u in per_client if u.sender == 0), per_client[0])
        true_X = clients[target.sender].X
        true_y = clients[target.sender].y
        scope = f"hospital {target.sender}'s update"
    else:
        aggs = [u for u in first if u.source == "aggregate"]
        if not aggs:
            return []
        target = aggs[0]
        true_X = np.concatenate([clients[i].X for i in target.contributors])
        true_y = np.concatenate([clients[i].y for i in target.contributors])
        scope = "the revealed aggregate"
    replay = "the round's public hyper-parameters"
    if target.config.optimizer != "sgd":
        # The attack replays plain SGD only; this attacker approximates the round's adaptive
        # step sizes by plain SGD at the nominal rate (a mis-specified but realistic guess).
        prior = dataclasses.replace(prior, local_config=dataclasses.replace(
            target.config, optimizer="sgd"))
        replay = f"plain SGD guessed for the round's {target.config.optimizer!r} step sizes"
    # the row count only where the protocol reveals it (FedAvg's weights are example counts);
    # otherwise the attacker estimates it from the update itself
    counts = ctx.algorithm in ("fedavg", "fedprox") and not any(
        k in ctx.defense.params for k in ("noise_multiplier", "target_epsilon"))
    n_rows = None if (counts and target.source == "client") else "rank"
    attack = TabularInversion(restarts=int(p["restarts"]), iterations=int(p["iterations"]),
                              n_rows=n_rows, round_index=0, target="auto")
    rec = attack.invert(target, prior=prior, spec=ctx.model, rng=ctx.rng)
    scored = score_reconstruction(rec.X, rec.y, true_X, true_y, prior=prior, rng=ctx.rng)
    details = {
        "scope": scope, "replay": replay, "rows_behind_update": int(len(true_X)),
        "rows_reconstructed": 0 if rec.fallback else int(len(rec.X)), "attack_note": rec.note,
        "exact_row_rate": scored.attack.exact_row_rate,
        "baseline_kind": scored.baseline_kind,
        "label_accuracy": scored.attack.label_accuracy,
        "feature_accuracy": scored.attack.feature_accuracy,
    }
    # for the figure: the first true rows beside the reconstructed rows a one-to-one pairing
    # (least total squared distance) gives them; a nearest-row pick would flatter the attack
    rec_X = np.asarray(rec.X, dtype=np.float64)
    tX = np.asarray(true_X, dtype=np.float64)
    cost = ((tX[:, None, :] - rec_X[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    partner = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    shown = [i for i in range(min(3, len(tX))) if i in partner]
    examples = {"truth": tX[shown].tolist(),
                "reconstruction": rec_X[[partner[i] for i in shown]].tolist(),
                "features": list(ctx.fold.data.feature_names)}
    return [AttackScore("gradient-inversion", "server", "feature_accuracy",
                        scored.attack.mean_feature_accuracy,
                        scored.baseline.mean_feature_accuracy, details, examples)]


# ------------------------------------------------------------------ model inversion
def _model_inversion(ctx: AttackContext) -> list[AttackScore]:
    p = {"feature": "glu", "targets": 40, "starts": 4, "iterations": 80, **ctx.params}
    obs = observe(ctx.run, adversary="outsider")
    prior = _prior(ctx)
    X, y = ctx.fold.data.pooled()
    idx = ctx.rng.choice(len(X), size=min(int(p["targets"]), len(X)), replace=False)
    f = prior.feature(str(p["feature"]))
    col = f.columns[0]
    targets = X[idx].astype(np.float64)
    truth = targets[:, col].copy()
    targets[:, col] = 0.0  # the attacker does not know it
    attack = AttributeInferenceWhiteBox(feature=f.name, starts=int(p["starts"]),
                                        iterations=int(p["iterations"]))
    guess = attack.run(obs, prior, rng=ctx.rng, targets_X=targets, targets_y=y[idx])
    s = score_attribute(guess, truth, prior=prior)
    details = {"feature": s.feature, "mae": s.mae, "baseline_mae": s.baseline_mae,
               "tolerance_std": s.tolerance, "targets": int(len(idx))}
    return [AttackScore("model-inversion", "outsider", "attribute_accuracy", s.accuracy,
                        s.baseline_accuracy, details)]


# ------------------------------------------------------------------ membership inference
def _membership(ctx: AttackContext) -> list[AttackScore]:
    obs = observe(ctx.run, adversary="outsider")
    prior = _prior(ctx)
    Xm, ym = ctx.fold.data.pooled()
    Xn, yn = ctx.fold.data.X_test, ctx.fold.data.y_test
    X = np.concatenate([Xm, Xn])
    y = np.concatenate([ym, yn])
    member = np.r_[np.ones(len(Xm), bool), np.zeros(len(Xn), bool)]
    scores = LossThreshold().run(obs, prior, rng=ctx.rng, candidates_X=X, candidates_y=y)
    eps, delta = _epsilon(ctx)
    s = score_membership(scores, member, epsilon=eps, delta=delta)
    details = {"advantage": s.advantage, "tpr_at_1_fpr": s.tpr_at_1_fpr,
               "tpr_at_5_fpr": s.tpr_at_5_fpr, "balanced_accuracy": s.balanced_accuracy,
               "dp_advantage_bound": s.dp_bound, "members": s.n_members,
               "non_members": s.n_nonmembers}
    return [AttackScore("membership", "outsider", "auc", s.auc, 0.5, details)]


def _federated_only(kind: str, defense: Any) -> bool:
    return kind == "federated"


register_audit_attack("gradient-inversion", AuditAttack(
    name="gradient-inversion",
    summary="TabLeak-style optimisation inversion of the first round's update into patient rows",
    threat_model=str(TabularInversion.threat_model),
    run=_gradient_inversion, needs_transcript=True, applies=_federated_only,
))
register_audit_attack("model-inversion", AuditAttack(
    name="model-inversion",
    summary="white-box attribute inference of plasma glucose from the released model",
    threat_model=str(AttributeInferenceWhiteBox.threat_model),
    run=_model_inversion,
))
register_audit_attack("membership", AuditAttack(
    name="membership",
    summary="loss-threshold membership inference on the released model",
    threat_model=str(LossThreshold.threat_model),
    run=_membership,
))
