"""Time the optimisation attack (TabularInversion) on one update from a batch of Pima
records, and check that its default budget has converged.

    PYTHONPATH=. python benchmarks/attack_speed.py [--seeds 3] [--batch 8]

For each budget (restarts x Adam steps): the median CPU and wall seconds over the seeds,
the ratio of the median wall time to the 10 s goal, and the reconstruction's mean
per-feature accuracy (mean over seeds, tolerance 0.25 standardised units) beside the prior
guess.  The default budget (30 x 1,500, with an early stop once the update is explained
to float precision) has converged when doubling both restarts and steps changes the mean
accuracy by less than the spread between seeds; the old default (8 x 400) is shown for
comparison.  MLP 7-128-1, one full-batch FedSGD step, one torch thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from attacks import TabularInversion
from evaluation.scoring import score_reconstruction
from securefed import FedAvg, ModelSpec, run_federated
from securefed.arrays import ClientArrays, FederatedArrays
from securefed.data import pima_federation
from securefed.observation import PriorKnowledge, observe

GOAL_S = 10.0
BUDGETS = ((8, 400), (30, 1500), (60, 3000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    data = pima_federation(seed=0)
    X, y = data.pooled()
    prior = PriorKnowledge.from_public_data(data.X_test, data.y_test, feature_names=data.feature_names)
    spec = ModelSpec("mlp", n_features=7, hidden=(128,))
    print(f"batch {args.batch}, {args.seeds} seeds")
    print(f"{'budget':<12}{'CPU s':>8}{'wall s':>8}{'/ goal':>8}{'accuracy':>10}{'sd':>7}{'baseline':>10}")
    for restarts, steps in BUDGETS:
        cpu, wall, acc, base = [], [], [], []
        for s in range(args.seeds):
            rows = np.random.default_rng(s).permutation(len(X))[: args.batch]
            fed = FederatedArrays((ClientArrays(0, "clinic", X[rows], y[rows]),), data.X_test,
                                  data.y_test, data.feature_names)
            run = run_federated(fed, strategy=FedAvg(learning_rate=0.1, batch_size=None),
                                model=spec, rounds=1, seed=s)
            obs = observe(run, adversary="server")
            t0, c0 = time.perf_counter(), time.process_time()
            rec = TabularInversion(restarts=restarts, iterations=steps).run(
                obs, prior, rng=np.random.default_rng(s)).items[0]
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            sc = score_reconstruction(rec.X, rec.y, X[rows], y[rows], prior=prior,
                                      rng=np.random.default_rng(0))
            acc.append(sc.attack.mean_feature_accuracy)
            base.append(sc.baseline.mean_feature_accuracy)
        med = statistics.median(wall)
        print(f"{f'{restarts} x {steps}':<12}{statistics.median(cpu):>8.2f}{med:>8.2f}"
              f"{med / GOAL_S:>8.2f}{np.mean(acc):>10.3f}{np.std(acc, ddof=1) if len(acc) > 1 else 0:>7.3f}"
              f"{np.mean(base):>10.3f}", flush=True)


if __name__ == "__main__":
    main()
