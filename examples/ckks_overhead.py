"""CKKS overhead against plaintext: what homomorphic aggregation costs, round by round.

Trains FedAvg on the three bundled Pima hospitals twice with the same seed, once over the
plain channel and once over the CKKS channel (hospitals encrypt their weighted updates; the
server adds ciphertexts with a public-only context and never holds the secret key), and
prints the median time per round (local training, encryption and aggregation), bytes per
round and the final accuracy of each.

    python examples/ckks_overhead.py [--rounds 15] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from defenses import RunContext, get_defense
from securefed import FedAvg, ModelSpec, run_federated
from securefed.data import pima_federation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: extra threads only contend

    data = pima_federation(seed=args.seed)
    spec = ModelSpec("logreg", n_features=data.num_features)
    rows = {}
    for name in ("none", "ckks"):
        strategy, channel = get_defense(name).build(
            FedAvg(), RunContext(num_clients=len(data.clients), rounds=args.rounds))
        run = run_federated(data, strategy=strategy, model=spec, rounds=args.rounds,
                            seed=args.seed, channel=channel, record_transcript=False)
        per_round = [sum(r.times.values()) - r.times.get("evaluation", 0.0) for r in run.history]
        channel_time = [r.times["channel"] for r in run.history]
        rows[name] = {
            "channel": run.channel,
            "seconds/round": float(np.median(per_round)),
            "channel s/round": float(np.median(channel_time)),
            "bytes up/round": float(np.mean([r.bytes_up for r in run.history])),
            "bytes down/round": float(np.mean([r.bytes_down for r in run.history])),
            "accuracy": run.final.test_accuracy,
            "params": run.final_params,
        }
    print(f"FedAvg, {len(data.clients)} hospitals, {args.rounds} rounds, "
          f"{spec.num_params()} parameters, seed {args.seed}")
    print(f"{'':18s}{'plain':>14s}{'ckks':>14s}{'ratio':>10s}")
    for key in ("seconds/round", "channel s/round", "bytes up/round", "bytes down/round",
                "accuracy"):
        a, b = rows["none"][key], rows["ckks"][key]
        ratio = b / a if a else float("nan")
        print(f"{key:18s}{a:14.4g}{b:14.4g}{ratio:10.1f}")
    gap = float(np.max(np.abs(rows["none"]["params"] - rows["ckks"]["params"])))
    print(f"largest parameter difference plain vs ckks after {args.rounds} rounds: {gap:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
