"""FedMedHeter against FedAvg, FedProx and centralised training: the measured comparison.

What it does, in order (every number comes from this one run):

1. **Selection** (skipped with ``--no-tune`` and ``--quick``): every hyper-parameter of
   every method (FedAvg's learning rate, FedProx's mu, each FedMedHeter component's setting,
   including which adaptive local learning-rate rule) is chosen on *validation* data: 25% of
   each hospital's own rows held out, on tuning seeds (100, 101, ...) that are disjoint from
   the reported seeds.  The test set is never looked at.  The criterion is declared here,
   before any result: the mean validation log-loss over all rounds (area under the loss
   curve; it rewards both speed and final quality), averaged over the tuning seeds.  For
   compression the rule is: the fewest bytes whose criterion is within 2% of uncompressed.
2. **Pima**: the three-hospital Pima federation (``pima_federation``, default heterogeneity)
   with Pima.te as test; FedMedHeter, FedAvg, FedProx and centralised training, 10 seeds.
3. **Synthetic**: ``synthetic_federation`` with 20 hospitals and stronger heterogeneity
   (hyper-parameters transferred from step 1, not re-tuned).
4. **Ablation**: FedMedHeter with each component removed in turn, on both datasets.
5. **Claims**: the seed document's figures beside the measured ones.

Reported per method: final test accuracy and AUC (mean +- std over seeds), rounds to reach
95% of the same seed's centralised final accuracy, and bytes uploaded until then (from the
engine's ``RoundRecord.bytes_up``, i.e. the real serialised messages), plus a paired t-test
of final accuracy against FedAvg.

    python benchmarks/fedmedheter_experiments.py --out results/fedmedheter
    python benchmarks/fedmedheter_experiments.py --out /tmp/smoke --quick   # seconds

Writes ``results.json``, ``results.md`` and ``curves.png`` under ``--out``; prints the tables.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from securefed.compression import StochasticQuantizer, TopKSparsifier
from securefed.data import Heterogeneity, pima_federation, synthetic_federation
from securefed.errors import ConfigurationError
from securefed.federated import ClientArrays, FedAvg, FederatedArrays, FedProx, run_federated
from securefed.federated.centralized import run_centralized
from securefed.federated.fedmedheter import FedMedHeter
from securefed.federated.types import RunResult
from securefed.models import ModelSpec

TARGET_FRACTION = 0.95
TUNING_SEED_BASE = 100

SEED_CLAIMS = {
    "faster_than_fedprox": 0.15,
    "less_communication_than_fedavg": 0.40,
    "fedmedheter_accuracy": 0.85,
    "centralized_accuracy": 0.67,
}


# ----------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Hyper-parameters of every method (what selection fills in)."""

    learning_rate: float = 0.1
    local_epochs: int = 1
    batch_size: int = 16
    fedprox_mu: float = 0.01
    fmh: dict[str, Any] = field(default_factory=dict)
    # the best server-optimiser setting, for a "+ server_optimizer" row when selection left it off
    server_candidate: dict[str, Any] | None = None

    def fedavg(self) -> FedAvg:
        return FedAvg(learning_rate=self.learning_rate, local_epochs=self.local_epochs,
                      batch_size=self.batch_size)

    def fedprox(self) -> FedProx:
        return FedProx(proximal_mu=self.fedprox_mu, learning_rate=self.learning_rate,
                       local_epochs=self.local_epochs, batch_size=self.batch_size)

    def fedmedheter(self, **overrides: Any) -> FedMedHeter:
        kw = {"local_epochs": self.local_epochs, "batch_size": self.batch_size,
              "learning_rate": self.learning_rate, **self.fmh, **overrides}
        return FedMedHeter(**kw)

    def to_json(self) -> dict[str, Any]:
        fmh = dict(self.fmh)
        if fmh.get("compression") is not None:
            fmh["compression"] = repr(fmh["compression"])
        return {"learning_rate": self.learning_rate, "local_epochs": self.local_epochs,
                "batch_size": self.batch_size, "fedprox_mu": self.fedprox_mu, "fedmedheter": fmh,
                "server_candidate": self.server_candidate}


#: What the documented selection run (docs/results/fedmedheter) chose for the baselines and
#: for the optional server optimiser; used with ``--no-tune`` / ``--quick``.
SELECTED_BASELINES: dict[str, Any] = {
    "learning_rate": 0.3,
    "fedprox_mu": 0.01,
    "server_candidate": {"server_optimizer": "momentum", "server_momentum": 0.5,
                         "server_learning_rate": 1.0},
}


def library_defaults() -> Settings:
    """FedMedHeter's constructor defaults plus :data:`SELECTED_BASELINES` (no selection run)."""
    sig = inspect.signature(FedMedHeter.__init__)
    fmh = {k: p.default for k, p in sig.parameters.items()
           if k not in ("self", "local_epochs", "batch_size") and p.default is not inspect.Parameter.empty}
    return Settings(learning_rate=SELECTED_BASELINES["learning_rate"],
                    fedprox_mu=SELECTED_BASELINES["fedprox_mu"], fmh=fmh,
                    server_candidate=dict(SELECTED_BASELINES["server_candidate"]))


# ----------------------------------------------------------------------------- data
def validation_split(data: FederatedArrays, *, fraction: float, seed: int) -> FederatedArrays:
    """Hold out ``fraction`` of every hospital's rows; the pooled held-out rows are the test set.

    Only used for hyper-parameter selection, so that the real test set is never consulted.
    """
    rng = np.random.default_rng(seed)
    clients, Xv, yv = [], [], []
    for c in data.clients:
        order = rng.permutation(c.num_examples)
        n_val = max(1, int(round(fraction * c.num_examples)))
        val, tr = order[:n_val], order[n_val:]
        clients.append(ClientArrays(client_id=c.client_id, name=c.name, X=c.X[tr], y=c.y[tr]))
        Xv.append(c.X[val])
        yv.append(c.y[val])
    return FederatedArrays(clients=tuple(clients), X_test=np.concatenate(Xv),
                           y_test=np.concatenate(yv), feature_names=data.feature_names,
                           description=f"validation split of: {data.description}")


def make_synthetic(seed: int, *, n_hospitals: int, patients: int, strength: float) -> FederatedArrays:
    het = Heterogeneity(quantity_skew=strength, covariate_shift=strength,
                        label_convention=strength, format_shift=strength)
    return synthetic_federation(n_hospitals=n_hospitals, patients_per_hospital=patients,
                                heterogeneity=het, seed=seed, test_size=1000)


# ----------------------------------------------------------------------------- runs
def run_one(method: str, data: FederatedArrays, spec: ModelSpec, *, rounds: int, seed: int,
            settings: Settings, fmh_overrides: dict[str, Any] | None = None,
            clients_per_round: int | None = None) -> RunResult:
    if method == "centralized":
        return run_centralized(data, model=spec, rounds=rounds, seed=seed,
                               learning_rate=settings.learning_rate,
                               local_epochs=settings.local_epochs, batch_size=settings.batch_size)
    if method == "fedavg":
        strategy = settings.fedavg()
    elif method == "fedprox":
        strategy = settings.fedprox()
    elif method == "fedmedheter":
        strategy = settings.fedmedheter(**(fmh_overrides or {}))
    else:
        raise ConfigurationError(
            f"unknown method {method!r}; valid: centralized, fedavg, fedprox, fedmedheter")
    return run_federated(data, strategy=strategy, model=spec, rounds=rounds, seed=seed,
                         record_transcript=False, clients_per_round=clients_per_round)


def summarize(run: RunResult, target: float | None) -> dict[str, Any]:
    acc = [r.test_accuracy for r in run.history]
    up = [r.bytes_up for r in run.history]
    reached = None
    if target is not None:
        for i, a in enumerate(acc):
            if a >= target:
                reached = i + 1
                break
    return {
        "final_accuracy": acc[-1],
        "final_auc": run.history[-1].test_auc,
        "final_loss": run.history[-1].test_loss,
        "rounds_to_target": reached,
        "bytes_to_target": int(sum(up[:reached])) if reached is not None else None,
        "bytes_per_round": float(np.mean(up[1:])) if len(up) > 1 else float(up[0]),
        "total_bytes_up": int(sum(up)),
        "accuracy_curve": acc,
        "loss_curve": [r.test_loss for r in run.history],
        "bytes_curve": [int(x) for x in np.cumsum(up)],
    }


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    acc = _mean_std([r["final_accuracy"] for r in runs])
    auc = _mean_std([r["final_auc"] for r in runs])
    rtt = [r["rounds_to_target"] for r in runs]
    btt = [r["bytes_to_target"] for r in runs]
    return {
        "n": len(runs),
        "accuracy_mean": acc[0], "accuracy_std": acc[1],
        "auc_mean": auc[0], "auc_std": auc[1],
        "reached": sum(x is not None for x in rtt),
        "rounds_to_target_mean": _mean_std(rtt)[0], "rounds_to_target_std": _mean_std(rtt)[1],
        "bytes_to_target_mean": _mean_std(btt)[0],
        "bytes_per_round": float(np.mean([r["bytes_per_round"] for r in runs])),
        "total_bytes_up_mean": float(np.mean([r["total_bytes_up"] for r in runs])),
        "mean_accuracy_curve": np.mean([r["accuracy_curve"] for r in runs], axis=0).tolist(),
        "mean_bytes_curve": np.mean([r["bytes_curve"] for r in runs], axis=0).tolist(),
    }


class Progress:
    """A tqdm bar over runs on stderr when ``--progress`` is given; silent otherwise."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="run", file=sys.stderr)

    def step(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(label[:40])
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- selection
def tune(make_data: Callable[[int], FederatedArrays], spec_for: Callable[[FederatedArrays], ModelSpec],
         *, rounds: int, n_seeds: int, progress: bool) -> tuple[Settings, list[dict[str, Any]]]:
    """Coordinate-wise selection on validation splits of tuning seeds (module docstring)."""
    seeds = [TUNING_SEED_BASE + i for i in range(n_seeds)]
    splits = {s: validation_split(make_data(s), fraction=0.25, seed=s) for s in seeds}
    log: list[dict[str, Any]] = []
    settings = Settings()

    def score(method: str, st: Settings) -> tuple[float, float, float]:
        losses, accs, nbytes = [], [], []
        for s in seeds:
            d = splits[s]
            run = run_one(method, d, spec_for(d), rounds=rounds, seed=s, settings=st)
            losses.append(float(np.mean([r.test_loss for r in run.history])))
            accs.append(run.history[-1].test_accuracy)
            nbytes.append(run.total_bytes_up())
        return float(np.mean(losses)), float(np.mean(accs)), float(np.mean(nbytes))

    def stage(name: str, candidates: list[tuple[str, Settings, str]], *,
              off_selectable: bool = False) -> tuple[int, int]:
        """Score every candidate; ``candidates[0]`` is the control (component off).

        Returns ``(chosen, best_on)``: the chosen index (0 only when ``off_selectable`` and
        the control wins) and the best candidate with the component on.
        """
        rows = []
        for method, st, label in candidates:
            crit, acc, nb = score(method, st)
            rows.append({"stage": name, "candidate": label, "val_mean_logloss": crit,
                         "val_final_accuracy": acc, "bytes_up": nb, "chosen": False})
            bar.step(f"tune {name}")
        crits = [r["val_mean_logloss"] for r in rows]
        best_on = 1 + int(np.argmin(crits[1:]))
        chosen = 0 if off_selectable and crits[0] <= crits[best_on] else best_on
        rows[chosen]["chosen"] = True
        log.extend(rows)
        return chosen, best_on

    lr_grid = [0.1, 0.3, 1.0]
    mu_grid = [0.001, 0.01, 0.1]
    rules = [("adagrad_norm", [0.1, 0.3, 1.0]), ("adam", [0.01, 0.03, 0.1]),
             ("loss_scaled", [0.3, 1.0])]
    weightings = [(q, g) for q in (-1.0, 1.0) for g in (0.0, 1.0)]
    servers = [("momentum", {"server_momentum": 0.5, "server_learning_rate": 1.0}),
               ("momentum", {"server_momentum": 0.9, "server_learning_rate": 1.0}),
               ("adam", {"server_momentum": 0.9, "server_learning_rate": 0.01}),
               ("adam", {"server_momentum": 0.9, "server_learning_rate": 0.03})]
    codecs = [StochasticQuantizer(bits=2), StochasticQuantizer(bits=4), StochasticQuantizer(bits=8),
              TopKSparsifier(k_fraction=0.25, value_bits=8)]
    total = (len(lr_grid) + len(mu_grid) + 1 + sum(len(g) for _, g in rules) + 1 + len(weightings)
             + 1 + len(servers) + 1 + len(mu_grid) + 1 + len(codecs))
    bar = Progress(total, enabled=progress)
    off = {"proximal_mu": 0.0, "adaptive_lr": None, "client_weighting": "samples",
           "compression": None, "server_optimizer": None}

    def S(lr: float, *, mu: float = 0.0, fmh: dict[str, Any] | None = None) -> Settings:
        return Settings(learning_rate=lr, fedprox_mu=mu, fmh=dict(fmh or {}))

    # A. baselines: FedAvg's learning rate, then FedProx's mu at that rate (FedAvg is mu = 0)
    i, _ = stage("fedavg learning_rate", [("fedavg", S(lr), f"lr={lr}") for lr in [0.03] + lr_grid])
    settings.learning_rate = ([0.03] + lr_grid)[i]
    i, _ = stage("fedprox mu", [("fedprox", S(settings.learning_rate, mu=m), f"mu={m}")
                                for m in [0.0] + mu_grid])
    settings.fedprox_mu = ([0.0] + mu_grid)[i]
    # B. adaptive local learning rate: every rule with its own step-size grid; SGD as control
    cands = [("fedmedheter", S(settings.learning_rate, fmh=off),
              f"sgd lr={settings.learning_rate} (off)")]
    for rule, grid in rules:
        cands += [("fedmedheter", S(lr, fmh={**off, "adaptive_lr": rule}), f"{rule} lr={lr}")
                  for lr in grid]
    i, _ = stage("adaptive_lr", cands)
    fmh = {**off, "adaptive_lr": cands[i][1].fmh["adaptive_lr"]}
    fmh_lr = cands[i][1].learning_rate

    def F(**kw: Any) -> Settings:
        return S(fmh_lr, fmh={**fmh, **kw})

    # C. client weights (FedAvg's n_k as control)
    cands = [("fedmedheter", F(), "samples (off)")] + [
        ("fedmedheter", F(client_weighting="heterogeneity", loss_power=q, balance_power=g),
         f"q={q}, gamma={g}") for q, g in weightings]
    i, _ = stage("client_weighting", cands)
    q, g = weightings[i - 1]
    fmh.update(client_weighting="heterogeneity", loss_power=q, balance_power=g)
    # D. server optimiser: optional (the component 5), so "off" may win
    cands = [("fedmedheter", F(), "none (off)")] + [
        ("fedmedheter", F(server_optimizer=o, **kw), f"{o} " + ", ".join(f"{k}={v}" for k, v in kw.items()))
        for o, kw in servers]
    i, best_on = stage("server_optimizer", cands, off_selectable=True)
    server_best = {"server_optimizer": servers[best_on - 1][0], **servers[best_on - 1][1]}
    if i > 0:
        fmh.update(server_best)
    # E. proximal mu on top of the rest
    cands = [("fedmedheter", F(proximal_mu=m), f"mu={m}" + (" (off)" if m == 0 else ""))
             for m in [0.0] + mu_grid]
    i, _ = stage("proximal_mu", cands)
    fmh["proximal_mu"] = mu_grid[i - 1]
    # F. compression: the fewest bytes whose criterion is within 2% of uncompressed
    cands = [("fedmedheter", F(), "float32 (off)")] + [
        ("fedmedheter", F(compression=c), repr(c)) for c in codecs]
    stage("compression", cands)
    rows = log[-len(cands):]
    ref = rows[0]["val_mean_logloss"]
    ok = [j for j in range(1, len(rows)) if rows[j]["val_mean_logloss"] <= 1.02 * ref]
    for r in rows:
        r["chosen"] = False
    if not ok:  # nothing is close enough: take the most accurate codec, and say so in the log
        ok = [1 + int(np.argmin([r["val_mean_logloss"] for r in rows[1:]]))]
    j = min(ok, key=lambda j: rows[j]["bytes_up"])
    rows[j]["chosen"] = True
    fmh["compression"] = codecs[j - 1]
    bar.close()
    settings.fmh = {**fmh, "learning_rate": fmh_lr}
    settings.server_candidate = server_best
    return settings, log


# ----------------------------------------------------------------------------- experiments
def compare(name: str, make_data: Callable[[int], FederatedArrays],
            spec_for: Callable[[FederatedArrays], ModelSpec], *, seeds: Sequence[int], rounds: int,
            settings: Settings, ablation: bool, progress: bool,
            clients_per_round: int | None = None) -> dict[str, Any]:
    variants: list[tuple[str, str, dict[str, Any] | None]] = [
        ("centralized", "centralized", None), ("fedavg", "fedavg", None),
        ("fedprox", "fedprox", None), ("fedmedheter", "fedmedheter", None)]
    full = settings.fedmedheter()
    if ablation:
        for comp in full.active_components():
            off = full.without(comp)
            diff = {k: v for k, v in off._init_kwargs.items() if full._init_kwargs[k] != v}
            variants.append((f"fedmedheter - {comp}", "fedmedheter", diff))
        if full.server_optimizer is None and settings.server_candidate:
            variants.append(("fedmedheter + server_optimizer", "fedmedheter",
                             dict(settings.server_candidate)))
    bar = Progress(len(seeds) * len(variants), enabled=progress)
    per: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in variants}
    t0 = time.perf_counter()
    for s in seeds:
        data = make_data(s)
        spec = spec_for(data)
        central = run_one("centralized", data, spec, rounds=rounds, seed=s, settings=settings)
        target = TARGET_FRACTION * central.history[-1].test_accuracy
        per["centralized"].append(summarize(central, target))
        bar.step(f"{name} seed {s} centralized")
        for label, method, ov in variants[1:]:
            run = run_one(method, data, spec, rounds=rounds, seed=s, settings=settings,
                          fmh_overrides=ov, clients_per_round=clients_per_round)
            per[label].append(summarize(run, target))
            bar.step(f"{name} seed {s} {label}")
    bar.close()
    agg = {label: aggregate(runs) for label, runs in per.items()}
    base = np.array([r["final_accuracy"] for r in per["fedavg"]])
    for label, runs in per.items():
        if label == "fedavg" or len(runs) < 2:
            continue
        diff = np.array([r["final_accuracy"] for r in runs]) - base
        if np.allclose(diff, 0.0):
            agg[label]["p_vs_fedavg"] = 1.0
        elif np.allclose(diff, diff[0]):  # constant difference: the t statistic is undefined
            agg[label]["p_vs_fedavg"] = float("nan")
        else:
            agg[label]["p_vs_fedavg"] = float(stats.ttest_rel(diff + base, base).pvalue)
    return {"dataset": name, "seeds": list(seeds), "rounds": rounds,
            "clients_per_round": clients_per_round, "seconds": time.perf_counter() - t0,
            "aggregate": agg, "runs": per}


def claims(res: dict[str, Any]) -> list[dict[str, Any]]:
    agg = res["aggregate"]
    runs = res["runs"]
    fmh, prox, avg = runs["fedmedheter"], runs["fedprox"], runs["fedavg"]

    def paired(a: list, b: list, key: str) -> tuple[float, int]:
        pairs = [(x[key], y[key]) for x, y in zip(a, b, strict=True)
                 if x[key] is not None and y[key] is not None]
        if not pairs:
            return float("nan"), 0
        xs, ys = np.array(pairs, dtype=float).T
        return float(1.0 - xs.mean() / ys.mean()), len(pairs)

    faster, n1 = paired(fmh, prox, "rounds_to_target")
    less, n2 = paired(fmh, avg, "bytes_to_target")
    less_prox, n3 = paired(fmh, prox, "bytes_to_target")
    per_round = 1.0 - agg["fedmedheter"]["bytes_per_round"] / agg["fedavg"]["bytes_per_round"]
    return [
        {"claim": "converges 15% faster than FedProx (rounds to 95% of centralised accuracy)",
         "seed": "15%", "measured": f"{100 * faster:.0f}% (seeds where both reached: {n1})"},
        {"claim": "40% less communication than FedAvg (bytes uploaded until the target)",
         "seed": "40%", "measured": f"{100 * less:.0f}% (seeds where both reached: {n2})"},
        {"claim": "40% less communication than FedProx (bytes uploaded until the target)",
         "seed": "40%", "measured": f"{100 * less_prox:.0f}% (seeds where both reached: {n3})"},
        {"claim": "upload bytes per round vs FedAvg", "seed": "-",
         "measured": f"{100 * per_round:.0f}% fewer"},
        {"claim": "FedMedHeter test accuracy", "seed": "85%",
         "measured": f"{100 * agg['fedmedheter']['accuracy_mean']:.1f}% +- {100 * agg['fedmedheter']['accuracy_std']:.1f}"},
        {"claim": "centralised test accuracy", "seed": "67%",
         "measured": f"{100 * agg['centralized']['accuracy_mean']:.1f}% +- {100 * agg['centralized']['accuracy_std']:.1f}"},
        {"claim": "FedAvg accuracy between centralised and FedMedHeter", "seed": "yes",
         "measured": f"FedAvg {100 * agg['fedavg']['accuracy_mean']:.1f}%"},
    ]


# ----------------------------------------------------------------------------- output
def _fmt_pm(m: float, s: float, scale: float = 100.0, digits: int = 1) -> str:
    if math.isnan(m):
        return "n/a"
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def comparison_table(res: dict[str, Any]) -> str:
    lines = ["| method | accuracy % | AUC % | reached target | rounds to target | bytes up to target | bytes up / round | p (acc vs FedAvg) |",
             "|---|---|---|---|---|---|---|---|"]
    for label, a in res["aggregate"].items():
        rtt = "n/a" if math.isnan(a["rounds_to_target_mean"]) else f"{a['rounds_to_target_mean']:.1f} ± {a['rounds_to_target_std']:.1f}"
        btt = "n/a" if math.isnan(a["bytes_to_target_mean"]) else f"{a['bytes_to_target_mean']:,.0f}"
        bpr = "(rows once)" if label == "centralized" else f"{a['bytes_per_round']:,.0f}"
        p = a.get("p_vs_fedavg")
        ptxt = "-" if p is None else ("n/a" if math.isnan(p) else f"{p:.3f}")
        lines.append(f"| {label} | {_fmt_pm(a['accuracy_mean'], a['accuracy_std'])} | "
                     f"{_fmt_pm(a['auc_mean'], a['auc_std'])} | {a['reached']}/{a['n']} | {rtt} | "
                     f"{btt} | {bpr} | {ptxt} |")
    return "\n".join(lines)


def tuning_table(log: list[dict[str, Any]]) -> str:
    lines = ["| stage | candidate | val. mean log-loss | val. final accuracy % | bytes up | chosen |",
             "|---|---|---|---|---|---|"]
    for r in log:
        lines.append(f"| {r['stage']} | {r['candidate']} | {r['val_mean_logloss']:.4f} | "
                     f"{100 * r['val_final_accuracy']:.1f} | {r['bytes_up']:,.0f} | "
                     f"{'**yes**' if r.get('chosen') else ''} |")
    return "\n".join(lines)


def claims_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| seed document's claim | claimed | measured |", "|---|---|---|"]
    lines += [f"| {r['claim']} | {r['seed']} | {r['measured']} |" for r in rows]
    return "\n".join(lines)


COLORS = {"centralized": "tab:gray", "fedavg": "tab:blue", "fedprox": "tab:orange",
          "fedmedheter": "tab:red"}


def plot(results: dict[str, dict[str, Any] | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in results if results[k] is not None]
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8), squeeze=False)
    for col, name in enumerate(names):
        agg = results[name]["aggregate"]
        for label, color in COLORS.items():
            curve = agg[label]["mean_accuracy_curve"]
            axes[0, col].plot(range(1, len(curve) + 1), curve, label=label, color=color)
            if label != "centralized":
                axes[1, col].plot(np.asarray(agg[label]["mean_bytes_curve"]) / 1e3, curve,
                                  label=label, color=color)
        axes[0, col].set(title=f"{name}: test accuracy (mean over seeds)", xlabel="round",
                         ylabel="accuracy")
        axes[1, col].set(title=f"{name}: accuracy vs upload", xlabel="kB uploaded (all clients)",
                         ylabel="accuracy")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _strip_curves(res: dict[str, Any]) -> dict[str, Any]:
    """Per-run records without the per-round curves (kept as means in ``aggregate``)."""
    out = dict(res)
    out["runs"] = {k: [{kk: vv for kk, vv in r.items() if not kk.endswith("_curve")} for r in v]
                   for k, v in res["runs"].items()}
    return out


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for results.json / results.md / curves.png")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, few rounds, no selection")
    ap.add_argument("--no-tune", action="store_true", help="use FedMedHeter's defaults, skip selection")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--tune-seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--model", choices=("mlp", "logreg"), default="mlp")
    ap.add_argument("--synthetic-hospitals", type=int, default=20)
    ap.add_argument("--synthetic-patients", type=int, default=60,
                    help="mean patients per synthetic hospital (quantity skew spreads them)")
    ap.add_argument("--synthetic-clients-per-round", type=int, default=10,
                    help="hospitals sampled per round in the synthetic federation")
    ap.add_argument("--synthetic-strength", type=float, default=0.8,
                    help="every Heterogeneity knob of the synthetic federation")
    ap.add_argument("--progress", action="store_true", help="progress bars on stderr")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw curves.png from the results.json already in --out")
    args = ap.parse_args(argv)
    if args.replot:
        saved = json.loads((Path(args.out) / "results.json").read_text())
        plot({"pima": saved["pima"], "synthetic": saved["synthetic"]}, Path(args.out) / "curves.png")
        return 0
    torch.set_num_threads(1)  # tiny models: more threads only contend on shared cores

    seeds = list(range(2 if args.quick else args.seeds))
    rounds = 4 if args.quick else args.rounds
    syn_h = 4 if args.quick else args.synthetic_hospitals
    syn_n = 40 if args.quick else args.synthetic_patients
    syn_cpr = 2 if args.quick else args.synthetic_clients_per_round
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cpu_start = time.process_time()

    def spec_for(d: FederatedArrays) -> ModelSpec:
        return ModelSpec(args.model, n_features=d.num_features)

    def make_pima(s: int) -> FederatedArrays:
        return pima_federation(seed=s)

    notes: list[str] = []
    if args.quick or args.no_tune:
        settings, log = library_defaults(), []
    else:
        settings, log = tune(make_pima, spec_for, rounds=rounds, n_seeds=args.tune_seeds,
                             progress=args.progress)
    print("## Settings\n\n```json\n" + json.dumps(settings.to_json(), indent=1) + "\n```\n")
    if log:
        print("## Selection (validation split, tuning seeds)\n\n" + tuning_table(log) + "\n")

    pima = compare("pima", make_pima, spec_for, seeds=seeds, rounds=rounds, settings=settings,
                   ablation=True, progress=args.progress)
    print("## Pima, 3 hospitals\n\n" + comparison_table(pima) + "\n")
    synthetic = compare(
        "synthetic", lambda s: make_synthetic(s, n_hospitals=syn_h, patients=syn_n,
                                              strength=args.synthetic_strength),
        spec_for, seeds=seeds, rounds=rounds, settings=settings, ablation=True,
        progress=args.progress, clients_per_round=syn_cpr)
    print(f"## Synthetic, {syn_h} hospitals, {syn_cpr} per round\n\n"
          + comparison_table(synthetic) + "\n")
    claim_rows = claims(pima)
    print("## Seed claims vs measured (Pima)\n\n" + claims_table(claim_rows) + "\n")
    for n in notes:
        print("NOTE:", n)

    elapsed = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    command = "python benchmarks/fedmedheter_experiments.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    payload = {
        "command": command, "seconds": elapsed, "cpu_seconds": cpu, "notes": notes, "settings": settings.to_json(),
        "selection": log, "pima": _strip_curves(pima),
        "synthetic": _strip_curves(synthetic),
        "claims": claim_rows, "target_fraction": TARGET_FRACTION, "model": args.model,
        "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    md = [f"# FedMedHeter experiments\n\nCommand: `{command}` ({elapsed:.0f} s wall, "
          f"{cpu:.0f} s CPU)\n"]
    md += [f"> NOTE: {n}\n" for n in notes]
    md.append("## Settings\n\n```json\n" + json.dumps(settings.to_json(), indent=1) + "\n```\n")
    if log:
        md.append("## Selection\n\n" + tuning_table(log) + "\n")
    md.append("## Pima (3 hospitals)\n\n" + comparison_table(pima) + "\n")
    md.append(f"## Synthetic ({syn_h} hospitals, {syn_cpr} sampled per round, "
              f"heterogeneity {args.synthetic_strength:g})\n\n" + comparison_table(synthetic) + "\n")
    md.append("## Seed claims vs measured (Pima)\n\n" + claims_table(claim_rows) + "\n")
    md.append("## Seed claims vs measured (synthetic)\n\n" + claims_table(claims(synthetic)) + "\n")
    (out / "results.md").write_text("\n".join(md))
    plot({"pima": pima, "synthetic": synthetic}, out / "curves.png")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'} "
          f"in {elapsed:.0f} s wall, {cpu:.0f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
