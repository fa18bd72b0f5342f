"""End-to-end deployment on Flower: a SuperLink and SuperNodes as real processes on 127.0.0.1.

These tests start real processes with TLS (certificates from securefed.flower.tls) and
compare the deployed run's final model with the in-process simulation's, same seed.
They are slow by nature (a fresh ClientApp process per message), so they use few rounds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from securefed.data import pima_federation  # noqa: E402
from securefed.federated import run_federated  # noqa: E402
from securefed.flower import APP_DIR  # noqa: E402
from securefed.flower.cluster import ClusterError, LocalCluster, _alive  # noqa: E402
from securefed.flower.settings import build_model, build_strategy  # noqa: E402
from securefed.flower.tls import write_tls_files  # noqa: E402

pytestmark = pytest.mark.slow

# The defaults of the app's pyproject.toml, which a run's --run-config overrides.
APP_DEFAULTS = {
    "strategy": "fedavg", "learning-rate": 0.1, "local-epochs": 1, "batch-size": 16,
    "server-learning-rate": 1.0, "proximal-mu": 0.0, "model": "logreg", "hidden": "",
    "num-features": 7,
}


def simulate(run_config: dict, *, rounds: int, seed: int, n: int = 3):
    cfg = {**APP_DEFAULTS, **run_config}
    return run_federated(pima_federation(seed=0, n_hospitals=n), strategy=build_strategy(cfg),
                         model=build_model(cfg), rounds=rounds, seed=seed)


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tls")
    write_tls_files(path)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tls_dir):
    work = tmp_path_factory.mktemp("cluster")
    nodes = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
    with LocalCluster(work, node_configs=nodes, tls_dir=tls_dir) as c:
        yield c
        pids = c.all_pids()
    time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    assert not left, f"processes left running after the cluster stopped: {left}"


def run(cluster: LocalCluster, tmp_path: Path, config: dict, **kwargs):
    result = tmp_path / "result.json"
    outcome = cluster.run_app(APP_DIR, run_config={**config, "result-path": str(result)},
                              done_file=result, timeout=240, **kwargs)
    summary = json.loads(result.read_text()) if result.exists() else None
    return outcome, summary


def test_fedprox_over_tls_equals_the_simulation(cluster, tmp_path) -> None:
    config = {"strategy": "fedprox", "proximal-mu": 0.1, "num-rounds": 2, "seed": 5,
              "round-timeout": 120.0}
    outcome, summary = run(cluster, tmp_path, config)
    assert outcome.ok, f"{outcome.status}: {outcome.details}\n{outcome.log[-3000:]}\n{cluster.logs()}"
    assert summary["status"] == "completed"
    sim = simulate(config, rounds=2, seed=5)
    # plain channel: same floats in the same order, so the same model bit for bit
    np.testing.assert_array_equal(np.array(summary["final_params"]), sim.final_params)
    assert [r["contributors"] for r in summary["rounds"]] == [[0, 1, 2], [0, 1, 2]]
    assert summary["rounds"][-1]["test_accuracy"] == pytest.approx(sim.final.test_accuracy)
    # the plain channel's bytes up are the simulation's (same serialised messages)
    assert [r["bytes_up"] for r in summary["rounds"]] == [h.bytes_up for h in sim.history]


def test_processes_are_cleaned_up_when_the_body_fails(tmp_path) -> None:
    pids: set[int] = set()
    with pytest.raises(RuntimeError, match="boom"):
        with LocalCluster(tmp_path, node_configs=[{"partition-id": 0, "num-partitions": 1}]) as c:
            pids = c.all_pids()
            raise RuntimeError("boom")
    assert len(pids) >= 4  # SuperLink, SuperNode and their SuperExec helpers at least
    time.sleep(0.2)
    assert not [p for p in pids if _alive(p)]


def test_missing_tls_file_is_refused(tmp_path) -> None:
    with pytest.raises(Exception, match="TLS file .* is missing"):
        LocalCluster(tmp_path, node_configs=[{}], tls_dir=tmp_path)
    assert issubclass(ClusterError, RuntimeError)
