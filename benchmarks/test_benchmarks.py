"""The project's hot paths under pytest-benchmark, so that runs can be saved and compared.

The scripts beside this file print the ratios the documentation quotes (each measured side
by side in one run); this module times the same operations at a smaller size with
pytest-benchmark's statistics, for tracking over time::

    pytest benchmarks/test_benchmarks.py --benchmark-only --benchmark-save=baseline
    # ... change the code ...
    pytest benchmarks/test_benchmarks.py --benchmark-only --benchmark-compare

The test script (``scripts/test.sh``) runs each of them once with ``--benchmark-disable``,
and each checks the result it times, so a benchmark of a broken operation fails there.
"""

from __future__ import annotations

import numpy as np
import pytest


def _toy_federation(n_clients: int, rows: int, d: int, seed: int = 0):
    from securefed.arrays import ClientArrays, FederatedArrays

    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    clients = []
    for k in range(n_clients):
        X = rng.normal(size=(rows, d)).astype(np.float32)
        clients.append(ClientArrays(k, f"h{k}", X, (X @ w > 0).astype(np.float32)))
    Xt = rng.normal(size=(200, d)).astype(np.float32)
    return FederatedArrays(tuple(clients), Xt, (Xt @ w > 0).astype(np.float32),
                           tuple(f"x{i}" for i in range(d)))


def test_wire_round_trip(benchmark) -> None:
    from securefed.wire import pack, unpack

    u = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    out = benchmark(lambda: unpack(pack({"round": 3, "client": 1, "u": u})))
    np.testing.assert_array_equal(out["u"], u)


def test_engine_rounds(benchmark) -> None:
    from securefed import FedAvg, ModelSpec, run_federated

    data = _toy_federation(10, 100, 20)
    spec = ModelSpec("mlp", n_features=20, hidden=(64,))
    res = benchmark.pedantic(
        lambda: run_federated(data, strategy=FedAvg(learning_rate=0.05, batch_size=32),
                              model=spec, rounds=3, seed=0), rounds=3, iterations=1)
    assert len(res.history) == 3 and res.final.num_contributors == 10


def test_secagg_round(benchmark) -> None:
    from securefed.channel import DropoutPlan, Upload
    from securefed.codec import Float32Codec
    from securefed.secagg import SecAggChannel

    n, d = 20, 10_000
    rng = np.random.default_rng(0)
    vecs = [rng.uniform(-1, 1, size=d) for _ in range(n)]
    uploads = [Upload(i, v, 1.0, {}) for i, v in enumerate(vecs)]
    channel = SecAggChannel(clip_range=1.0, max_weight=1.0)
    res = benchmark.pedantic(
        lambda: channel.aggregate(uploads, round_index=0, dim=d, codec=Float32Codec(),
                                  dropouts=DropoutPlan(), rng=np.random.default_rng(1)),
        rounds=3, iterations=1)
    np.testing.assert_allclose(res.weighted_sum, np.sum(vecs, axis=0), atol=n * 1e-3)


def test_ckks_aggregation(benchmark) -> None:
    from securefed.channel import DropoutPlan, Upload
    from securefed.codec import Float32Codec
    from securefed.he import CKKSChannel, CKKSKeyHolder, CKKSParameters

    holder = CKKSKeyHolder.generate(CKKSParameters.aggregation())
    n, d = 5, 4096
    rng = np.random.default_rng(0)
    vecs = [rng.uniform(-1, 1, size=d) for _ in range(n)]
    uploads = [Upload(i, v, 1.0, {}) for i, v in enumerate(vecs)]
    channel = CKKSChannel(key_holder=holder)
    res = benchmark.pedantic(
        lambda: channel.aggregate(uploads, round_index=0, dim=d, codec=Float32Codec(),
                                  dropouts=DropoutPlan(), rng=np.random.default_rng(1)),
        rounds=3, iterations=1)
    np.testing.assert_allclose(res.weighted_sum, np.sum(vecs, axis=0), atol=1e-3)


def test_dp_accounting(benchmark) -> None:
    from securefed.dp import compute_epsilon

    # Abadi et al. 2016, Section 5 (q = 0.01, sigma = 4, 10,000 steps, delta = 1e-5): the
    # RDP figure docs/dp.md quotes
    eps = benchmark(lambda: compute_epsilon(noise_multiplier=4.0, sampling_rate=0.01,
                                            rounds=10_000, delta=1e-5))
    assert eps == pytest.approx(1.0355, abs=5e-4)


def test_gradient_inversion_of_one_update(benchmark) -> None:
    """The optimisation attack on one full-batch update of 4 Pima records (smaller budget than
    the default that ``benchmarks/attack_speed.py`` times)."""
    from attacks import TabularInversion
    from securefed import FedAvg, ModelSpec, run_federated
    from securefed.arrays import ClientArrays, FederatedArrays
    from securefed.data import pima_federation
    from securefed.observation import PriorKnowledge, observe

    data = pima_federation(seed=0)
    X, y = data.pooled()
    fed = FederatedArrays((ClientArrays(0, "clinic", X[:4], y[:4]),), data.X_test, data.y_test,
                          data.feature_names)
    run = run_federated(fed, strategy=FedAvg(learning_rate=0.1, batch_size=None),
                        model=ModelSpec("mlp", n_features=7, hidden=(128,)), rounds=1, seed=0)
    obs = observe(run, adversary="server")
    prior = PriorKnowledge.from_public_data(data.X_test, data.y_test,
                                            feature_names=data.feature_names)
    attack = TabularInversion(restarts=2, iterations=200, num_threads=1)
    rec = benchmark.pedantic(lambda: attack.run(obs, prior, rng=np.random.default_rng(0)),
                             rounds=3, iterations=1)
    assert rec.items[0].X.shape == (4, 7)


def test_secagg_profile_counts_each_clients_operations(capsys) -> None:
    """The client profile (benchmarks/secagg_profile.py) runs, and the call counts it prints
    per profiled client are the protocol's: n - 1 agreements and mask expansions plus the
    self mask, and t signature checks in malicious mode."""
    import os
    import re
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from secagg_bench import _threshold
    from secagg_profile import main

    n = 20
    assert main(["--n", str(n), "--d", "64", "--every", "4", "--top", "1000"]) == 0
    out = capsys.readouterr().out
    for stage in ("share_keys", "masked_input", "consistency", "unmask"):
        assert re.search(rf"^\s+{stage} \d\.\d{{4}}$", out, re.M), stage
    calls = {m.group(2): int(m.group(1)) for m in re.finditer(r"(\d+) calls\s+(.+?) \(", out)}
    assert calls["<method 'exchange' of 'cryptography.hazmat.bindings._rust.openssl.x25519.X25519PrivateKey' objects>"] == n - 1
    assert calls["<method 'update_into' of 'cryptography.hazmat.bindings._rust.openssl.ciphers.CipherContext' objects>"] == n
    assert calls["<built-in method _sodium.crypto_sign_open>"] == _threshold(n)


def test_deployment_request_trace_is_counted_per_trip() -> None:
    """``flower_deployment.py --trace-requests`` counts a SuperLink's access-log lines per
    endpoint and per message round trip (one trip per Runtime ``push-messages``)."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    pytest.importorskip("flwr")
    from flower_deployment import count_requests, request_summary

    log = "\n".join([
        'T DEBUG [uvicorn.access] 127.0.0.1:1 - "POST /v1/runtime/push-messages HTTP/1.1" 200',
        'T DEBUG [uvicorn.access] 127.0.0.1:2 - "POST /v1/fleet/pull-object HTTP/1.1" 200',
        'T DEBUG [uvicorn.access] 127.0.0.1:2 - "POST /v1/fleet/pull-object HTTP/1.1" 200',
        "T INFO [Fleet.PushMessages] Push replies from node_id=1",
        'T DEBUG [uvicorn.access] 127.0.0.1:1 - "POST /v1/runtime/push-messages HTTP/1.1" 200',
        'T DEBUG [uvicorn.access] 127.0.0.1:3 - "GET /v1/fleet/pull-object HTTP/1.1" 404',
    ])
    counts = count_requests(log)
    assert counts == {"runtime/push-messages": 2, "fleet/pull-object": 3}
    line = request_summary(counts, link_cpu=0.5, rounds=1)
    assert "5 requests (5 per round, 2.5 per message round trip over 2 trips)" in line
    assert "100.0 ms per request" in line and "fleet/pull-object 1.5" in line


def test_stack_samples_counts_by_innermost_and_enclosing_function(tmp_path) -> None:
    """benchmarks/stack_samples.py: a sample counts once per name however deep the name
    sits, innermost only for --leaf, and unreadable (frameless) stacks only in the total."""
    from stack_samples import count

    raw = tmp_path / "stacks.raw"
    raw.write_text("main (a.py:1);Handler.check_abort (b.py:2);do_execute (c.py:3) 5\n"
                   "main (a.py:1);check_abort (b.py:2);check_abort (b.py:9) 2\n"
                   "main (a.py:1);do_execute (c.py:3);wait (d.py:4) 3\n"
                   " 4\n")
    total, inside, leaf = count(str(raw), ["check_abort", "do_execute"], ["do_execute"])
    assert total == 14
    assert inside == {"check_abort": 7, "do_execute": 8}
    assert leaf == {"do_execute": 5}


def test_deployment_trip_timeline_reads_each_step_after_the_trip_began() -> None:
    """``--trace-requests`` also prints when each step of a round trip was served: trips run
    from one Runtime push-messages to the next (the unfinished last one left out)."""
    from flower_deployment import trip_timeline

    def line(t: str, what: str) -> str:
        return f'2026-12-02T06:00:{t}Z DEBUG [uvicorn.access] 127.0.0.1:1 - "POST /v1/{what} HTTP/1.1" 200'

    trips = [("00.0", "runtime/push-messages"), ("00.2", "runtime/push-object"),
             ("00.3", "fleet/pull-messages"), ("00.9", "fleet/push-messages"),
             ("01.1", "fleet/push-messages"), ("01.4", "fleet/push-object"),
             ("01.6", "runtime/pull-object"),
             ("02.0", "runtime/push-messages"), ("02.5", "runtime/push-object"),
             ("03.0", "fleet/push-messages"), ("03.2", "fleet/push-object"),
             ("03.5", "runtime/pull-object"),
             ("04.5", "runtime/push-messages"), ("04.6", "runtime/push-object")]
    text = "\n".join(line(t, w) for t, w in trips) + "\nINFO something else"
    assert trip_timeline(text) == (
        "2 trips of 2.0-2.5 s; after a trip began: ServerApp objects pushed by 0.2-0.5 s, "
        "replies 0.9-1.0 s (first) to 1.0-1.1 s (last), reply objects stored by 1.2-1.4 s, "
        "ServerApp pulls done by 1.5-1.6 s")
    assert trip_timeline(line("00.0", "runtime/push-messages")).startswith("0 trips of n/a")
