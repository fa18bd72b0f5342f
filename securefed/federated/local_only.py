"""The local-only baseline: every hospital trains its own model on its own rows, nothing shared.

What personalisation has to beat for a hospital that could go it alone
(:mod:`securefed.federated.personal`).  Each hospital is evaluated on its own test patients
(``RoundRecord.per_hospital``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from securefed.arrays import FederatedArrays
from securefed.errors import ConfigurationError
from securefed.federated.engine import ProgressCallback, evaluate, evaluate_per_hospital
from securefed.federated.round import seed_streams
from securefed.federated.strategy import train_local
from securefed.federated.types import LocalConfig, RoundRecord, RunResult
from securefed.models import ModelSpec, get_flat_params, set_flat_params

__all__ = ["run_local_only"]


def run_local_only(
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
    """Every hospital trains its own model on its own rows only; nothing is shared.

    The baseline personalisation must beat for the hospitals that could go it alone.  Each
    hospital starts from the same initial model (from ``seed``, as the federated runs do) and
    one "round" is ``local_epochs`` epochs of its own mini-batch SGD.  ``per_hospital`` holds
    each hospital's own model on its own test patients; ``test_*`` is the mean over
    hospitals of each hospital's model on the pooled test set (there is no single model, so
    ``final_params`` is empty).
    """
    if rounds < 1:
        raise ConfigurationError(f"rounds must be >= 1, got {rounds}")
    streams = seed_streams(seed, len(data.clients))
    net = model.build(seed=streams.init_seed)
    init = get_flat_params(net)
    rngs = [streams.client_rng(i) for i in range(len(data.clients))]
    params = [init.copy() for _ in data.clients]
    config = LocalConfig(learning_rate=learning_rate, local_epochs=local_epochs, batch_size=batch_size)
    history: list[RoundRecord] = []
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds, desc="local-only", unit="round")
    try:
        for r in range(rounds):
            t0 = time.perf_counter()
            losses = []
            for i, client in enumerate(data.clients):
                set_flat_params(net, params[i])
                opt = torch.optim.SGD(net.parameters(), lr=learning_rate)
                local = train_local(net, client, params[i], config, rng=rngs[i], optimizer=opt)
                params[i] = params[i] + local.update
                losses.append(local.train_loss)
            t1 = time.perf_counter()
            pooled = []
            for p in params:
                set_flat_params(net, p)
                pooled.append(evaluate(net, data.X_test, data.y_test))
            per = evaluate_per_hospital(net, data, personal=lambda c: params[c.client_id])
            t2 = time.perf_counter()
            loss, acc, auc = (float(np.mean([m[j] for m in pooled])) for j in range(3))
            rec = RoundRecord(
                round_index=r, train_loss=float(np.mean(losses)), test_loss=loss,
                test_accuracy=acc, test_auc=auc, bytes_up=0, bytes_down=0,
                times={"local_training": t1 - t0, "evaluation": t2 - t1},
                num_selected=len(data.clients), num_contributors=0, per_hospital=per)
            history.append(rec)
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(rec)
    finally:
        if bar is not None:
            bar.close()
    return RunResult(
        algorithm="local-only", channel="none", model=model, seed=seed, history=tuple(history),
        final_params=np.zeros(0), transcript=None,
        settings={"rounds": rounds, "learning_rate": learning_rate, "local_epochs": local_epochs,
                  "batch_size": batch_size, "num_clients": len(data.clients)})
