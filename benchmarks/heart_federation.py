"""FedMedHeter (library defaults) against pooled logistic regression on the bundled UCI Heart
Disease federation: four real centres, each hospital's own 30% as its test set.

Every figure of the "FedMedHeter on a federation it was not developed on" table in
``docs/data.md`` comes from this script.  It runs, on the split of
``securefed/data/resources/heart/federation/federation.toml``:

1. FedMedHeter with its library defaults and centralised training (the pooled rows, the
   same logistic model, SGD at lr 0.1), 30 rounds each, for ``--seeds`` seeds: exactly what
   ``securefed train --data <federation.toml> --algorithm fedmedheter|centralized --seed S``
   does;
2. scikit-learn's logistic regression on the pooled standardised training rows (L2 with
   C = 1, and practically unpenalised, C = 1e6), solved to convergence: the reference a
   statistician would fit;
3. where the gap comes from: FedMedHeter with one component switched off at a time, and
   with 100 rounds, on the first three seeds.

    python benchmarks/heart_federation.py            # about 6 minutes of CPU time (372 s measured)
    python benchmarks/heart_federation.py --seeds 2 --no-ablation

Prints the tables; CPU time beside wall time (the machine may be shared).
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-ablation", action="store_true")
    args = ap.parse_args(argv)

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from securefed import ModelSpec, run_algorithm
    from securefed.data.heart import heart_hospitals

    warnings.simplefilter("ignore")
    t0, c0 = time.perf_counter(), time.process_time()
    data = heart_hospitals().prepare()
    spec = ModelSpec("logreg", n_features=data.num_features)
    print(data.description)

    rows = {}
    for algorithm in ("fedmedheter", "centralized"):
        runs = [run_algorithm(data, algorithm, model=spec, rounds=30, seed=s) for s in range(args.seeds)]
        rows[algorithm] = runs
    print("\n| seed | FedMedHeter accuracy | pooled (centralized) accuracy | gap (points) | "
          "FedMedHeter AUC | pooled AUC |")
    print("|---:|---:|---:|---:|---:|---:|")
    for s in range(args.seeds):
        f, c = rows["fedmedheter"][s].final, rows["centralized"][s].final
        print(f"| {s} | {f.test_accuracy:.4f} | {c.test_accuracy:.4f} | "
              f"{100 * (c.test_accuracy - f.test_accuracy):+.2f} | {f.test_auc:.4f} | {c.test_auc:.4f} |")
    fa = np.array([r.final.test_accuracy for r in rows["fedmedheter"]])
    ca = np.array([r.final.test_accuracy for r in rows["centralized"]])
    fu = np.array([r.final.test_auc for r in rows["fedmedheter"]])
    cu = np.array([r.final.test_auc for r in rows["centralized"]])
    print(f"| mean | {fa.mean():.4f} | {ca.mean():.4f} | {100 * (ca - fa).mean():+.2f} | "
          f"{fu.mean():.4f} | {cu.mean():.4f} |")
    print("\nper hospital (mean accuracy over seeds, own test patients):")
    for name in rows["fedmedheter"][0].final.per_hospital:
        f = np.mean([r.final.per_hospital[name]["accuracy"] for r in rows["fedmedheter"]])
        c = np.mean([r.final.per_hospital[name]["accuracy"] for r in rows["centralized"]])
        n = int(rows["fedmedheter"][0].final.per_hospital[name]["n"])
        print(f"  {name:14s} n={n:3d}  FedMedHeter {f:.3f}  pooled {c:.3f}")

    X, y = data.pooled()
    for C in (1.0, 1e6):
        m = LogisticRegression(C=C, max_iter=10_000).fit(X, y)
        acc = float((m.predict(data.X_test) == data.y_test).mean())
        auc = float(roc_auc_score(data.y_test, m.decision_function(data.X_test)))
        print(f"scikit-learn pooled logistic regression, C={C:g}: accuracy {acc:.4f}, AUC {auc:.4f}")
    n = len(data.y_test)
    se = np.sqrt(ca.mean() * (1 - ca.mean()) / n)
    print(f"one test patient = {100 / n:.2f} points; binomial standard error of an accuracy "
          f"near {ca.mean():.2f} on {n} patients: {100 * se:.1f} points")

    if not args.no_ablation:
        seeds = range(min(3, args.seeds))
        variants = {"defaults": {}, "client_weighting='samples'": {"client_weighting": "samples"},
                    "compression=None": {"compression": None}, "adaptive_lr=None": {"adaptive_lr": None}}
        print("\n| FedMedHeter variant (30 rounds) | accuracy | AUC |")
        print("|---|---:|---:|")
        for name, kw in variants.items():
            rs = [run_algorithm(data, "fedmedheter", model=spec, rounds=30, seed=s, **kw) for s in seeds]
            print(f"| {name} | {np.mean([r.final.test_accuracy for r in rs]):.4f} | "
                  f"{np.mean([r.final.test_auc for r in rs]):.4f} |")
        for algorithm in ("fedmedheter", "centralized"):
            rs = [run_algorithm(data, algorithm, model=spec, rounds=100, seed=s) for s in seeds]
            print(f"| {algorithm}, 100 rounds | {np.mean([r.final.test_accuracy for r in rs]):.4f} | "
                  f"{np.mean([r.final.test_auc for r in rs]):.4f} |")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\nwall {time.perf_counter() - t0:.0f} s, CPU {time.process_time() - c0:.0f} s "
          f"(user {ru.ru_utime:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
