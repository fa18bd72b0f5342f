"""Accuracy against epsilon on the Pima hospitals: central, local and distributed DP.

For each noise multiplier ``z`` and each mechanism, FedAvg (logistic regression) is trained
on the three Pima hospitals for ``--rounds`` rounds with client-level clipping ``C``, over
``--seeds`` seeds (the seed drives both the hospital split and the run).  The epsilon of
each cell comes from the run's own accountant (dp-accounting RDP, delta = 1e-5); the
accuracy is on Pima.te.  A non-private FedAvg run per seed gives the reference.

Writes ``dp_accuracy_vs_epsilon.csv`` / ``.md`` (table) and ``.png`` (plot) under ``--out``.

    python benchmarks/dp_accuracy_vs_epsilon.py            # full: 10 seeds, 6 noise levels
    python benchmarks/dp_accuracy_vs_epsilon.py --quick    # 2 seeds, 3 levels, 8 rounds

Distributed DP runs under ``securefed.secagg.SecAggChannel``; if that package is not
installed the mechanism is reported as unavailable rather than silently replaced.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MECHANISMS = ("central", "local", "distributed")


def _one(job: tuple[str, float | None, int, int, float]) -> dict:
    import torch

    torch.set_num_threads(1)
    from securefed import FedAvg, ModelSpec, run_federated
    from securefed.data import pima_federation
    from securefed.dp import make_dp_strategy
    from securefed.secagg import secagg_channel_for

    mechanism, z, seed, rounds, clip_norm = job
    data = pima_federation(seed=seed)
    spec = ModelSpec("logreg", n_features=data.num_features)
    t0 = time.perf_counter()
    if mechanism == "none":
        res = run_federated(data, strategy=FedAvg(), model=spec, rounds=rounds, seed=seed,
                            record_transcript=False)
        eps = float("inf")
    else:
        dp = make_dp_strategy(mechanism, FedAvg(), clip_norm=clip_norm, noise_multiplier=z,
                              delta=1e-5)
        channel = secagg_channel_for(dp) if mechanism == "distributed" else None
        res = run_federated(data, strategy=dp, channel=channel, model=spec, rounds=rounds,
                            seed=seed, record_transcript=False)
        eps = float(res.final.extra["epsilon"])
    return {"mechanism": mechanism, "noise_multiplier": z, "seed": seed,
            "accuracy": res.final.test_accuracy, "auc": res.final.test_auc, "epsilon": eps,
            "seconds": time.perf_counter() - t0}


def _audit(args: argparse.Namespace) -> int:
    """Accountant (upper) and one-run audit (lower) side by side."""
    import resource

    import torch

    torch.set_num_threads(1)
    from securefed import FedAvg, ModelSpec, run_federated
    from securefed.data import pima_federation
    from securefed.dp import audit_one_run, make_dp_strategy, privacy_report
    from securefed.secagg import secagg_channel_for

    data = pima_federation(seed=0)
    spec = ModelSpec("logreg", n_features=data.num_features)
    lines = [
        f"One-run audit (Steinke, Nasr and Jagielski 2023), {args.audit_canaries} canary "
        f"hospitals, {args.audit_rounds} rounds, clip norm {args.audit_clip}, delta = 1e-5, "
        "95% confidence; accountant: dp-accounting RDP.  Hospital-level epsilon: add/remove "
        "one hospital (central, distributed), replace-one (local).",
        "",
        "| mechanism | z | accountant epsilon (hospital) | audit lower bound | guesses (correct) "
        "| patient-level epsilon | if 1 / 2 hospitals collude with the server | seconds (CPU) |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for z in args.audit_noise:
        for mech in MECHANISMS:
            t0, c0 = time.perf_counter(), time.process_time()
            audit = audit_one_run(mech, clip_norm=args.audit_clip, noise_multiplier=z,
                                  rounds=args.audit_rounds, canaries=args.audit_canaries)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # the same setting on the three Pima hospitals: the epsilons a real run reports
            dp = make_dp_strategy(mech, FedAvg(), clip_norm=args.audit_clip, noise_multiplier=z)
            channel = secagg_channel_for(dp) if mech == "distributed" else None
            run = run_federated(data, strategy=dp, channel=channel, model=spec,
                                rounds=args.audit_rounds, seed=0, record_transcript=False)
            rep = privacy_report(run)
            assert rep is not None
            assert abs(rep.client.epsilon - audit.upper.epsilon) < 1e-6 * rep.client.epsilon
            coll = (" / ".join(f"{s.epsilon:.2f}" for s in rep.collusion) if rep.collusion
                    else ("∞ (server trusted)" if mech == "central" else "unchanged"))
            lines.append(
                f"| {mech} | {z:g} | {audit.upper.epsilon:.2f} ({audit.upper.neighbouring}) "
                f"| {audit.epsilon_lower:.2f} | {audit.guesses} ({audit.correct}) "
                f"| {rep.record.epsilon:.2f} | {coll} | {wall:.1f} ({cpu:.1f}) |")
            print(lines[-1], flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += ["", f"Peak memory {peak:.0f} MiB; {os.cpu_count()} CPU(s), shared machine "
              "(wall time inflated by other work; CPU time in brackets)."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dp_audit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, 3 noise levels, 8 rounds")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clip-norm", type=float, default=0.2)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--audit", action="store_true",
                    help="accountant epsilon beside a one-run audit's lower bound")
    ap.add_argument("--audit-canaries", type=int, default=1000)
    ap.add_argument("--audit-rounds", type=int, default=20)
    ap.add_argument("--audit-clip", type=float, default=0.5)
    ap.add_argument("--audit-noise", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    args = ap.parse_args(argv)
    if args.audit:
        return _audit(args)
    if args.quick:
        args.seeds, args.rounds, args.noise = 2, 8, [1.0, 4.0, 16.0]
    mechanisms = list(MECHANISMS)
    missing = sorted(set(MECHANISMS) - set(mechanisms))
    jobs: list[tuple[str, float | None, int, int, float]] = [
        ("none", None, s, args.rounds, args.clip_norm) for s in range(args.seeds)]
    jobs += [(m, z, s, args.rounds, args.clip_norm)
             for m in mechanisms for z in args.noise for s in range(args.seeds)]
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(tqdm(pool.map(_one, jobs), total=len(jobs), desc="runs"))
    else:
        rows = [_one(j) for j in tqdm(jobs, desc="runs")]
    wall = time.perf_counter() - t0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "dp_accuracy_vs_epsilon" + ("_quick" if args.quick else "")
    with open(out / f"{stem}_runs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    def cells():
        keys = [("none", None)] + [(m, z) for m in mechanisms for z in args.noise]
        for m, z in keys:
            sel = [r for r in rows if r["mechanism"] == m and r["noise_multiplier"] == z]
            acc = [r["accuracy"] for r in sel]
            yield {"mechanism": m, "noise_multiplier": z, "epsilon": sel[0]["epsilon"],
                   "acc_mean": statistics.fmean(acc),
                   "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                   "auc_mean": statistics.fmean(r["auc"] for r in sel), "n": len(sel)}

    summary = list(cells())
    lines = [
        f"Pima hospitals (3), FedAvg logistic regression, {args.rounds} rounds, clip norm "
        f"C = {args.clip_norm}, delta = 1e-5, {args.seeds} seeds; accuracy on Pima.te "
        f"(mean ± std over seeds).",
        "",
        "| mechanism | z | epsilon | accuracy | AUC |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in summary:
        zs = "-" if c["noise_multiplier"] is None else f"{c['noise_multiplier']:g}"
        es = "∞ (no DP)" if c["epsilon"] == float("inf") else f"{c['epsilon']:.2f}"
        lines.append(f"| {c['mechanism']} | {zs} | {es} | {c['acc_mean']:.3f} ± {c['acc_std']:.3f} "
                     f"| {c['auc_mean']:.3f} |")
    if missing:
        lines += ["", f"Not run: {', '.join(missing)} (securefed.secagg is not installed)."]
    lines += ["", f"{len(jobs)} runs in {wall:.0f} s with {args.workers} worker(s) "
              f"on {os.cpu_count()} CPU(s)."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    base = summary[0]
    ax.axhspan(base["acc_mean"] - base["acc_std"], base["acc_mean"] + base["acc_std"],
               color="0.85", label=f"no DP ({base['acc_mean']:.3f})")
    markers = {"central": "o", "local": "s", "distributed": "^"}
    for m in mechanisms:
        cs = [c for c in summary if c["mechanism"] == m]
        ax.errorbar([c["epsilon"] for c in cs], [c["acc_mean"] for c in cs],
                    yerr=[c["acc_std"] for c in cs], marker=markers[m], capsize=3, label=m)
    from securefed.data import pima_federation

    y_test = pima_federation(seed=0).y_test
    majority = float(max(y_test.mean(), 1.0 - y_test.mean()))
    ax.axhline(majority, color="0.4", ls=":", lw=1, label=f"majority class ({majority:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon at delta = 1e-5 (log scale)")
    ax.set_ylabel("test accuracy (Pima.te)")
    ax.set_title(f"Client-level DP on 3 Pima hospitals, {args.rounds} rounds, C = {args.clip_norm}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=130)
    print(out / f"{stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
