"""Time of a deployed run on Flower (real processes, loopback, TLS) beside the simulation.

    python benchmarks/flower_deployment.py --rounds 2 --channel plain --channel secagg

Starts one local cluster (SuperLink + N SuperNodes, TLS), runs each channel for the given
number of rounds, and prints per run: wall time, seconds per round, and the largest
difference of the final model from the in-process simulation with the same seed, next to
the simulation's own wall time.  Needs ``pip install 'securefed[flower]'``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from securefed.data import pima_federation
from securefed.federated import run_federated
from securefed.flower import APP_DIR
from securefed.flower.cluster import LocalCluster
from securefed.flower.settings import app_run_config, build_model, build_strategy
from securefed.flower.tls import write_tls_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--channel", action="append", choices=["plain", "secagg"])
    parser.add_argument("--strategy", default="fedavg")
    args = parser.parse_args()
    channels = args.channel or ["plain", "secagg"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_tls_files(work / "tls")
        nodes = [{"partition-id": i, "num-partitions": args.nodes} for i in range(args.nodes)]
        t0 = time.perf_counter()
        with LocalCluster(work / "cluster", node_configs=nodes, tls_dir=work / "tls") as cluster:
            print(f"cluster of {args.nodes} SuperNodes ready in {time.perf_counter() - t0:.1f} s")
            for channel in channels:
                overrides = {"num-rounds": args.rounds, "num-clients": args.nodes,
                             "channel": channel, "strategy": args.strategy, "seed": 0}
                result = work / f"{channel}.json"
                out = cluster.run_app(APP_DIR, run_config={**overrides, "result-path": str(result)},
                                      done_file=result, timeout=1800)
                summary = json.loads(result.read_text())
                cfg = app_run_config(overrides)
                channel_obj = None
                if channel == "secagg":
                    from securefed.flower.secagg_stages import build_secagg_channel

                    channel_obj = build_secagg_channel(cfg)
                s0 = time.perf_counter()
                sim = run_federated(pima_federation(seed=0, n_hospitals=args.nodes),
                                    strategy=build_strategy(cfg), model=build_model(cfg),
                                    rounds=args.rounds, seed=0, channel=channel_obj)
                sim_s = time.perf_counter() - s0
                diff = float(np.max(np.abs(np.asarray(summary["final_params"]) - sim.final_params)))
                per_round = [round(r["seconds"], 1) for r in summary["rounds"]]
                print(f"{channel:7s} {out.status:20s} deployed {out.seconds:7.1f} s "
                      f"(rounds {per_round} s)  simulated {sim_s:6.2f} s  "
                      f"ratio {out.seconds / sim_s:7.0f}x  max |w_deployed - w_simulated| = {diff:.2e}")


if __name__ == "__main__":
    main()
