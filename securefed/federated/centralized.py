"""The centralised baseline: the same model trained on the pooled rows of all hospitals.

Budget: one "round" is ``local_epochs`` epochs over the pooled data with the same learning
rate and batch size as the federated clients, so the number of passes over every patient
per round matches FedAvg's.  The only bytes are the rows themselves, shipped once (counted
in round 0 with the real serialised size): that is the privacy cost federated learning avoids.
The pooled model is also evaluated on each hospital's own test patients (``per_hospital``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from securefed.arrays import ClientArrays, FederatedArrays
from securefed.errors import ConfigurationError
from securefed.federated.engine import ProgressCallback, evaluate, evaluate_per_hospital
from securefed.federated.strategy import train_local
from securefed.federated.types import LocalConfig, RoundRecord, RunResult
from securefed.models import ModelSpec, get_flat_params
from securefed.wire import pack

__all__ = ["run_centralized"]


def run_centralized(
    data: FederatedArrays,
    *,
    model: ModelSpec,
    rounds: int,
    seed: int = 0,
    learning_rate: float = 0.1,
    local_epochs: int = 1,
    batch_size: int | None = 16,
    progress: bool | ProgressCallback = False,
) -> RunResult:
    """Train ``model`` on all training rows pooled at one server; history per round.

    Evaluated like a federated run: on the union test set every round, and on each
    hospital's own test patients where it has some (``RoundRecord.per_hospital``).  Also
    reachable as ``run_algorithm(data, "centralized", ...)`` and ``securefed train
    --algorithm centralized``.
    """
    if rounds < 1:
        raise ConfigurationError(f"rounds must be >= 1, got {rounds}")
    X, y = data.pooled()
    pooled = ClientArrays(client_id=0, name="pooled", X=X, y=y)
    root = np.random.SeedSequence(seed)
    init_seq, train_seq = root.spawn(2)
    rng = np.random.default_rng(train_seq)
    net = model.build(seed=int(init_seq.generate_state(1)[0]))
    params = get_flat_params(net)
    config = LocalConfig(learning_rate=learning_rate, local_epochs=local_epochs, batch_size=batch_size)
    opt = torch.optim.SGD(net.parameters(), lr=learning_rate)
    upload_bytes = sum(len(pack({"X": c.X, "y": c.y})) for c in data.clients)
    history: list[RoundRecord] = []
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds, desc="centralized", unit="round")
    try:
        for r in range(rounds):
            t0 = time.perf_counter()
            local = train_local(net, pooled, params, config, rng=rng, optimizer=opt)
            params = params + local.update
            t1 = time.perf_counter()
            loss, acc, auc = evaluate(net, data.X_test, data.y_test)
            per_hospital = evaluate_per_hospital(net, data)
            t2 = time.perf_counter()
            rec = RoundRecord(
                round_index=r, train_loss=local.train_loss, test_loss=loss, test_accuracy=acc,
                test_auc=auc, bytes_up=upload_bytes if r == 0 else 0, bytes_down=0,
                times={"local_training": t1 - t0, "evaluation": t2 - t1},
                num_selected=1, num_contributors=1, per_hospital=per_hospital,
            )
            history.append(rec)
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(rec)
    finally:
        if bar is not None:
            bar.close()
    return RunResult(
        algorithm="centralized", channel="none", model=model, seed=seed, history=tuple(history),
        final_params=params.copy(), transcript=None,
        settings={"rounds": rounds, "learning_rate": learning_rate, "local_epochs": local_epochs,
                  "batch_size": batch_size},
    )
