"""A DP epsilon sweep against membership inference: how much noise does it take?

Three hospitals train a deliberately over-parameterised MLP for many local epochs (so that
it memorises its training patients), without DP and then with central client-level DP
(DP-FedAvg: clipping plus Gaussian noise on the sum) at several noise multipliers.  For each
run the example prints epsilon (dp-accounting, RDP, at delta = 1e-5), test accuracy, and a
loss-threshold membership attack (``attacks.LossThreshold``, from logits) on the released
model: its AUC and advantage at telling the training patients from non-members drawn from the
same pool (Pima.tr and Pima.te together, split at random in half), beside the exact largest
advantage the DP mechanism allows for one patient, from its privacy-loss distribution
(``evaluation.scoring.dp_advantage_bound_pld``).

    python examples/dp_sweep_membership.py [--rounds 20] [--noise 0.5 1 2 4]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from attacks import LossThreshold
from defenses import RunContext, get_defense
from evaluation.scoring import dp_advantage_bound_pld, score_membership
from securefed import FedAvg, ModelSpec, run_federated
from securefed.arrays import ClientArrays, FederatedArrays
from securefed.data import pima_federation
from securefed.observation import PriorKnowledge, observe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: extra threads only contend

    base = pima_federation(seed=args.seed)
    spec = ModelSpec("mlp", n_features=base.num_features, hidden=(128, 64))
    prior = PriorKnowledge.from_public_data(base.X_test, base.y_test,
                                            feature_names=base.feature_names, model=spec)
    # members and non-members from the same pool (Pima.tr and Pima.te together): a random
    # half trains the model, dealt among 3 hospitals; the other half are the non-members
    Xp, yp = base.pooled()
    pool_X = np.concatenate([Xp, base.X_test])
    pool_y = np.concatenate([yp, base.y_test])
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(pool_X))
    half = len(order) // 2
    parts = np.array_split(order[:half], 3)
    data = FederatedArrays(tuple(ClientArrays(i, f"hospital-{i}", pool_X[p], pool_y[p])
                                 for i, p in enumerate(parts)),
                           pool_X[order[half:]], pool_y[order[half:]], base.feature_names)
    X, y = pool_X, pool_y
    member = np.zeros(len(pool_X), bool)
    member[order[:half]] = True
    ym = pool_y[member]
    pick = np.flatnonzero(~member)

    settings = [("none", {})] + [("dp-central", {"noise_multiplier": z,
                                                 "clip_norm": args.clip_norm})
                                 for z in args.noise]
    print(f"MLP {spec.hidden}, 3 hospitals, {args.rounds} rounds of 5 local epochs; "
          f"{len(ym)} members vs {len(pick)} non-members")
    print(f"{'defense':12s}{'noise z':>8s}{'epsilon':>10s}{'accuracy':>10s}{'MIA AUC':>9s}"
          f"{'advantage':>11s}{'DP bound':>10s}")
    for name, params in settings:
        strategy, channel = get_defense(name, **params).build(
            FedAvg(learning_rate=0.05, local_epochs=5, batch_size=8),
            RunContext(num_clients=len(data.clients), rounds=args.rounds))
        run = run_federated(data, strategy=strategy, model=spec, rounds=args.rounds,
                            seed=args.seed, channel=channel, record_transcript=False)
        eps = run.final.extra.get("epsilon")
        obs = observe(run, adversary="outsider")
        scores = LossThreshold().run(obs, prior, rng=rng, candidates_X=X, candidates_y=y)
        s = score_membership(scores, member)
        z = params.get("noise_multiplier", 0.0)
        # the exact bound for one patient in or out of a hospital (multiplier z/2 per round)
        bound = "-" if not z else f"{dp_advantage_bound_pld(noise_multiplier=z / 2, rounds=args.rounds):.3f}"
        eps_s = "inf" if eps is None else f"{eps:.2f}"
        print(f"{name:12s}{z:8.2f}{eps_s:>10s}{run.final.test_accuracy:10.3f}{s.auc:9.3f}"
              f"{s.advantage:11.3f}{bound:>10s}")
    print("AUC 0.5 and advantage 0 mean the attack cannot tell members from non-members; "
          "DP bound: the exact largest advantage any attack can have (privacy-loss distribution)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
