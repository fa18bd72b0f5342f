"""Personalised FedMedHeter for hospitals that disagree, evaluated on each hospital's own patients.

Every number of the personalisation section of ``docs/fedmedheter.md`` comes from one run of
this script.  What it does, in order:

1. **Selection** (skipped with ``--quick``): which personalisation FedMedHeter uses, and its
   settings, and Ditto's lambda, are chosen on *validation* data only: 25% of each hospital's
   own training rows held out as its validation patients (``hold_out_hospital_rows``), on the
   default heterogeneous Pima federation with tuning seeds 100, 101, ... (disjoint from the
   reported seeds; Pima.te is never looked at).  Criterion, declared before any result: the
   final round's validation log-loss on each hospital's own validation patients, averaged
   over hospitals (each counts once) and over tuning seeds.  FedMedHeter's default is the
   personalised candidate with the lowest criterion.
2. **Pima, default heterogeneity** (``pima_federation``: every knob at 0.5), seeds 0 to 9:
   centralised training, FedAvg, FedProx, local-only training, Ditto, FedMedHeter without
   personalisation, personalised FedMedHeter, and the other personalisation methods (the
   ablation).  Each hospital is evaluated on its own test patients (Pima.te shared out with
   the same knobs, ``pima_hospital_tests``): the mean over hospitals and the worst hospital.
   Paired t-tests over the seeds.  The issue's goals are checked here.
3. **Sweeps**: each Pima knob (label convention, covariate shift, quantity skew) at 0, 0.5
   and 1 (``--levels``) with the other knobs at 0; the all-zero point runs the main stage's
   10 seeds (the zero-heterogeneity goal), the other points ``--sweep-seeds`` seeds.
   FedMedHeter with ``"finetune-select"`` runs beside the chosen method at zero heterogeneity
   and along the label-convention sweep.
4. **Synthetic federation**: ``synthetic_federation`` with 20 hospitals, heterogeneity 0.8,
   half of each hospital's patients held out as its own test patients, 10 hospitals sampled
   per round; settings transferred from step 1 (not re-tuned).

Model: the MLP (16 hidden units), 30 rounds of one local epoch, batch 16, learning rate 0.3
and FedProx mu 0.01 (the values the selection of ``benchmarks/fedmedheter_experiments.py``
chose); centralised training and local-only training run 30 epochs at the same rate.
"10 folds" of the goals are realised as 10 seeds: each seed draws a new split of Pima.tr into
hospitals and of Pima.te into their test patients; comparisons are paired by seed.

    python benchmarks/personalisation.py --out docs/results/personalisation
    python benchmarks/personalisation.py --out /tmp/smoke --quick        # a smoke run

Writes ``results.json``, ``results.md`` and ``sweep.png`` under ``--out`` and prints the tables,
with wall and CPU time (one torch thread).  Each stage is also saved as it finishes
(``stage-*.json``); ``--resume`` reuses them, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from securefed.data import Heterogeneity, pima_federation, synthetic_federation
from securefed.data.heterogeneity import hold_out_hospital_rows
from securefed.federated import FedAvg, FederatedArrays, FedProx, run_federated
from securefed.federated.centralized import run_centralized
from securefed.federated.fedmedheter import FedMedHeter
from securefed.federated.local_only import run_local_only
from securefed.federated.personal import Ditto, hospital_summary
from securefed.federated.types import RunResult
from securefed.models import ModelSpec

LEARNING_RATE = 0.3
FEDPROX_MU = 0.01
ROUNDS = 30
TUNING_SEED_BASE = 100
VALIDATION_FRACTION = 0.25
LEVELS = (0.0, 0.5, 1.0)
KNOBS = ("label_convention", "covariate_shift", "quantity_skew")
GOAL_MARGIN_CENTRAL = 0.03
GOAL_ZERO_HET_LOSS = 0.01

#: FedMedHeter personalisation candidates of the selection (label -> constructor keywords)
FMH_CANDIDATES: dict[str, dict[str, Any]] = {
    "none": {"personalisation": None},
    "finetune e=1": {"personalisation": "finetune", "personal_epochs": 1,
                     "personal_learning_rate": 0.1, "personal_lambda": 0.0},
    "finetune e=5": {"personalisation": "finetune", "personal_epochs": 5,
                     "personal_learning_rate": 0.1, "personal_lambda": 0.0},
    "finetune e=20": {"personalisation": "finetune", "personal_epochs": 20,
                      "personal_learning_rate": 0.1, "personal_lambda": 0.0},
    "finetune e=20 lambda=0.1": {"personalisation": "finetune", "personal_epochs": 20,
                                 "personal_learning_rate": 0.1, "personal_lambda": 0.1},
    "ditto lambda=0.01": {"personalisation": "ditto", "personal_epochs": 1,
                          "personal_learning_rate": 0.3, "personal_lambda": 0.01},
    "ditto lambda=0.1": {"personalisation": "ditto", "personal_epochs": 1,
                         "personal_learning_rate": 0.3, "personal_lambda": 0.1},
    "ditto lambda=1": {"personalisation": "ditto", "personal_epochs": 1,
                       "personal_learning_rate": 0.3, "personal_lambda": 1.0},
    "fedper": {"personalisation": "fedper"},
    "finetune-select": {"personalisation": "finetune-select", "personal_learning_rate": 0.1},
}
#: Ditto baseline candidates (FedAvg global model, personal models with this lambda)
DITTO_CANDIDATES = (0.01, 0.1, 1.0)


# ----------------------------------------------------------------------------- methods
@dataclass
class Choice:
    """What selection chose (or the library defaults with ``--quick``)."""

    fmh: dict[str, Any]
    ditto_lambda: float
    family_best: dict[str, dict[str, Any]]  # best candidate per personalisation family

    def to_json(self) -> dict[str, Any]:
        return {"fedmedheter": self.fmh, "ditto_lambda": self.ditto_lambda,
                "family_best": self.family_best}


def library_choice() -> Choice:
    d = FedMedHeter()
    fmh = {"personalisation": None if d.personalisation is None else d.personalisation.name,
           **{k: d._init_kwargs[k] for k in ("personal_epochs", "personal_learning_rate",
                                              "personal_lambda")}}
    fam = {name: FMH_CANDIDATES[label] for name, label in
           (("finetune", "finetune e=1"), ("finetune-select", "finetune-select"),
            ("ditto", "ditto lambda=1"), ("fedper", "fedper"))}
    return Choice(fmh=fmh, ditto_lambda=1.0, family_best=fam)


Runner = Callable[[FederatedArrays, int, ModelSpec, "int | None"], RunResult]


def fmh(**kw: Any) -> Runner:
    def run(data: FederatedArrays, seed: int, spec: ModelSpec, cpr: int | None) -> RunResult:
        return run_federated(data, strategy=FedMedHeter(**kw), model=spec, rounds=ROUNDS,
                             seed=seed, clients_per_round=cpr, record_transcript=False)
    return run


def fed(make: Callable[[], Any]) -> Runner:
    def run(data: FederatedArrays, seed: int, spec: ModelSpec, cpr: int | None) -> RunResult:
        return run_federated(data, strategy=make(), model=spec, rounds=ROUNDS, seed=seed,
                             clients_per_round=cpr, record_transcript=False)
    return run


def centralized(data: FederatedArrays, seed: int, spec: ModelSpec, cpr: int | None) -> RunResult:
    return run_centralized(data, model=spec, rounds=ROUNDS, seed=seed, learning_rate=LEARNING_RATE)


def local_only(data: FederatedArrays, seed: int, spec: ModelSpec, cpr: int | None) -> RunResult:
    return run_local_only(data, model=spec, rounds=ROUNDS, seed=seed, learning_rate=LEARNING_RATE)


def ditto(lam: float) -> Runner:
    return fed(lambda: Ditto(ditto_lambda=lam, learning_rate=LEARNING_RATE))


def methods(choice: Choice, *, ablation: bool) -> dict[str, Runner]:
    out: dict[str, Runner] = {
        "centralized": centralized,
        "fedavg": fed(lambda: FedAvg(learning_rate=LEARNING_RATE)),
        "fedprox": fed(lambda: FedProx(proximal_mu=FEDPROX_MU, learning_rate=LEARNING_RATE)),
        "local-only": local_only,
        "ditto": ditto(choice.ditto_lambda),
        "fedmedheter (global model)": fmh(personalisation=None),
        "fedmedheter (personalised)": fmh(**choice.fmh),
    }
    if ablation:
        for fam, kw in choice.family_best.items():
            if kw.get("personalisation") != choice.fmh.get("personalisation"):
                out[f"fedmedheter + {fam}"] = fmh(**kw)
    return out


PERSONAL = "fedmedheter (personalised)"
EXTRA = "fedmedheter + finetune-select"


# ----------------------------------------------------------------------------- one run
def record(result: RunResult, cpu: float, wall: float) -> dict[str, Any]:
    s = hospital_summary(result)
    assert s is not None
    per = result.final.per_hospital
    return {"mean": s.mean_accuracy, "worst": s.worst_accuracy, "worst_hospital": s.worst_hospital,
            "accuracy": s.accuracy, "loss": {h: float(m["loss"]) for h, m in per.items()},
            "mean_loss": float(np.mean([m["loss"] for m in per.values()])),
            "personal": any(s.personal.values()),
            "pooled_accuracy": float(result.final.test_accuracy), "cpu": cpu, "wall": wall}


def timed(run: Runner, data: FederatedArrays, seed: int, spec: ModelSpec,
          cpr: int | None = None) -> dict[str, Any]:
    c0, t0 = time.process_time(), time.perf_counter()
    res = run(data, seed, spec, cpr)
    return record(res, time.process_time() - c0, time.perf_counter() - t0)


def mlp(data: FederatedArrays) -> ModelSpec:
    return ModelSpec("mlp", n_features=data.num_features, hidden=(16,))


class Progress:
    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.done, self.label, self.enabled = total, 0, label, enabled
        self.t0 = time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        if self.enabled:
            el = time.perf_counter() - self.t0
            print(f"\r[{self.label}] {self.done}/{self.total} {what[:40]:40s} {el:6.0f}s",
                  end="", file=sys.stderr, flush=True)
            if self.done == self.total:
                print(file=sys.stderr)


# ----------------------------------------------------------------------------- stages
def select(tuning_seeds: Sequence[int], progress: bool) -> tuple[Choice, list[dict[str, Any]]]:
    cands: list[tuple[str, str, Runner]] = [
        (f"fedmedheter {label}", label, fmh(**kw)) for label, kw in FMH_CANDIDATES.items()]
    cands += [(f"ditto lambda={lam:g}", f"ditto-baseline {lam}", ditto(lam))
              for lam in DITTO_CANDIDATES]
    bar = Progress(len(cands) * len(tuning_seeds), "selection", progress)
    scores: dict[str, list[dict[str, Any]]] = {c[0]: [] for c in cands}
    for t in tuning_seeds:
        data = hold_out_hospital_rows(pima_federation(seed=t, hospital_tests=False),
                                      fraction=VALIDATION_FRACTION, seed=t)
        for name, _, run in cands:
            scores[name].append(timed(run, data, t, mlp(data)))
            bar.step(name)
    log = [{"candidate": name, "val_mean_logloss": float(np.mean([r["mean_loss"] for r in rs])),
            "val_mean_accuracy": float(np.mean([r["mean"] for r in rs])),
            "val_worst_accuracy": float(np.mean([r["worst"] for r in rs])), "chosen": False}
           for name, rs in scores.items()]
    crit = {row["candidate"]: row["val_mean_logloss"] for row in log}
    personalised = [lab for lab in FMH_CANDIDATES if lab != "none"]
    best = min(personalised, key=lambda lab: crit[f"fedmedheter {lab}"])
    fam: dict[str, dict[str, Any]] = {}
    for family in ("finetune", "finetune-select", "ditto", "fedper"):
        labs = [lab for lab in personalised if FMH_CANDIDATES[lab]["personalisation"] == family]
        fam[family] = FMH_CANDIDATES[min(labs, key=lambda lab: crit[f"fedmedheter {lab}"])]
    lam = min(DITTO_CANDIDATES, key=lambda v: crit[f"ditto lambda={v:g}"])
    for row in log:
        row["chosen"] = row["candidate"] in (f"fedmedheter {best}", f"ditto lambda={lam:g}")
    return Choice(fmh=dict(FMH_CANDIDATES[best]), ditto_lambda=lam, family_best=fam), log


def compare(make_data: Callable[[int], FederatedArrays], seeds: Sequence[int],
            runners: dict[str, Runner], *, label: str, progress: bool,
            cpr: int | None = None) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in runners}
    bar = Progress(len(seeds) * len(runners), label, progress)
    for s in seeds:
        data = make_data(s)
        spec = mlp(data)
        for m, run in runners.items():
            rec = timed(run, data, s, spec, cpr)
            rec["seed"] = s
            out[m].append(rec)
            bar.step(m)
    return out


def ceiling(make_data: Callable[[int], FederatedArrays], seeds: Sequence[int]) -> dict[str, Any]:
    """A rough ceiling: per hospital, a logistic regression (scikit-learn, C = 1) fitted on the
    hospital's own test patients and scored on those same patients (in-sample, so optimistic:
    no method trained on other patients should be expected to beat it by much)."""
    from sklearn.linear_model import LogisticRegression

    means, worsts, per = [], [], []
    for s in seeds:
        data = make_data(s)
        acc = {c.name: float(LogisticRegression(C=1.0, max_iter=2000).fit(c.X_test, c.y_test)
                             .score(c.X_test, c.y_test)) for c in data.clients}
        means.append(float(np.mean(list(acc.values()))))
        worsts.append(min(acc.values()))
        per.append(acc)
    return {"mean": float(np.mean(means)), "worst": float(np.mean(worsts)), "runs": per}


# ----------------------------------------------------------------------------- statistics
def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of a - b and the two-sided paired t-test p-value (NaN with fewer than 2 pairs)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2 or np.allclose(d, d[0]):
        return {"diff": float(d.mean()) if len(d) else math.nan,
                "p": 1.0 if len(d) >= 2 else math.nan, "n": len(d)}
    return {"diff": float(d.mean()), "p": float(stats.ttest_rel(a, b).pvalue), "n": len(d)}


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    fa = [r["mean"] for r in runs["fedavg"]]
    ce = [r["mean"] for r in runs["centralized"]]
    rows = {}
    for m, rs in runs.items():
        means = [r["mean"] for r in rs]
        rows[m] = {
            "mean": float(np.mean(means)), "mean_std": float(np.std(means, ddof=1)) if len(rs) > 1 else 0.0,
            "worst": float(np.mean([r["worst"] for r in rs])),
            "pooled": float(np.mean([r["pooled_accuracy"] for r in rs])),
            "vs_fedavg": paired(means, fa), "vs_centralized": paired(means, ce),
            "per_hospital": {h: float(np.mean([r["accuracy"][h] for r in rs]))
                             for h in rs[0]["accuracy"]} if len(rs[0]["accuracy"]) <= 6 else {},
            "cpu": float(np.sum([r["cpu"] for r in rs])),
        }
    return rows


def worst_vs_local(runs: dict[str, list[dict[str, Any]]], method: str = PERSONAL) -> dict[str, Any]:
    """Per seed: the method's worst hospital, and local-only training's accuracy there."""
    mine, local, names = [], [], []
    for r, lo in zip(runs[method], runs["local-only"], strict=True):
        h = r["worst_hospital"]
        mine.append(r["accuracy"][h])
        local.append(lo["accuracy"][h])
        names.append(h)
    holds = sum(a >= b for a, b in zip(mine, local, strict=True))
    return {"worst_hospitals": names, "accuracy": mine, "local_only": local,
            "seeds_holding": int(holds), "n": len(mine), **paired(mine, local)}


def goals(main: dict[str, Any], zero: dict[str, Any], worst: dict[str, Any]) -> list[dict[str, Any]]:
    p = main[PERSONAL]
    z = zero[PERSONAL]["vs_fedavg"]
    out = [
        {"goal": "mean per-hospital accuracy >= centralised + 3 points (default Pima)",
         "measured": f"{100 * p['vs_centralized']['diff']:+.1f} points (paired p = "
                     f"{p['vs_centralized']['p']:.3g})",
         "holds": p["vs_centralized"]["diff"] >= GOAL_MARGIN_CENTRAL},
        {"goal": "mean per-hospital accuracy > FedAvg with paired p < 0.05 (default Pima)",
         "measured": f"{100 * p['vs_fedavg']['diff']:+.1f} points (paired p = {p['vs_fedavg']['p']:.3g})",
         "holds": p["vs_fedavg"]["diff"] > 0 and p["vs_fedavg"]["p"] < 0.05},
        {"goal": "worst-hospital accuracy >= that hospital's local-only training (default Pima)",
         "measured": f"{100 * worst['diff']:+.1f} points on average; holds in "
                     f"{worst['seeds_holding']}/{worst['n']} seeds (paired p = {worst['p']:.3g})",
         "holds": worst["diff"] >= 0},
        {"goal": "at zero heterogeneity, at most 1 point below FedAvg",
         "measured": f"{100 * z['diff']:+.1f} points (paired p = {z['p']:.3g}, {z['n']} seeds)",
         "holds": z["diff"] >= -GOAL_ZERO_HET_LOSS},
    ]
    return out


# ----------------------------------------------------------------------------- report
def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def table(rows: dict[str, Any], hospitals: bool = True) -> list[str]:
    hs = sorted(next(iter(rows.values()))["per_hospital"]) if hospitals else []
    head = ["method", "mean per-hospital acc. %", "worst hospital %", *[f"{h} %" for h in hs],
            "pooled test %", "vs FedAvg (points, p)", "vs centralised (points, p)", "CPU s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in rows.items():
        cells = [m, f"{pct(r['mean'])} ± {pct(r['mean_std'])}", pct(r["worst"]),
                 *[pct(r["per_hospital"][h]) for h in hs], pct(r["pooled"]),
                 "-" if m == "fedavg" else f"{100 * r['vs_fedavg']['diff']:+.1f} ({r['vs_fedavg']['p']:.3g})",
                 "-" if m == "centralized" else
                 f"{100 * r['vs_centralized']['diff']:+.1f} ({r['vs_centralized']['p']:.3g})",
                 f"{r['cpu']:.0f}"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def sweep_table(sweep: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    out = []
    for knob, levels in sweep.items():
        meths = [m for m in next(iter(levels.values())) if all(m in r for r in levels.values())]
        out += [f"**{knob}** (other knobs 0): mean per-hospital accuracy % (worst hospital %)", "",
                "| level | " + " | ".join(meths) + " | personalised - FedAvg (p) |",
                "|" + "---|" * (len(meths) + 2)]
        for lev, rows in levels.items():
            d = rows[PERSONAL]["vs_fedavg"]
            out.append(f"| {lev} | " + " | ".join(
                f"{pct(rows[m]['mean'])} ({pct(rows[m]['worst'])})" for m in meths)
                + f" | {100 * d['diff']:+.1f} ({d['p']:.3g}) |")
        out.append("")
    return out


def plot(sweep: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(sweep), figsize=(4.2 * len(sweep), 6.4), sharey="row")
    for j, (knob, levels) in enumerate(sweep.items()):
        xs = [float(k) for k in levels]
        for m in [m for m in next(iter(levels.values())) if all(m in r for r in levels.values())]:
            for i, key in enumerate(("mean", "worst")):
                axes[i, j].plot(xs, [100 * levels[k][m][key] for k in levels], marker="o",
                                label=m, lw=2.2 if m == PERSONAL else 1.2)
        axes[0, j].set_title(knob)
        axes[1, j].set_xlabel("strength")
    axes[0, 0].set_ylabel("mean per-hospital accuracy %")
    axes[1, 0].set_ylabel("worst-hospital accuracy %")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def _stage(out: Path, name: str, resume: bool, compute: Callable[[], dict[str, Any]],
           key: Any = None) -> dict[str, Any]:
    """Run one stage, or reload it with ``--resume`` when it was saved with the same ``key``
    (the settings it depends on); each stage is saved as it finishes."""
    path = out / f"stage-{name}.json"
    key = json.loads(json.dumps(key, default=str))
    if resume and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved
    c0, t0 = time.process_time(), time.perf_counter()
    data = compute()
    data["key"] = key
    data["time"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    path.write_text(json.dumps(data, indent=1, default=str))
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=10, help="seeds of the main and synthetic stages")
    ap.add_argument("--sweep-seeds", type=int, default=5)
    ap.add_argument("--levels", default=",".join(f"{v:g}" for v in LEVELS),
                    help="knob strengths of the sweeps (the first must be 0)")
    ap.add_argument("--tuning-seeds", type=int, default=5)
    ap.add_argument("--stages", default="select,main,sweep,synthetic")
    ap.add_argument("--resume", action="store_true", help="reuse the stages already saved in --out")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 2 rounds, no selection")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    global ROUNDS
    torch.set_num_threads(1)
    stages = set(args.stages.split(","))
    seeds = list(range(args.seeds))
    sweep_seeds = list(range(args.sweep_seeds))
    levels = tuple(float(v) for v in args.levels.split(","))
    if levels[0] != 0.0:
        print(f"--levels must start at 0, got {args.levels}", file=sys.stderr)
        return 2
    if args.quick:
        ROUNDS, seeds, sweep_seeds, levels = 2, [0, 1], [0, 1], (0.0, 1.0)
        stages.discard("select")
    progress = not args.quiet
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"rounds": ROUNDS, "learning_rate": LEARNING_RATE,
                               "fedprox_mu": FEDPROX_MU, "seeds": seeds, "sweep_seeds": sweep_seeds,
                               "levels": list(levels)}
    md: list[str] = []
    times: dict[str, Any] = {}

    choice, log = library_choice(), []
    if "select" in stages:
        def run_select() -> dict[str, Any]:
            ch, lg = select([TUNING_SEED_BASE + i for i in range(args.tuning_seeds)], progress)
            return {"log": lg, "choice": ch.to_json()}
        sel = _stage(out, "select", args.resume, run_select,
                     key=[ROUNDS, args.tuning_seeds, FMH_CANDIDATES, DITTO_CANDIDATES])
        times["select"] = sel["time"]
        log = sel["log"]
        c = sel["choice"]
        choice = Choice(fmh=c["fedmedheter"], ditto_lambda=c["ditto_lambda"],
                        family_best=c["family_best"])
        md += ["### Selection (validation: 25% of each hospital's own training rows, tuning seeds "
               f"{TUNING_SEED_BASE}-{TUNING_SEED_BASE + args.tuning_seeds - 1})", "",
               "| candidate | val. log-loss (mean over hospitals) | val. mean accuracy % | "
               "val. worst hospital % | chosen |", "|---|---|---|---|---|"]
        md += [f"| {r['candidate']} | {r['val_mean_logloss']:.4f} | {pct(r['val_mean_accuracy'])} | "
               f"{pct(r['val_worst_accuracy'])} | {'**yes**' if r['chosen'] else ''} |" for r in log]
        md.append("")
    payload["selection"] = {"log": log, "choice": choice.to_json()}

    main_rows = zero_rows = worst = None
    if "main" in stages:
        def run_main() -> dict[str, Any]:
            runs = compare(lambda s: pima_federation(seed=s), seeds, methods(choice, ablation=True),
                           label="pima default", progress=progress)
            return {"rows": summarise(runs), "runs": runs, "worst_vs_local": worst_vs_local(runs)}
        st = _stage(out, "main", args.resume, run_main,
                    key=[ROUNDS, seeds, choice.to_json(), list(methods(choice, ablation=True))])
        times["main"] = st["time"]
        main_rows, worst = st["rows"], st["worst_vs_local"]
        payload["main"] = st
        ceil = _stage(out, "ceiling", args.resume, key=seeds, compute=lambda: {
            "default": ceiling(lambda s: pima_federation(seed=s), seeds),
            "zero": ceiling(lambda s: pima_federation(seed=s, heterogeneity=Heterogeneity.none()),
                            seeds)})
        times["ceiling"] = ceil["time"]
        payload["ceiling"] = ceil
        md += ["### Pima, three hospitals, default heterogeneity "
               f"({len(seeds)} seeds; each hospital on its own test patients)", "", *table(main_rows), "",
               "Rough ceiling (a logistic regression fitted on each hospital's own test patients, "
               f"scored in-sample): mean {pct(ceil['default']['mean'])}%, worst hospital "
               f"{pct(ceil['default']['worst'])}% (zero heterogeneity: {pct(ceil['zero']['mean'])}%, "
               f"{pct(ceil['zero']['worst'])}%).", "",
               f"Worst hospital of personalised FedMedHeter against its own local-only model: "
               f"{100 * worst['diff']:+.1f} points on average, holds in {worst['seeds_holding']}/"
               f"{worst['n']} seeds (paired p = {worst['p']:.3g}).", ""]

    if "sweep" in stages:
        sweep_methods = {m: r for m, r in methods(choice, ablation=False).items() if m != "fedprox"}

        def run_zero() -> dict[str, Any]:
            runs = compare(lambda s: pima_federation(seed=s, heterogeneity=Heterogeneity.none()),
                           seeds, sweep_methods, label="zero heterogeneity", progress=progress)
            return {"rows": summarise(runs), "runs": runs}
        extra_kw = FMH_CANDIDATES["finetune-select"]

        def with_extra(st: dict[str, Any], name: str, make_data: Callable[[int], FederatedArrays],
                       sd: list[int]) -> dict[str, Any]:
            """The stage's rows plus FedMedHeter with "finetune-select" on the same seeds."""
            if choice.fmh.get("personalisation") == "finetune-select":
                return st["rows"]
            ex = _stage(out, f"extra-{name}", args.resume, key=[ROUNDS, sd, extra_kw],
                        compute=lambda: {"runs": compare(
                            make_data, sd, {EXTRA: fmh(**extra_kw)}, label=f"extra {name}",
                            progress=progress)})
            times[f"extra-{name}"] = ex["time"]
            return summarise({**st["runs"], **ex["runs"]})

        zero = _stage(out, "zero", args.resume, run_zero,
                      key=[ROUNDS, seeds, choice.fmh, choice.ditto_lambda, list(sweep_methods)])
        times["zero"] = zero["time"]
        zero_rows = with_extra(zero, "zero", lambda s: pima_federation(
            seed=s, heterogeneity=Heterogeneity.none()), seeds)
        payload["zero"] = zero
        sweep: dict[str, dict[str, dict[str, Any]]] = {}
        for knob in KNOBS:
            sweep[knob] = {"0": zero_rows}
            for lev in levels[1:]:
                het = Heterogeneity(**{knob: lev})

                def run_level(het: Heterogeneity = het, knob: str = knob, lev: float = lev):
                    runs = compare(lambda s: pima_federation(seed=s, heterogeneity=het),
                                   sweep_seeds, sweep_methods, label=f"{knob}={lev:g}",
                                   progress=progress)
                    return {"rows": summarise(runs), "runs": runs}
                st = _stage(out, f"sweep-{knob}-{lev:g}", args.resume, run_level,
                            key=[ROUNDS, sweep_seeds, choice.fmh, choice.ditto_lambda, list(sweep_methods)])
                times[f"sweep-{knob}-{lev:g}"] = st["time"]
                # finetune-select (7x the CPU) only where hospitals disagree on labels
                sweep[knob][f"{lev:g}"] = st["rows"] if knob != "label_convention" else with_extra(
                    st, f"{knob}-{lev:g}",
                    lambda s, het=het: pima_federation(seed=s, heterogeneity=het), sweep_seeds)
        payload["sweep"] = sweep
        md += [f"### Sweeps on Pima (level 0: {len(seeds)} seeds; other levels: "
               f"{len(sweep_seeds)} seeds)", "", *sweep_table(sweep)]
        plot(sweep, out / "sweep.png")

    if main_rows is not None and zero_rows is not None and worst is not None:
        g = goals(main_rows, zero_rows, worst)
        payload["goals"] = g
        md += ["### Goals", "", "| goal | measured | holds |", "|---|---|---|"]
        md += [f"| {x['goal']} | {x['measured']} | {'yes' if x['holds'] else '**no**'} |" for x in g]
        md.append("")

    if "synthetic" in stages:
        def synth(s: int) -> FederatedArrays:
            d = synthetic_federation(n_hospitals=20, patients_per_hospital=120,
                                     heterogeneity=Heterogeneity(0.8, 0.8, 0.8, 0.8), seed=s,
                                     test_size=1000)
            return hold_out_hospital_rows(d, fraction=0.5, seed=s)

        def run_synth() -> dict[str, Any]:
            runs = compare(synth, seeds, methods(choice, ablation=False), label="synthetic",
                           progress=progress, cpr=10)
            return {"rows": summarise(runs), "runs": runs}
        st = _stage(out, "synthetic", args.resume, run_synth,
                    key=[ROUNDS, seeds, choice.fmh, choice.ditto_lambda, list(methods(choice, ablation=False))])
        times["synthetic"] = st["time"]
        payload["synthetic"] = st
        md += ["### Synthetic, 20 hospitals, heterogeneity 0.8, half of each hospital's patients "
               f"held out as its own ({len(seeds)} seeds, 10 hospitals per round)", "",
               *table(st["rows"], hospitals=False), ""]

    wall = sum(t["wall_s"] for t in times.values())
    cpu = sum(t["cpu_s"] for t in times.values())
    payload["time"] = {"stages": times, "wall_s": wall, "cpu_s": cpu}
    md.append(f"Wall time {wall:.0f} s, CPU time {cpu:.0f} s over all stages (one torch thread; "
              "wall time on a shared machine).")
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
