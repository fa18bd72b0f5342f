"""Time the optimisation attack (TabularInversion, default settings) on one update from a
batch of 8 Pima records, against the goal of at most 10 seconds.

    PYTHONPATH=. python benchmarks/attack_speed.py [--repeats 3]

Each line: model, torch threads used by the attack, median wall time over the repeats, the
ratio to the 10 s goal, and the reconstruction's mean per-feature accuracy beside the
marginal baseline (tolerance 0.25 standardised units).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = pima_federation(seed=0)
    X, y = data.pooled()
    rows = np.random.default_rng(0).permutation(len(X))[:8]
    fed = FederatedArrays((ClientArrays(0, "hospital-0", X[rows], y[rows]),), data.X_test,
                          data.y_test, data.feature_names)
    prior = PriorKnowledge.from_public_data(data.X_test, data.y_test, feature_names=data.feature_names)
    print(f"{'model':<14}{'threads':>8}{'median s':>10}{'/ goal':>8}{'accuracy':>10}{'baseline':>10}")
    for hidden in ((128,), (16,)):
        spec = ModelSpec("mlp", n_features=7, hidden=hidden)
        run = run_federated(fed, strategy=FedAvg(learning_rate=0.1, batch_size=None), model=spec,
                            rounds=1, seed=0)
        obs = observe(run, adversary="server")
        for threads in (None, 1):
            times = []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                rec = TabularInversion(num_threads=threads).run(obs, prior, rng=np.random.default_rng(r))
                times.append(time.perf_counter() - t0)
            item = rec.items[0]
            s = score_reconstruction(item.X, item.y, X[rows], y[rows], prior=prior,
                                     rng=np.random.default_rng(0))
            med = statistics.median(times)
            print(f"{'mlp' + str(hidden):<14}{str(threads or 'default'):>8}{med:>10.2f}"
                  f"{med / GOAL_S:>8.2f}{s.attack.mean_feature_accuracy:>10.3f}"
                  f"{s.baseline.mean_feature_accuracy:>10.3f}")


if __name__ == "__main__":
    main()
