"""Model inversion against DP: does the released model give away a patient's glucose?

An attacker who knows a training patient's other features and diagnosis, and holds the
released model's parameters, searches for the plasma-glucose value that best explains the
diagnosis (white-box attribute inference after Fredrikson et al. 2014,
``attacks.AttributeInferenceWhiteBox``).  The example trains the same over-parameterised MLP
without DP and with central client-level DP at two noise levels, and scores the attack on
60 training patients beside the public-median guess: the share of guesses within the
scorer's tolerance of the truth, and the mean absolute error (standardised units).

    python examples/model_inversion_vs_dp.py [--rounds 20] [--noise 1 4]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from attacks import AttributeInferenceWhiteBox
from defenses import RunContext, get_defense
from evaluation.scoring import score_attribute
from securefed import FedAvg, ModelSpec, run_federated
from securefed.data import pima_federation
from securefed.observation import PriorKnowledge, observe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--noise", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--targets", type=int, default=60)
    parser.add_argument("--feature", default="glu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: extra threads only contend

    data = pima_federation(seed=args.seed)
    spec = ModelSpec("mlp", n_features=data.num_features, hidden=(128, 64))
    prior = PriorKnowledge.from_public_data(data.X_test, data.y_test,
                                            feature_names=data.feature_names, model=spec)
    col = prior.feature(args.feature).columns[0]
    X, y = data.pooled()
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(y), size=min(args.targets, len(y)), replace=False)
    truth = X[idx, col].astype(np.float64)
    known = X[idx].astype(np.float64)
    known[:, col] = 0.0  # the attacker does not know it
    attack = AttributeInferenceWhiteBox(feature=args.feature)

    print(f"attribute: {args.feature}; {len(idx)} target training patients; MLP {spec.hidden}")
    print(f"{'defense':12s}{'noise z':>8s}{'epsilon':>9s}{'accuracy':>10s}{'attack acc.':>12s}"
          f"{'baseline':>10s}{'MAE':>7s}{'base MAE':>10s}")
    settings = [("none", {})] + [("dp-central", {"noise_multiplier": z, "clip_norm": 1.0})
                                 for z in args.noise]
    for name, params in settings:
        strategy, channel = get_defense(name, **params).build(
            FedAvg(learning_rate=0.05, local_epochs=5, batch_size=8),
            RunContext(num_clients=len(data.clients), rounds=args.rounds))
        run = run_federated(data, strategy=strategy, model=spec, rounds=args.rounds,
                            seed=args.seed, channel=channel, record_transcript=False)
        guess = attack.run(observe(run, adversary="outsider"), prior, rng=rng,
                           targets_X=known, targets_y=y[idx])
        s = score_attribute(guess, truth, prior=prior)
        eps = run.final.extra.get("epsilon")
        eps_s = "inf" if eps is None else f"{eps:.1f}"
        print(f"{name:12s}{params.get('noise_multiplier', 0.0):8.2f}{eps_s:>9s}"
              f"{run.final.test_accuracy:10.3f}{s.accuracy:12.3f}{s.baseline_accuracy:10.3f}"
              f"{s.mae:7.3f}{s.baseline_mae:10.3f}")
    print("attack acc.: share of guesses within the tolerance of the true value; baseline: the "
          "public median for everyone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
