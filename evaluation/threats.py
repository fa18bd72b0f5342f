"""Threat scenarios: the backbone of the audit.

Each scenario names an adversary, what it observes, what it knows beforehand, and a
*setting in which its attack succeeds when nothing protects the data*; the audit then runs
the same setting under each defense and algorithm and scores the attack beside a baseline
that did not use the observation.  A setting where no attack can work would only show that
the attack failed, not that a defense is needed; each setting below is chosen so that the
unprotected run leaks, and says so.

``curious-server``
    An honest-but-curious server inverts one hospital's update (TabLeak-style optimisation,
    :class:`attacks.TabularInversion`).  Setting: a small clinic (``clinic_size`` patients,
    4 by default, at most 8) joins the audit's hospitals; an MLP (``hidden`` units); one
    round of one local full-batch step.  Metric: mean per-feature accuracy of the clinic's
    reconstructed records; baseline: the prior guess (public medians / modes).
``malicious-server``
    The server sends an imprint model (Fowl et al. 2022, :mod:`attacks.imprint`) and
    announces one full-batch local step; it reads patients out of the round's aggregate.
    Setting: the audit's hospitals (>= 3).  Metric: fraction of the federation's patients
    recovered exactly (every feature within the tolerance); baseline: the prior guess.
``curious-peer``
    A participating hospital subtracts its own upload from the change of the global model
    (:class:`attacks.peer.PeerSubtraction`).  Setting: ``participants`` hospitals (2 by
    default), one round; the series ``series`` of participant counts shows how it degrades.
    Metric: cosine similarity of the recovered update with the target hospital's upload;
    baseline: the peer's own update as its guess.
``outsider-membership``
    Online LiRA (Carlini et al. 2022) from logits against the released model.  Setting: an
    MLP trained long enough to overfit, on a random half of the population pool (members);
    non-members are the other half of the same pool.  Metric: ROC AUC; baseline 0.5.  Beside
    it: TPR at 0.1% and 1% FPR with their sample sizes, and the exact bound DP puts on the
    advantage (:func:`evaluation.scoring.dp_advantage_bound_pld`).
``outsider-attribute``
    White-box attribute inference (Fredrikson et al. 2014) on the same released model,
    against members and a non-member control group of the same size.  Metric: accuracy on
    members; baseline: accuracy on non-members, i.e. what the model would impute for
    anyone; the gain is what it leaks about its training patients.

Every attack here is given only what its threat model grants: the row count behind an
update is read from the protocol's weights only when they are example counts (FedAvg),
otherwise estimated (:func:`attacks.gradient.rank_row_estimate`); attacks that find the
observation worthless fall back to the prior guess, which is also the baseline, so no attack
scores below its baseline by construction (the verdicts also floor the mean gain at 0 and
say so).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attacks import (
    AttributeInferenceWhiteBox,
    ImprintAttack,
    PeerSubtraction,
    ShadowLiRA,
    TabularInversion,
    imprint_model,
)
from defenses import Defense, RunContext, get_defense
from evaluation.algorithms import get_algorithm
from evaluation.scoring import (
    dp_advantage_bound_pld,
    score_attribute,
    score_membership,
    score_reconstruction,
    tpr_at_fpr,
)
from securefed.arrays import ClientArrays, FederatedArrays
from securefed.errors import ConfigurationError, PrivacyBudgetExceeded
from securefed.federated import RunResult, StrategyWrapper, run_federated
from securefed.models import ModelSpec
from securefed.observation import PriorKnowledge, observe
from securefed.registry import Registry

__all__ = [
    "ThreatScenario",
    "ThreatContext",
    "ThreatOutcome",
    "THREATS",
    "register_threat",
    "get_threat",
    "threat_names",
    "Recorder",
    "epsilon_of",
]


@dataclass(frozen=True)
class ThreatOutcome:
    """One scored attack in one replicate of a scenario."""

    metric: str
    value: float
    baseline: float
    details: Mapping[str, Any] = field(default_factory=dict)
    accuracy: float | None = None  # the scenario model's held-out accuracy, where meaningful
    epsilon: float | None = None

    @property
    def gain(self) -> float:
        return self.value - self.baseline


@dataclass(frozen=True)
class ThreatContext:
    """Everything a scenario may use for one (algorithm, defense, replicate) cell."""

    data: FederatedArrays
    public_X: np.ndarray
    public_y: np.ndarray
    schema: Any
    algorithm: str
    defense: str
    defense_params: Mapping[str, Any]
    replicate: int
    seed: int
    params: Mapping[str, Any]
    cache: dict[Any, Any] = field(default_factory=dict)

    def rng(self, *tag: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.replicate, *tag])

    def prior(self, *, spec: ModelSpec | None = None, keep_reference: bool = False) -> PriorKnowledge:
        if self.schema is not None:
            return PriorKnowledge.from_schema(self.schema, self.public_X, self.public_y,
                                              model=spec, keep_reference=keep_reference)
        return PriorKnowledge.from_public_data(self.public_X, self.public_y,
                                               feature_names=self.data.feature_names, model=spec,
                                               keep_reference=keep_reference)


@dataclass(frozen=True)
class ThreatScenario:
    """A threat as the audit runs it (see the module docstring).

    ``defaults`` are the scenario's own parameters (a configuration's
    ``[threat_params.NAME]`` may change them; unknown keys are refused); ``defenses`` the
    defenses it is run under by default; ``defense_params`` the settings it gives those
    defenses (for instance the epsilon of a DP defense), over the audit's own.
    """

    name: str
    adversary: str
    observes: str
    knows: str
    setting: str
    metric: str
    defenses: tuple[str, ...]
    run: Callable[[ThreatContext], ThreatOutcome]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    defense_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    replicates: int = 3
    shared_run: str | None = None  # scenarios with the same key share one trained model

    _META = ("defenses", "defense_params", "replicates")

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The scenario's parameters (defaults updated by ``params``); unknown keys refused."""
        unknown = sorted(set(params) - set(self.defaults) - set(self._META))
        if unknown:
            raise ConfigurationError(
                f"threat {self.name!r}: unknown parameter {unknown[0]!r}; valid: "
                f"{sorted([*self.defaults, *self._META])}")
        return {**self.defaults, **{k: v for k, v in params.items() if k not in self._META}}

    def defenses_for(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        d = params.get("defenses", self.defenses)
        if isinstance(d, str) or not isinstance(d, (list, tuple)) or not d:
            raise ConfigurationError(
                f"threat {self.name!r}: defenses must be a non-empty list, got {d!r}")
        return tuple(d)

    def defense_settings(self, defense: str, audit_params: Mapping[str, Mapping[str, Any]],
                         params: Mapping[str, Any]) -> dict[str, Any]:
        own = dict(params.get("defense_params", {}) or {})
        return {**dict(audit_params.get(defense, {})), **dict(self.defense_params.get(defense, {})),
                **dict(own.get(defense, {}))}

    def describe(self) -> dict[str, Any]:
        return {"adversary": self.adversary, "observes": self.observes, "knows": self.knows,
                "setting": self.setting, "metric": self.metric,
                "defenses": list(self.defenses), "defaults": dict(self.defaults),
                "defense_params": {k: dict(v) for k, v in self.defense_params.items()}}


THREATS: Registry[ThreatScenario] = Registry("threat")


def register_threat(name: str, scenario: ThreatScenario, *, replace: bool = False) -> ThreatScenario:
    if scenario.name != name:
        raise ConfigurationError(f"threat {scenario.name!r} registered as {name!r}")
    return THREATS.register(name, scenario, replace=replace)


def get_threat(name: str) -> ThreatScenario:
    return THREATS.get(name)


def threat_names() -> tuple[str, ...]:
    return THREATS.names()


# ----------------------------------------------------------------------------- helpers
class Recorder(StrategyWrapper):
    """Records what the parties of a simulated run know besides the transcript: each
    hospital's own upload (it knows what it sent) and the weight sum the channel revealed
    to the server (secure aggregation sums the weights beside the updates)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.uploads: dict[tuple[int, int], tuple[np.ndarray, float]] = {}
        self.weight_sums: dict[int, float] = {}
        self._client_of: dict[int, int] = {}
        self._round = 0

    def before_round(self, round_index: int) -> None:
        self._round = round_index
        self.inner.before_round(round_index)

    def local_train(self, model, client, global_params, config, *, rng, client_state):  # type: ignore[override]
        self._client_of[id(client_state)] = client.client_id
        return self.inner.local_train(model, client, global_params, config, rng=rng,
                                      client_state=client_state)

    def client_process(self, update, weight, *, client_state, rng):  # type: ignore[override]
        vector, payload = self.inner.client_process(update, weight, client_state=client_state,
                                                    rng=rng)
        cid = self._client_of.get(id(client_state), -1)
        self.uploads[(self._round, cid)] = (np.array(vector, np.float64), float(weight))
        return vector, payload

    def server_aggregate(self, result, *, rng):  # type: ignore[override]
        self.weight_sums[self._round] = float(result.weight_sum)
        return self.inner.server_aggregate(result, rng=rng)


def _dp_wrapped(strategy: Any) -> Any:
    """The DP wrapper inside ``strategy`` (``None`` without one)."""
    s = strategy
    while s is not None:
        if hasattr(type(s), "mechanism") and hasattr(s, "noise_multiplier") and hasattr(s, "clip_norm"):
            return s
        s = getattr(s, "__dict__", {}).get("inner")
    return None


def counts_are_weights(algorithm: str, defense: Defense) -> bool:
    """Whether the protocol's client weights are example counts (FedAvg / FedProx without a
    DP wrapper, which makes every weight 1)."""
    return algorithm in ("fedavg", "fedprox") and not any(
        k in defense.params for k in ("noise_multiplier", "target_epsilon"))


@dataclass(frozen=True)
class TrainedRun:
    run: RunResult
    recorder: Recorder
    defense: Defense
    dp: Any
    note: str | None


def train(ctx: ThreatContext, data: FederatedArrays, *, model: ModelSpec, rounds: int,
          recipe: Mapping[str, Mapping[str, Any]], initial_params: np.ndarray | None = None,
          record_transcript: bool = True, seed: int | None = None) -> TrainedRun:
    """Train ``ctx.algorithm`` under ``ctx.defense`` with the scenario's ``recipe``.

    ``recipe["local"]`` holds the local hyper-parameters of FedAvg-like algorithms;
    ``recipe["announced"]`` what the server announces to every algorithm (it overrides even
    FedMedHeter's, whose other settings stay at the library defaults).
    """
    algo = get_algorithm(ctx.algorithm)
    if algo.kind != "federated" or algo.strategy_factory is None:
        raise ConfigurationError(f"threat scenarios train federated algorithms, got {ctx.algorithm!r}")
    announced = dict(recipe.get("announced", {}))
    if ctx.algorithm == "fedmedheter":
        kwargs = announced  # library defaults otherwise
    else:
        kwargs = {**dict(algo.default_params), **dict(recipe.get("local", {})), **announced}
    strategy = algo.strategy_factory(**kwargs)
    defense = get_defense(ctx.defense, **dict(ctx.defense_params))
    wrapped, channel = defense.build(strategy, RunContext(num_clients=len(data.clients), rounds=rounds))
    rec = Recorder(wrapped)
    dp = _dp_wrapped(wrapped)
    # a model the server crafted has spent no privacy: its ledger is the DP wrapper's own,
    # empty one (the engine refuses initial parameters under DP without a ledger)
    ledger = dp.ledger.to_dict() if (initial_params is not None and dp is not None) else None
    note = None
    try:
        run = run_federated(data, strategy=rec, model=model, rounds=rounds,
                            seed=ctx.seed * 1000 + ctx.replicate if seed is None else seed,
                            channel=channel, record_transcript=record_transcript,
                            initial_params=initial_params, privacy_ledger=ledger)
    except PrivacyBudgetExceeded as exc:
        if not isinstance(exc.partial, RunResult) or not exc.partial.history:
            raise
        run = exc.partial
        note = f"stopped after {len(run.history)} rounds: {exc}"
    return TrainedRun(run, rec, defense, dp, note)


def privacy_statement(t: TrainedRun) -> dict[str, Any]:
    """The DP wrapper's own description of what it guarantees (hospital and patient level),
    as the report shows it beside each epsilon."""
    if t.dp is None or not hasattr(t.dp, "report"):
        return {}
    rep = t.dp.report()
    return {"epsilon_label": rep.client.label(), "record_epsilon": rep.record.epsilon,
            "record_epsilon_label": rep.record.label()}


def epsilon_of(run: RunResult) -> float | None:
    eps = [r.extra.get("epsilon") for r in run.history if "epsilon" in r.extra]
    return None if not eps else float(eps[-1])


def _accuracy(run: RunResult) -> float:
    return float(run.final.test_accuracy)


def _split(X: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator, *, X_test: np.ndarray,
           y_test: np.ndarray, names: tuple[str, ...], prefix: str = "hospital") -> FederatedArrays:
    """``X, y`` shuffled and dealt into ``k`` hospitals of (nearly) equal size."""
    idx = rng.permutation(len(X))
    parts = np.array_split(idx, k)
    clients = tuple(ClientArrays(i, f"{prefix}-{i}", X[p].astype(np.float32), y[p].astype(np.float32))
                    for i, p in enumerate(parts))
    return FederatedArrays(clients, X_test, y_test, names)


# ----------------------------------------------------------------------------- curious server
def _curious_server(ctx: ThreatContext) -> ThreatOutcome:
    p = ctx.params
    n_clinic = int(p["clinic_size"])
    rng = ctx.rng(1)
    Xp, yp = ctx.data.pooled()
    owner = np.concatenate([np.full(c.num_examples, i) for i, c in enumerate(ctx.data.clients)])
    pick = rng.choice(len(Xp), size=n_clinic, replace=False)
    keep = np.setdiff1d(np.arange(len(Xp)), pick)
    clients = []
    for i, c in enumerate(ctx.data.clients):
        rows = keep[owner[keep] == i]
        clients.append(ClientArrays(i, c.name, Xp[rows], yp[rows]))
    clinic_id = len(clients)
    clients.append(ClientArrays(clinic_id, "small-clinic", Xp[pick], yp[pick]))
    data = FederatedArrays(tuple(clients), ctx.data.X_test, ctx.data.y_test, ctx.data.feature_names)
    spec = ModelSpec("mlp", n_features=data.num_features, hidden=(int(p["hidden"]),))
    recipe = {"local": {"learning_rate": float(p["learning_rate"]), "batch_size": None,
                        "local_epochs": 1}}
    t = train(ctx, data, model=spec, rounds=1, recipe=recipe)
    obs = observe(t.run, adversary="server")
    prior = ctx.prior(spec=spec)
    first = obs.select(round_index=0)
    own = [u for u in first if u.source == "client" and u.sender == clinic_id]
    counts = counts_are_weights(ctx.algorithm, t.defense)
    if own:
        target, scope = own[0], "the clinic's own update (the channel shows it)"
        n_rows: Any = None if counts else "rank"
    else:
        aggs = [u for u in first if u.source == "aggregate"]
        target, scope = aggs[0], "the round's aggregate (the channel hides individual updates)"
        n_rows = int(round(t.recorder.weight_sums[0])) if counts else "rank"
    replay = "the round's announced hyper-parameters (plain SGD)"
    if target.config.optimizer != "sgd":
        # FedMedHeter's loss-scaled step equals plain SGD at the nominal rate in the first
        # round a client takes part in; other adaptive rules are guessed as plain SGD
        prior = dataclasses.replace(prior, local_config=dataclasses.replace(target.config,
                                                                            optimizer="sgd"))
        replay = (f"plain SGD for the round's {target.config.optimizer!r} steps (exact for the "
                  "loss-scaled rule in a client's first round, a guess otherwise)")
    attack = TabularInversion(n_rows=n_rows, restarts=int(p["restarts"]),
                              iterations=int(p["iterations"]), target="auto")
    rec = attack.invert(target, prior=prior, spec=spec, rng=ctx.rng(2))
    scored = score_reconstruction(rec.X, rec.y, Xp[pick], yp[pick], prior=prior, rng=ctx.rng(3))
    details = {
        "scope": scope, "replay": replay, "clinic_patients": n_clinic,
        "rows_reconstructed": 0 if rec.fallback else int(len(rec.X)), "attack_note": rec.note, "fell_back": rec.fallback,
        "matching_loss": rec.loss, "exact_row_rate": scored.attack.exact_row_rate,
        "baseline_exact_row_rate": scored.baseline.exact_row_rate,
        "label_accuracy": scored.attack.label_accuracy,
        "per_feature": dict(scored.attack.feature_accuracy),
        **privacy_statement(t),
        "examples": {"truth": np.asarray(Xp[pick][:3], float).tolist(),
                     "reconstruction": _paired(rec.X, Xp[pick][:3]),
                     "features": list(ctx.data.feature_names)},
    }
    return ThreatOutcome("feature_accuracy", scored.attack.mean_feature_accuracy,
                         scored.baseline.mean_feature_accuracy, details,
                         epsilon=epsilon_of(t.run))


def _paired(rec_X: np.ndarray, truth: np.ndarray) -> list[list[float]]:
    """For each true row, its partner in a one-to-one least-squares pairing (for figures)."""
    from scipy.optimize import linear_sum_assignment

    R = np.asarray(rec_X, np.float64)
    T = np.asarray(truth, np.float64)
    if len(R) == 0:
        return []
    cost = ((T[:, None, :] - R[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    out = [[float("nan")] * T.shape[1] for _ in range(len(T))]
    for i, j in zip(r, c, strict=True):
        out[int(i)] = R[int(j)].tolist()
    return out


# ----------------------------------------------------------------------------- malicious server
def _malicious_server(ctx: ThreatContext) -> ThreatOutcome:
    p = ctx.params
    data = ctx.data
    if len(data.clients) < 3:
        raise ConfigurationError(
            f"the malicious-server scenario needs >= 3 hospitals (secure aggregation's minimum), "
            f"got {len(data.clients)}")
    Xp, yp = data.pooled()
    bins = int(p["bins"]) if p["bins"] != "auto" else int(4 * len(Xp))
    prior = ctx.prior(keep_reference=True)
    model = imprint_model(prior, bins=bins, rng=ctx.rng(1))
    recipe = {"announced": {"learning_rate": float(p["learning_rate"]), "batch_size": None,
                            "local_epochs": 1}}
    t = train(ctx, data, model=model.spec, rounds=1, recipe=recipe, initial_params=model.params)
    obs = observe(t.run, adversary="server")
    attack = ImprintAttack(model=model)
    first = obs.select(round_index=0)
    per_client = [u for u in first if u.source == "client"]
    targets = per_client or [u for u in first if u.source == "aggregate"]
    rows, labels, notes = [], [], []
    for u in targets:
        r = attack.read(u.update, prior=prior, source=u.source, sender=u.sender)
        rows.append(r.X)
        labels.append(r.y)
        notes.append(r.note)
    X_rec = np.concatenate(rows) if rows else np.zeros((0, prior.n_columns))
    y_rec = np.concatenate(labels) if labels else np.zeros(0)
    scored = score_reconstruction(X_rec, y_rec, Xp, yp, prior=prior, rng=ctx.rng(3))
    details = {
        "scope": ("each hospital's update (the channel shows them)" if per_client
                  else "the round's aggregate"),
        "bins": bins, "patients": int(len(Xp)), "rows_read": int(len(X_rec)),
        "attack_note": "; ".join(str(n) for n in notes),
        "feature_accuracy": scored.attack.mean_feature_accuracy,
        "baseline_feature_accuracy": scored.baseline.mean_feature_accuracy,
        "label_accuracy": scored.attack.label_accuracy,
        "announced": recipe["announced"], **privacy_statement(t),
    }
    return ThreatOutcome("patients_recovered", scored.attack.exact_row_rate,
                         scored.baseline.exact_row_rate, details, epsilon=epsilon_of(t.run))


# ----------------------------------------------------------------------------- curious peer
def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def _peer_once(ctx: ThreatContext, k: int, tag: int) -> dict[str, Any]:
    p = ctx.params
    Xp, yp = ctx.data.pooled()
    data = _split(Xp, yp, k, ctx.rng(10 + tag), X_test=ctx.data.X_test, y_test=ctx.data.y_test,
                  names=ctx.data.feature_names)
    spec = ModelSpec("mlp", n_features=data.num_features, hidden=(int(p["hidden"]),))
    recipe = {"local": {"learning_rate": float(p["learning_rate"]), "batch_size": 16,
                        "local_epochs": 1}}
    with warnings.catch_warnings():
        # secure aggregation warns that min_clients = 2 lets each of two hospitals learn the
        # other's input: that is the very point this scenario measures
        warnings.filterwarnings("ignore", message="secagg: min_clients", category=UserWarning)
        t = train(ctx, data, model=spec, rounds=1, recipe=recipe, record_transcript=True,
                  seed=ctx.seed * 1000 + ctx.replicate + 17 * tag)
    obs = observe(t.run, adversary="client", client_id=0)
    own_vec, own_w = t.recorder.uploads[(0, 0)]
    tgt_vec, tgt_w = t.recorder.uploads[(0, 1)]
    target = tgt_vec / tgt_w if tgt_w > 0 else tgt_vec
    own = own_vec / own_w if own_w > 0 else own_vec
    counts = np.array([c.num_examples for c in data.clients], float)
    if t.dp is not None:
        total, knows = float(k), "every weight is 1 (client-level DP)"
    elif counts_are_weights(ctx.algorithm, t.defense):
        total, knows = float(counts.sum()), "the hospitals' patient counts (FedAvg's weights)"
    else:
        ref = float(getattr(t.recorder, "reference_examples", 100.0))
        total = own_w + float(counts[1:].sum()) / ref
        knows = "a guess: the others' weights as counts / reference_examples"
    server_lr = float(getattr(t.recorder, "server_learning_rate", 1.0))
    res = PeerSubtraction(server_learning_rate=server_lr).run(
        obs, own_vector=own_vec, own_weight=own_w, total_weight=total)
    est = res.update
    return {"value": _cosine(est, target), "baseline": _cosine(own, target),
            "fell_back": res.fallback, "statement": privacy_statement(t),
            "relative_error": float(np.linalg.norm(est - target) / max(np.linalg.norm(target), 1e-30)),
            "knows": knows, "epsilon": epsilon_of(t.run)}


def _curious_peer(ctx: ThreatContext) -> ThreatOutcome:
    p = ctx.params
    head = _peer_once(ctx, int(p["participants"]), 0)
    series = {}
    for j, k in enumerate(p["series"]):
        k = int(k)
        if k == int(p["participants"]):
            r = head
        elif k > len(ctx.data.pooled()[0]) // 2:
            continue
        else:
            r = _peer_once(ctx, k, j + 1)
        series[str(k)] = {"value": r["value"], "baseline": r["baseline"],
                          "gain": r["value"] - r["baseline"], "relative_error": r["relative_error"]}
    details = {"participants": int(p["participants"]), "relative_error": head["relative_error"],
               "fell_back": head["fell_back"], **head["statement"],
               "peer_knows": head["knows"], "series": series}
    return ThreatOutcome("update_cosine", head["value"], head["baseline"], details,
                         epsilon=head["epsilon"])


# ----------------------------------------------------------------------------- outsiders
def _outsider_run(ctx: ThreatContext) -> dict[str, Any]:
    """The released model both outsider scenarios attack (trained once per cell)."""
    p = ctx.params
    key = ("outsider", ctx.algorithm, ctx.defense, tuple(sorted(ctx.defense_params.items())),
           ctx.replicate, ctx.seed, int(p["hidden"]), int(p["rounds"]), int(p["local_epochs"]),
           float(p["learning_rate"]))
    if key in ctx.cache:
        return ctx.cache[key]
    rng = ctx.rng(20)
    Xp, yp = ctx.data.pooled()
    pool_X = np.concatenate([Xp, ctx.data.X_test]).astype(np.float64)
    pool_y = np.concatenate([yp, ctx.data.y_test]).astype(np.float64)
    member = np.zeros(len(pool_X), bool)
    member[rng.permutation(len(pool_X))[: len(pool_X) // 2]] = True
    k = len(ctx.data.clients)
    data = _split(pool_X[member], pool_y[member], k, rng, X_test=pool_X[~member],
                  y_test=pool_y[~member], names=ctx.data.feature_names)
    spec = ModelSpec("mlp", n_features=data.num_features, hidden=(int(p["hidden"]),))
    recipe = {"local": {"learning_rate": float(p["learning_rate"]), "batch_size": None,
                        "local_epochs": int(p["local_epochs"])}}
    t0 = time.perf_counter()
    t = train(ctx, data, model=spec, rounds=int(p["rounds"]), recipe=recipe, record_transcript=False)
    out = {"pool_X": pool_X, "pool_y": pool_y, "member": member, "spec": spec, "trained": t,
           "train_time": time.perf_counter() - t0}
    ctx.cache[key] = out
    return out


def _dp_bound(t: TrainedRun) -> dict[str, Any]:
    """The exact advantage bound of the run's DP (PLD), for a patient in or out of a hospital."""
    if t.dp is None:
        return {}
    z = float(t.dp.noise_multiplier)
    rounds = len(t.run.history)
    return {
        "noise_multiplier": z, "rounds": rounds,
        # one patient in or out of a participating hospital moves its clipped update by up to
        # 2C: a Gaussian of multiplier z/2 per round (replace-one at the hospital level)
        "dp_advantage_bound": dp_advantage_bound_pld(noise_multiplier=z / 2.0, rounds=rounds),
        # a whole hospital added or removed: sensitivity C, multiplier z per round
        "dp_advantage_bound_hospital": dp_advantage_bound_pld(noise_multiplier=z, rounds=rounds),
    }


def _outsider_membership(ctx: ThreatContext) -> ThreatOutcome:
    p = ctx.params
    o = _outsider_run(ctx)
    t: TrainedRun = o["trained"]
    obs = observe(t.run, adversary="outsider")
    spec = o["spec"]
    prior = dataclasses.replace(ctx.prior(spec=spec), reference_X=None, reference_y=None)
    lira = ShadowLiRA(n_shadow=int(p["shadows"]), steps=int(p["rounds"]) * int(p["local_epochs"]),
                      learning_rate=float(p["learning_rate"]), optimizer="sgd", online=True)
    scores = lira.run(obs, prior, rng=ctx.rng(21), candidates_X=o["pool_X"],
                      candidates_y=o["pool_y"])
    eps = epsilon_of(t.run)
    s = score_membership(scores, o["member"])
    logits = obs.predict_logits(o["pool_X"])
    zy = np.where(o["pool_y"] > 0.5, 1.0, -1.0) * logits
    saturated = float(np.mean(np.abs(zy) > 16.6))  # float32 sigmoid rounds to 0 or 1 there
    details = {
        "tpr_at_0.1%_fpr": tpr_at_fpr(scores.scores, o["member"], 0.001),
        "tpr_at_1%_fpr": tpr_at_fpr(scores.scores, o["member"], 0.01),
        "members": s.n_members, "non_members": s.n_nonmembers,
        "advantage": s.advantage, "balanced_accuracy": s.balanced_accuracy,
        "scores": np.round(scores.scores, 6).tolist(), "is_member": o["member"].astype(int).tolist(),
        "saturated_fraction": saturated, "train_accuracy_gap": _gap(obs, o),
        "shadows": int(p["shadows"]), "run_note": t.note, **_dp_bound(t), **privacy_statement(t),
        # for the seed-claims table: communication on a model where compression matters
        "bytes_up": t.run.total_bytes_up(),
        "bytes_down": int(sum(r.bytes_down for r in t.run.history)),
        "rounds_run": len(t.run.history), "model_parameters": int(spec.num_params()),
        "model": f"mlp 7-{int(p['hidden'])}-1" if spec.n_features == 7 else
                 f"mlp {spec.n_features}-{int(p['hidden'])}-1",
    }
    return ThreatOutcome("auc", s.auc, 0.5, details, accuracy=_accuracy(t.run), epsilon=eps)


def _gap(obs: Any, o: Mapping[str, Any]) -> float:
    """Training accuracy minus non-member accuracy of the released model (overfitting)."""
    pred = obs.predict_logits(o["pool_X"]) > 0
    right = pred == (o["pool_y"] > 0.5)
    return float(right[o["member"]].mean() - right[~o["member"]].mean())


def default_sensitive_feature(prior: PriorKnowledge) -> str:
    """The continuous feature most correlated with the label in the public records: the one
    the model relies on most, hence the most inferable (documented default)."""
    X = prior.reference_X
    y = prior.reference_y
    cont = [f for f in prior.features if f.kind == "continuous"]
    if not cont:
        return prior.features[0].name
    if X is None or y is None or np.std(y) == 0:
        return cont[0].name
    corr = [abs(np.corrcoef(X[:, f.columns[0]], y)[0, 1]) if np.std(X[:, f.columns[0]]) > 0 else 0.0
            for f in cont]
    return cont[int(np.nanargmax(corr))].name


def _outsider_attribute(ctx: ThreatContext) -> ThreatOutcome:
    p = ctx.params
    o = _outsider_run(ctx)
    t: TrainedRun = o["trained"]
    obs = observe(t.run, adversary="outsider")
    prior = ctx.prior(spec=o["spec"], keep_reference=True)
    feature = p["feature"] if p["feature"] != "auto" else default_sensitive_feature(prior)
    f = prior.feature(str(feature))
    if f.kind != "continuous":
        raise ConfigurationError(
            f"outsider-attribute scores a continuous attribute; {f.name!r} is {f.kind}")
    rng = ctx.rng(22)
    mem = np.flatnonzero(o["member"])
    non = np.flatnonzero(~o["member"])
    cap = min(len(mem), len(non))
    n = cap if p["targets"] == "all" else min(int(p["targets"]), cap)
    groups = {"members": rng.choice(mem, n, replace=False), "non_members": rng.choice(non, n, replace=False)}
    attack = AttributeInferenceWhiteBox(feature=f.name, starts=int(p["starts"]),
                                        iterations=int(p["iterations"]))
    res = {}
    col = f.columns[0]
    for g, idx in groups.items():
        X = o["pool_X"][idx].copy()
        truth = X[:, col].copy()
        X[:, col] = 0.0
        guess = attack.run(obs, prior, rng=rng, targets_X=X, targets_y=o["pool_y"][idx])
        res[g] = score_attribute(guess, truth, prior=prior)
    details = {"feature": f.name, "targets_per_group": n,
               "prior_accuracy_members": res["members"].baseline_accuracy,
               "prior_accuracy_non_members": res["non_members"].baseline_accuracy,
               "mae_members": res["members"].mae, "mae_non_members": res["non_members"].mae,
               "tolerance_std": res["members"].tolerance, **_dp_bound(t), **privacy_statement(t)}
    return ThreatOutcome("attribute_accuracy", res["members"].accuracy,
                         res["non_members"].accuracy, details, accuracy=_accuracy(t.run),
                         epsilon=epsilon_of(t.run))


_OUTSIDER = {"hidden": 64, "rounds": 10, "local_epochs": 30, "learning_rate": 0.5}
#: DP settings of the outsider scenarios: epsilon <= 8 (hospital level, delta 1e-5)
_OUTSIDER_DP = {"dp-central": {"noise_multiplier": None, "target_epsilon": 8.0},
                "dp-local": {"noise_multiplier": None, "target_epsilon": 8.0},
                "secagg+dp": {"noise_multiplier": None, "target_epsilon": 8.0}}

register_threat("curious-server", ThreatScenario(
    name="curious-server", adversary="honest-but-curious server",
    observes="what the channel shows of one round: each hospital's update in the clear, or "
             "only the aggregate under secure aggregation / CKKS",
    knows="the model, the announced local training, the schema and public marginals; the "
          "row count only where the protocol's weights are counts",
    setting="a small clinic joins the hospitals; MLP; one round of one local full-batch step",
    metric="feature_accuracy", defenses=("none", "secagg", "dp-local"),
    run=_curious_server,
    defaults={"clinic_size": 4, "hidden": 128, "learning_rate": 0.1, "restarts": 30,
              "iterations": 1500},
))
register_threat("malicious-server", ThreatScenario(
    name="malicious-server", adversary="malicious server (chooses the model and the announced training)",
    observes="the round's aggregate (or each update where the channel shows them)",
    knows="public records of the population (to place the imprint bins)",
    setting="the audit's hospitals (>= 3); the server sends an imprint model and announces one "
            "full-batch local step",
    metric="patients_recovered", defenses=("none", "secagg", "dp-local", "secagg+dp"),
    run=_malicious_server, defaults={"bins": "auto", "learning_rate": 0.1},
))
register_threat("curious-peer", ThreatScenario(
    name="curious-peer", adversary="a participating hospital (honest-but-curious)",
    observes="the global model before and after the round, and its own upload",
    knows="the participants' weights (patient counts under FedAvg, 1 under DP)",
    setting="participants hospitals share one round (the audit's patients dealt among them); "
            "secure aggregation runs with its explicit min_clients=2 option",
    metric="update_cosine", defenses=("none", "secagg", "secagg+dp"),
    run=_curious_peer, replicates=8,
    defaults={"participants": 2, "series": [2, 3, 5, 8], "hidden": 16, "learning_rate": 0.1},
    # secure aggregation refuses rounds of fewer than 3 contributors unless told otherwise:
    # this scenario uses its explicitly named option to run the two-hospital round
    defense_params={"secagg": {"min_clients": 2}, "secagg+dp": {"min_clients": 2}},
))
register_threat("outsider-membership", ThreatScenario(
    name="outsider-membership", adversary="anyone with query access to the released model",
    observes="the released model's logits on candidate records",
    knows="the candidates (a population pool, half of it trained on), the architecture and "
          "the training recipe",
    setting="MLP trained long enough to overfit on a random half of the pool, dealt among the "
            "hospitals; non-members are the other half",
    metric="auc", defenses=("none", "secagg", "dp-central"),
    run=_outsider_membership, shared_run="outsider",
    defaults={**_OUTSIDER, "shadows": 16}, defense_params=_OUTSIDER_DP,
))
register_threat("outsider-attribute", ThreatScenario(
    name="outsider-attribute", adversary="anyone holding the released model's parameters",
    observes="the released model (white-box)",
    knows="every feature of a target patient but the sensitive one, and the diagnosis",
    setting="the released model of outsider-membership; targets: members and an equal "
            "non-member control group",
    metric="attribute_accuracy", defenses=("none", "dp-central"),
    run=_outsider_attribute, shared_run="outsider",
    defaults={**_OUTSIDER, "feature": "auto", "targets": "all", "starts": 8, "iterations": 150},
    defense_params=_OUTSIDER_DP,
))
