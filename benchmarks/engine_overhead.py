"""Engine overhead: a round of 10 clients with a d ~ 10,000-parameter model.

Measures, in one run, the clients' own local-training time and everything else the engine
does in a round (update processing and encoding, the channel's serialisation and
aggregation, the server update, evaluation, book-keeping), and prints their ratio.
Goal: the engine adds under 10% to the clients' training time.

    python benchmarks/engine_overhead.py [--rounds 20] [--rows 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from securefed.federated import ClientArrays, FedAvg, FederatedArrays, run_federated
from securefed.models import ModelSpec


def make_data(n_clients: int, rows: int, n_features: int, seed: int) -> FederatedArrays:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=n_features)
    clients = []
    for k in range(n_clients):
        X = rng.normal(size=(rows, n_features)).astype(np.float32)
        y = (X @ w + rng.normal(size=rows) > 0).astype(np.float32)
        clients.append(ClientArrays(client_id=k, name=f"hospital-{k}", X=X, y=y))
    Xt = rng.normal(size=(1000, n_features)).astype(np.float32)
    yt = (Xt @ w > 0).astype(np.float32)
    return FederatedArrays(clients=tuple(clients), X_test=Xt, y_test=yt,
                           feature_names=tuple(f"x{i}" for i in range(n_features)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rows", type=int, default=200, help="training rows per client")
    ap.add_argument("--clients", type=int, default=10)
    args = ap.parse_args()
    n_features = 20
    spec = ModelSpec("mlp", n_features=n_features, hidden=(128, 64))
    data = make_data(args.clients, args.rows, n_features, seed=0)
    t0 = time.perf_counter()
    res = run_federated(data, strategy=FedAvg(learning_rate=0.05, batch_size=32), model=spec,
                        rounds=args.rounds, seed=0, record_transcript=True)
    wall = time.perf_counter() - t0
    train = sum(r.times["local_training"] for r in res.history)
    engine = wall - train
    print(f"model parameters d = {spec.num_params()}, clients = {args.clients}, rows/client = "
          f"{args.rows}, rounds = {args.rounds}")
    print(f"clients' local training : {train:8.3f} s")
    print(f"engine (everything else): {engine:8.3f} s")
    for phase in ("client_processing", "channel", "server_update", "evaluation"):
        print(f"  of which {phase:16s}: {sum(r.times[phase] for r in res.history):8.3f} s")
    print(f"ratio engine / training  : {engine / train:8.3f}   (goal < 0.10)")


if __name__ == "__main__":
    main()
