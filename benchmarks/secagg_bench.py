"""Secure-aggregation benchmark: prints measured figures and ratios side by side.

Sections (all measured in this one run, on this machine):

A. mask expansion throughput / raw AES-128-CTR keystream throughput of the same library,
   both writing into a preallocated buffer (``update_into``), so the ratio compares like
   with like;
B. the complete-graph protocol (Bonawitz et al.) at the given n and d with 0, 10 and 30 %
   dropouts, both *before the masked input* (the server must rebuild the dropped
   clients' pairwise masks: the worst case, and the setting of the published anchors)
   and *after the masked input* (dropped before unmasking: only self masks to remove), in
   the malicious-server mode (the default) and the honest-but-curious mode side by side,
   with the ratio of their server times; per-client time (mean over clients that took
   part in every stage), server time, and bandwidth expansion = bytes a client sends /
   (d * b / 8).  Malicious mode's one-off cost per deployment (the static pairwise
   secrets of the identity keys, one X25519 per peer, cached for every later round) is
   measured and printed separately;
C. SecAgg+ (random Harary graph) at larger n, showing the per-client cost as n grows;
D. Flower's own SecAgg+ primitives (``flwr``): its client stage functions run for one
   client, and its server unmasking loop timed on a sample of its operations and scaled to
   the operation counts of the same configuration (said so in the output).  The
   share-combine is timed on what Flower really shares: the PEM-serialised private key.

The machine may be shared: every figure is given in CPU time of this process
(``time.process_time``) beside wall time.

Usage::

    python benchmarks/secagg_bench.py --size small     # seconds
    python benchmarks/secagg_bench.py --size full      # the issue's sizes (minutes)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from securefed.identity import generate_identities  # noqa: E402
from securefed.secagg import crypto  # noqa: E402
from securefed.secagg.encoding import FixedPointEncoder, choose_scale  # noqa: E402
from securefed.secagg.graph import choose_degree_and_threshold, harary_graph  # noqa: E402
from securefed.secagg.protocol import (  # noqa: E402
    HONEST_BUT_CURIOUS,
    MALICIOUS,
    STAGES,
    SecAggClient,
    SecAggServer,
    run_round,
)

MODES = (MALICIOUS, HONEST_BUT_CURIOUS)

SIZES = {
    "small": {"expand_d": 100_000, "expand_reps": 60, "complete_n": [20, 50], "complete_d": 10_000,
              "plus_n": [200, 800], "plus_d": 2_000, "flower_n": [20, 50]},
    "full": {"expand_d": 100_000, "expand_reps": 300, "complete_n": [100, 500],
             "complete_d": 100_000, "plus_n": [1_000, 5_000], "plus_d": 10_000,
             "flower_n": [100]},
}
DROPOUTS = (0.0, 0.1, 0.3)
BITS = 32


def _best(fn: Callable[[], object], reps: int) -> float:
    """Median CPU time of ``reps`` calls (CPU time: the machine is shared, wall time is not
    a property of the code alone)."""
    times = []
    for _ in range(reps):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return statistics.median(times)


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


# ----------------------------------------------------------------------------- A
def bench_expansion(d: int, reps: int) -> dict[str, float]:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    nbytes = 4 * d
    keys = [os.urandom(16) for _ in range(reps)]
    exp = crypto.MaskExpander(d, np.dtype(np.uint32))
    acc = np.zeros(d, dtype=np.uint32)
    zeros, buf = bytes(nbytes), bytearray(nbytes + 15)

    def raw(key: bytes) -> None:  # the library's keystream into a preallocated buffer
        Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update_into(zeros, buf)

    it = iter(keys * 3)
    t_raw = _best(lambda: raw(next(it)), reps)
    it = iter(keys * 3)
    t_alloc = _best(lambda: crypto.raw_keystream(next(it), nbytes), reps)
    it = iter(keys * 3)
    expand = _best(lambda: exp.expand(next(it)), reps)
    it = iter(keys * 3)
    expand_add = _best(lambda: exp.add_into(acc, next(it), sign=+1), reps)
    gb = nbytes / 1e9
    out = {"raw_GBps": gb / t_raw, "raw_alloc_GBps": gb / t_alloc, "expand_GBps": gb / expand,
           "expand_add_GBps": gb / expand_add}
    out["ratio_expand"] = out["expand_GBps"] / out["raw_GBps"]
    out["ratio_expand_add"] = out["expand_add_GBps"] / out["raw_GBps"]
    return out


def bench_choices(reps: int) -> dict[str, float]:
    """The measurements behind the primitive choices: key agreement and keystream speed."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    out: dict[str, float] = {}
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
    out["x25519_exchange_us"] = 1e6 * _best(lambda: a.exchange(b), reps * 5)
    for name, curve in (("p256", ec.SECP256R1()), ("p384", ec.SECP384R1())):
        pa, pb = ec.generate_private_key(curve), ec.generate_private_key(curve).public_key()
        out[f"{name}_exchange_us"] = 1e6 * _best(lambda pa=pa, pb=pb: pa.exchange(ec.ECDH(), pb), reps * 5)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from nacl.bindings import crypto_sign_open

    signer = Ed25519PrivateKey.generate()
    message = os.urandom(96)  # about the size of a consistency message
    sig, pub = signer.sign(message), signer.public_key()
    raw_pub = pub.public_bytes_raw()
    out["ed25519_verify_openssl_us"] = 1e6 * _best(lambda: pub.verify(sig, message), reps * 5)
    out["ed25519_verify_libsodium_us"] = 1e6 * _best(
        lambda: crypto_sign_open(sig + message, raw_pub), reps * 5)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    zeros = bytes(4 * 100_000)
    for name, make in (
        ("aes128_ctr", lambda: Cipher(algorithms.AES(os.urandom(16)), modes.CTR(bytes(16)))),
        ("aes256_ctr", lambda: Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16)))),
        ("chacha20", lambda: Cipher(algorithms.ChaCha20(os.urandom(32), bytes(16)), None)),
    ):
        out[f"{name}_GBps"] = len(zeros) / 1e9 / _best(lambda m=make: m().encryptor().update(zeros), reps)
    return out


# ----------------------------------------------------------------------------- B / C
def _encoder_inputs(n: int, d: int, seed: int) -> Callable[[int], np.ndarray]:
    scale = choose_scale(clip_range=1.0, max_weight=1.0, bits=BITS, num_clients=n)
    enc = FixedPointEncoder(clip_range=1.0, max_weight=1.0, scale=scale, bits=BITS)
    enc.check_overflow(num_clients=n)
    base = np.random.default_rng(seed).uniform(-1, 1, d)
    rng = np.random.default_rng(seed + 1)

    def inputs(cid: int) -> np.ndarray:  # runs at the client, inside its timed stage
        ints, w = enc.encode_signed(base, 1.0, rng=rng)
        return enc.wrap(np.append(ints, w))
    return inputs


def bench_protocol(n: int, d: int, frac: float, stage: str, *, graph=None, threshold=None,
                   seed: int = 0, mode: str = MALICIOUS) -> dict[str, float]:
    ids = list(range(n))
    rng = np.random.default_rng(seed)
    dropped = set(rng.choice(n, int(round(frac * n)), replace=False).tolist())
    t = threshold if threshold is not None else _threshold(n)
    identities, roster = _warm_pki(ids, graph) if mode == MALICIOUS else (None, None)

    def alive(cid: int, s: str) -> bool:
        return cid not in dropped or STAGES.index(s) < STAGES.index(stage)

    t0 = time.perf_counter()
    out = run_round(ids, _encoder_inputs(n, d, seed), round_index=0, threshold=t, bits=BITS,
                    length=d + 1, graph=graph, alive=alive, record_received=False, mode=mode,
                    identities=identities, roster=roster)
    wall = time.perf_counter() - t0
    full = [c for c in ids if c not in dropped] or ids
    ctimes = [out.client_seconds[c] for c in full]
    ccpu = [out.client_cpu_seconds[c] for c in full]
    sent = [out.bytes_up[c] for c in full]
    return {
        "n": n, "d": d, "dropout": frac, "drop_stage": stage, "threshold": t, "mode": mode,
        "client_mean_s": float(np.mean(ctimes)), "client_max_s": float(np.max(ctimes)),
        "server_s": float(sum(out.server_stage_seconds.values())),
        "client_cpu_mean_s": float(np.mean(ccpu)),
        "server_cpu_s": float(sum(out.server_cpu_stage_seconds.values())),
        "server_unmask_s": out.server_stage_seconds["unmask"],
        "bandwidth_expansion": float(np.mean(sent)) / (d * BITS / 8),
        "bytes_up_per_client": float(np.mean(sent)),
        "survivors": len(out.survivors), "wall_s": wall,
    }


def _threshold(n: int, corrupt_fraction: float = 0.05) -> int:
    """The channel's default on the complete graph: floor((n + c) / 2) + 1."""
    return (n + int(corrupt_fraction * n)) // 2 + 1


def _warm_pki(ids, graph=None):
    """Identities and roster, with every client's static pairwise secrets computed: the
    once-per-deployment cost (returned CPU seconds per client in ``_warm_pki.cpu``)."""
    identities, roster = generate_identities(ids)
    c0 = time.process_time()
    for u in ids:
        for v in (graph[u] if graph is not None else ids):
            if v != u:
                identities[u].pairwise_secret(v, roster)
    _warm_pki.cpu = (time.process_time() - c0) / max(len(ids), 1)
    return identities, roster


def _fork_server(server: SecAggServer) -> SecAggServer:
    """A copy of a server that has closed ``share_keys``, so that several dropout patterns
    can be played from the same first stages (the stages before the masked input do not
    depend on who drops later)."""
    srv = copy.copy(server)
    srv._masked = set()
    srv._sum = server._sum.copy()
    srv._answers = {}
    srv._signatures = {}
    srv._responses = {}
    srv._pools = dict(server._pools)
    return srv


def bench_complete_family(n: int, d: int, configs: list[tuple[float, str]], *,
                          seed: int = 0, mode: str = MALICIOUS) -> list[dict[str, float]]:
    """Complete-graph protocol for several dropout patterns sharing one run of the first
    three client stages.  Every client computes its masked input once (its work does not
    depend on later dropouts); each pattern then delivers the masked inputs of the clients
    that did not drop before that stage, and runs the consistency round (malicious mode),
    the unmask stage and the server's reconstruction on its own copy of the server state."""
    ids = list(range(n))
    t = _threshold(n)
    identities, roster = _warm_pki(ids) if mode == MALICIOUS else ({}, None)
    setup_cpu = _warm_pki.cpu if mode == MALICIOUS else 0.0
    server = SecAggServer(ids, round_index=0, threshold=t, bits=BITS, length=d + 1, mode=mode,
                          roster=roster)
    clients = {c: SecAggClient(c, session=server.session, round_index=0, bits=BITS, length=d + 1,
                               mode=mode, identity=identities.get(c), roster=roster)
               for c in ids}
    inputs = _encoder_inputs(n, d, seed)
    ccpu = dict.fromkeys(ids, 0.0)
    cwall = dict.fromkeys(ids, 0.0)
    up = dict.fromkeys(ids, 0)
    s_common = [0.0, 0.0]

    def on_client(cid: int, fn: Callable[[], bytes]) -> bytes:
        w, c = _timed_value(fn)
        cwall[cid] += w[0]
        ccpu[cid] += c
        return w[1]

    def on_server(fn: Callable[[], object], acc: list[float]) -> object:
        (w, out), c = _timed_value(fn)
        acc[0] += w
        acc[1] += c
        return out

    for cid in ids:
        blob = on_client(cid, clients[cid].advertise_keys)
        up[cid] += len(blob)
        on_server(lambda b=blob, c=cid: server.receive(c, b), s_common)
    dirs = on_server(server.close_advertise_keys, s_common)
    for cid in ids:
        blob = on_client(cid, lambda c=cid: clients[c].share_keys(dirs[c]))
        up[cid] += len(blob)
        on_server(lambda b=blob, c=cid: server.receive(c, b), s_common)
    deliveries = on_server(server.close_share_keys, s_common)
    masked = {cid: on_client(cid, lambda c=cid: clients[c].masked_input(deliveries[c], inputs(c)))
              for cid in ids}
    rows = []
    for frac, stage in configs:
        rng = np.random.default_rng(seed + int(frac * 1000))
        dropped = set(rng.choice(n, int(round(frac * n)), replace=False).tolist())
        srv = _fork_server(server)
        s_acc = list(s_common)
        present = [c for c in ids if not (c in dropped and stage == "masked_input")]
        for cid in present:
            on_server(lambda c=cid, sv=srv: sv.receive(c, masked[c]), s_acc)
        requests = on_server(srv.close_masked_input, s_acc)
        u_cpu = dict.fromkeys(ids, 0.0)
        u_wall = dict.fromkeys(ids, 0.0)
        u_up = dict.fromkeys(ids, 0)
        forks = {cid: copy.deepcopy(clients[cid]) for cid in requests if cid not in dropped}
        for cid, client in forks.items():
            client.identity, client.roster = identities.get(cid), roster
        steps = (["consistency"] if mode == MALICIOUS else []) + ["unmask"]
        for step in steps:
            for cid, client in forks.items():
                (w, blob), c = _timed_value(lambda cl=client, r=requests[cid], m=step: getattr(cl, m)(r))
                u_cpu[cid] += c
                u_wall[cid] += w
                u_up[cid] += len(blob)
                on_server(lambda b=blob, c=cid, sv=srv: sv.receive(c, b), s_acc)
            if step == "consistency":
                requests = on_server(srv.close_consistency, s_acc)
        total = on_server(srv.finish, s_acc)
        assert total.shape == (d + 1,)
        full = [c for c in ids if c not in dropped]
        sent = [up[c] + len(masked[c]) + u_up[c] for c in full]
        rows.append({
            "n": n, "d": d, "dropout": frac, "drop_stage": stage, "threshold": t, "mode": mode,
            "client_mean_s": float(np.mean([cwall[c] + u_wall[c] for c in full])),
            "client_max_s": float(np.max([cwall[c] + u_wall[c] for c in full])),
            "client_cpu_mean_s": float(np.mean([ccpu[c] + u_cpu[c] for c in full])),
            "server_s": s_acc[0], "server_cpu_s": s_acc[1],
            "setup_cpu_per_client_s": setup_cpu,
            "bandwidth_expansion": float(np.mean(sent)) / (d * BITS / 8),
            "bytes_up_per_client": float(np.mean(sent)), "survivors": len(srv.u3),
        })
    return rows


def _timed_value(fn: Callable[[], object]) -> tuple[tuple[float, object], float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - t0, out), time.process_time() - c0


# ----------------------------------------------------------------------------- D
def bench_flower(n: int, d: int, frac: float, *, sample_pairs: int = 40,
                 sample_combines: int = 2) -> dict[str, float] | None:
    """Flower's SecAgg+ client stages for one client, and its server unmask loop scaled."""
    try:
        from flwr.client.mod.secure_aggregation.secaggplus_mod import (
            SecAggPlusState,
            _collect_masked_vectors,
            _setup,
            _share_keys,
            _unmask,
        )
        from flwr.common import ndarrays_to_parameters
        from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
            encrypt,
            generate_shared_key,
        )
        from flwr.common.secure_aggregation.secaggplus_constants import Key
        from flwr.common.secure_aggregation.secaggplus_utils import (
            pseudo_rand_gen,
            share_keys_plaintext_concat,
        )
        from flwr.supercore.primitives.asymmetric import (
            bytes_to_private_key,
            bytes_to_public_key,
            generate_key_pairs,
            public_key_to_bytes,
        )
    except ImportError as exc:  # flwr is optional
        print(f"  flwr not usable here ({exc}); skipping", flush=True)
        return None
    import logging
    logging.getLogger("flwr").setLevel(logging.WARNING)
    t = n // 2 + 1
    me = 0
    state = SecAggPlusState(nid=me)
    cfg = {Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: n, Key.THRESHOLD: t,
           Key.CLIPPING_RANGE: 1.0, Key.TARGET_RANGE: 1 << 20, Key.MOD_RANGE: 1 << BITS,
           Key.MAX_WEIGHT: 1.0}
    client = {}
    client["setup"] = _timed(lambda: _setup(state, cfg))[1]
    peers = {}
    for j in range(1, n):
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        peers[j] = (sk1, public_key_to_bytes(pk1), sk2, public_key_to_bytes(pk2))
    keys = {str(me): (state.pk1, state.pk2)}
    keys.update({str(j): (p[1], p[3]) for j, p in peers.items()})
    client["share_keys"] = _timed(lambda: _share_keys(state, keys))[1]
    # ciphertexts the peers would send to this client (built outside the timed region)
    dummy_b = create_shares(os.urandom(32), t, n)
    dummy_k = create_shares(os.urandom(64), t, n)
    srcs, cts = [], []
    for j, p in peers.items():
        key = generate_shared_key(p[2], bytes_to_public_key(state.pk2))
        cts.append(encrypt(key, share_keys_plaintext_concat(j, me, dummy_b[j], dummy_k[j])))
        srcs.append(j)
    params = ndarrays_to_parameters([np.random.default_rng(0).uniform(-1, 1, d)])
    client["masked_input"] = _timed(lambda: _collect_masked_vectors(
        state, {Key.CIPHERTEXT_LIST: cts, Key.SOURCE_LIST: srcs}, 1, params))[1]
    client["unmask"] = _timed(lambda: _unmask(
        state, {Key.ACTIVE_NODE_ID_LIST: list(range(n)), Key.DEAD_NODE_ID_LIST: []}))[1]
    client_total = sum(client.values())

    # server: Flower's unmask loop = one combine_shares per client, one PRG per survivor,
    # one ECDH + PRG per (dropped, surviving neighbour) pair; timed on samples, scaled
    shapes = [(d,)]
    acc = [np.zeros(d, dtype=np.int64)]
    # Flower's unmask stage combines, for every sampled client, *all* the shares the
    # surviving holders sent (not just t): the 32-byte seed of a survivor, the PEM-serialised
    # private key sk1 of a dropped client.  Time both on the real secrets, per dropout rate.
    pem = state.sk1
    seed = os.urandom(32)
    pem_shares = create_shares(pem, t, n)
    seed_shares = create_shares(seed, t, n)
    assert combine_shares(pem_shares[:t]) == pem
    t_prg = _best(lambda: np.subtract(acc[0], pseudo_rand_gen(seed, 1 << BITS, shapes)[0],
                                      out=acc[0]), sample_pairs)
    sk_pem = state.sk1
    pk_pem = peers[1][1]
    t_pair = _best(lambda: np.subtract(acc[0], pseudo_rand_gen(
        generate_shared_key(bytes_to_private_key(sk_pem), bytes_to_public_key(pk_pem)),
        1 << BITS, shapes)[0], out=acc[0]), sample_pairs)
    combine: dict[str, tuple[float, float]] = {}

    def scaled(f: float) -> float:
        nd = int(round(f * n))
        m = n - nd  # shares per secret: one from each surviving holder
        t_seed = _best(lambda: combine_shares(seed_shares[:m]), sample_combines)
        t_pem = _best(lambda: combine_shares(pem_shares[:m]), sample_combines) if nd else 0.0
        combine[str(f)] = (t_seed, t_pem)
        return (n - nd) * (t_seed + t_prg) + nd * t_pem + nd * (n - nd) * t_pair

    by_dropout = {str(f): scaled(f) for f in DROPOUTS}
    return {"n": n, "d": d, "dropout": frac, "client_s": client_total,
            **{f"client_{k}_s": v for k, v in client.items()},
            "server_s_scaled": by_dropout[str(frac)],
            "server_s_scaled_by_dropout": by_dropout,
            "combine_seed_and_pem_s_by_dropout": combine, "pem_bytes": len(pem),
            "pair_s": t_pair, "prg_s": t_prg}


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--sections", default="ABCD", help="which sections to run, e.g. AB")
    ap.add_argument("--json", help="write all figures to this JSON file")
    ap.add_argument("--reuse-complete", metavar="JSON",
                    help="section D: take our complete-graph figures from this earlier --json "
                         "output instead of re-running them")
    args = ap.parse_args(argv)
    cfg = SIZES[args.size]
    results: dict[str, object] = {"size": args.size, "cpu_count": os.cpu_count()}
    print(f"secagg benchmark, size={args.size}, b={BITS}, os.cpu_count()={os.cpu_count()}", flush=True)

    if "A" in args.sections:
        ch = bench_choices(cfg["expand_reps"])
        results["choices"] = ch
        print("\n[A0] primitive choices (CPU, median)")
        print(f"  key agreement: X25519 {ch['x25519_exchange_us']:.0f} us | P-256 "
              f"{ch['p256_exchange_us']:.0f} us | P-384 {ch['p384_exchange_us']:.0f} us")
        print(f"  keystream: AES-128-CTR {ch['aes128_ctr_GBps']:.2f} GB/s | AES-256-CTR "
              f"{ch['aes256_ctr_GBps']:.2f} GB/s | ChaCha20 {ch['chacha20_GBps']:.2f} GB/s", flush=True)
        print(f"  Ed25519 verification: libsodium {ch['ed25519_verify_libsodium_us']:.0f} us | "
              f"OpenSSL {ch['ed25519_verify_openssl_us']:.0f} us (ratio OpenSSL/libsodium "
              f"{ch['ed25519_verify_openssl_us'] / ch['ed25519_verify_libsodium_us']:.2f})",
              flush=True)
        r = bench_expansion(cfg["expand_d"], cfg["expand_reps"])
        results["expansion"] = r
        print(f"\n[A] mask expansion, d={cfg['expand_d']} words (AES-128-CTR, median of "
              f"{cfg['expand_reps']})")
        print(f"  raw keystream into a preallocated buffer {r['raw_GBps']:.2f} GB/s (a new buffer "
              f"per call: {r['raw_alloc_GBps']:.2f}) | expansion {r['expand_GBps']:.2f} GB/s"
              f" | expansion + add {r['expand_add_GBps']:.2f} GB/s")
        print(f"  ratio expansion/raw = {r['ratio_expand']:.2f} (goal >= 0.5); "
              f"with the addition into the sum = {r['ratio_expand_add']:.2f}", flush=True)

    rows = []
    if args.reuse_complete:
        with open(args.reuse_complete) as fh:
            rows = json.load(fh)["complete"]
    if "B" in args.sections:
        rows = []
        d = cfg["complete_d"]
        print(f"\n[B] complete graph, d={d}, t=floor((n + 0.05 n)/2)+1 (seconds; client = mean over "
              "clients present in all stages); both modes side by side")
        print(f"  {'mode':>18} {'n':>5} {'drop':>5} {'dropped before':>15} {'client':>8} "
              f"{'client max':>10} {'server':>8} | {'client cpu':>10} {'server cpu':>10} | "
              f"{'bw exp.':>8}", flush=True)
        configs = [(f, s) for f in DROPOUTS
                   for s in (("masked_input", "unmask") if f else ("masked_input",))]
        for n in cfg["complete_n"]:
            for mode in MODES:
                for r in bench_complete_family(n, d, configs, mode=mode):
                    rows.append(r)
                    print(f"  {mode:>18} {n:>5} {r['dropout']:>5.0%} "
                          f"{r['drop_stage'] if r['dropout'] else '-':>15} "
                          f"{r['client_mean_s']:>8.3f} {r['client_max_s']:>10.3f} "
                          f"{r['server_s']:>8.3f} | {r['client_cpu_mean_s']:>10.3f} "
                          f"{r['server_cpu_s']:>10.3f} | {r['bandwidth_expansion']:>8.4f}", flush=True)
                if mode == MALICIOUS:
                    print(f"  {'':>18} once per deployment (malicious mode): static pairwise "
                          f"secrets {rows[-1]['setup_cpu_per_client_s']:.3f} s CPU per client",
                          flush=True)
        results["complete"] = rows
        n_big = max(cfg["complete_n"])
        print(f"\n  cost goals at n={n_big}, d={d}, 30% dropped (malicious mode vs honest-but-curious, "
              "measured in this run):")
        for stage in ("masked_input", "unmask"):
            pick = {r["mode"]: r for r in rows if r["n"] == n_big and r["dropout"] == 0.3
                    and r["drop_stage"] == stage}
            m, h = pick[MALICIOUS], pick[HONEST_BUT_CURIOUS]
            print(f"  dropped before {stage}: server malicious/honest-but-curious = "
                  f"{m['server_cpu_s'] / h['server_cpu_s']:.2f} CPU, {m['server_s'] / h['server_s']:.2f} "
                  f"wall (goal <= 1.5); client {m['client_cpu_mean_s']:.3f} s CPU, "
                  f"{m['client_mean_s']:.3f} s wall (goal <= 0.15); upload expansion "
                  f"{m['bandwidth_expansion']:.4f} (goal <= 1.1)", flush=True)

    if "C" in args.sections:
        d = cfg["plus_d"]
        print(f"\n[C] SecAgg+ (Harary graph), d={d}, 10% dropped before the masked input; k and t "
              "from choose_degree_and_threshold(gamma=0.05, delta=0.1, sigma=40, eta=20)")
        print(f"  {'n':>6} {'k':>4} {'t':>4} {'client':>8} {'client cpu':>10} {'server':>8} "
              f"{'server cpu':>10} {'server cpu/n ms':>15} {'bytes up/client':>16}", flush=True)
        plus = []
        for n in cfg["plus_n"]:
            k, t = choose_degree_and_threshold(n, corrupt_fraction=0.05, dropout_fraction=0.1)
            g = harary_graph(list(range(n)), degree=k)
            r = bench_protocol(n, d, 0.1, "masked_input", graph=g, threshold=t)
            r["degree"] = k
            plus.append(r)
            print(f"  {n:>6} {k:>4} {t:>4} {r['client_mean_s']:>8.4f} {r['client_cpu_mean_s']:>10.4f} "
                  f"{r['server_s']:>8.3f} {r['server_cpu_s']:>10.3f} "
                  f"{1e3 * r['server_cpu_s'] / n:>15.3f} {r['bytes_up_per_client']:>16.0f}", flush=True)
        results["secagg_plus"] = plus
        if len(plus) >= 2:
            a, b = plus[0], plus[-1]
            print(f"  per-client CPU time ratio n={b['n']} / n={a['n']}: "
                  f"{b['client_cpu_mean_s'] / a['client_cpu_mean_s']:.2f}; server CPU per client "
                  f"ratio {(b['server_cpu_s'] / b['n']) / (a['server_cpu_s'] / a['n']):.2f} "
                  f"(n ratio {b['n'] / a['n']:.0f})")

    if "D" in args.sections:
        d = cfg["complete_d"]
        print(f"\n[D] Flower (flwr) SecAgg+ primitives, complete graph (share_num = n), d={d}, "
              "0, 10, 30% dropped before the masked input (the client cost does not depend on them)")
        print("  CPU seconds. client: flwr's own client stage functions run for one client; server: "
              "flwr's unmask loop, each operation timed on a sample and multiplied by its count")
        fl = []
        for n in cfg["flower_n"]:
            f = bench_flower(n, d, 0.3)
            if f is None:
                break
            ours = next((r for r in rows if r["n"] == n and r["dropout"] == 0.3
                         and r["drop_stage"] == "masked_input"
                         and r.get("mode") == HONEST_BUT_CURIOUS), None)
            if ours is None:
                ours = bench_protocol(n, d, 0.3, "masked_input", mode=HONEST_BUT_CURIOUS)
            f["ours_client_cpu_s"], f["ours_server_cpu_s"] = ours["client_cpu_mean_s"], ours["server_cpu_s"]
            fl.append(f)
            print(f"  n={n}: flwr client {f['client_s']:.3f} s (share_keys "
                  f"{f['client_share_keys_s']:.3f}, masked input {f['client_masked_input_s']:.3f}) "
                  f"vs ours {ours['client_cpu_mean_s']:.3f} s -> ratio {f['client_s'] / ours['client_cpu_mean_s']:.1f}x")
            c30 = f["combine_seed_and_pem_s_by_dropout"]["0.3"]
            print(f"         flwr combine_shares at 30% dropped: seed {c30[0] * 1e3:.1f} ms, PEM key "
                  f"({f['pem_bytes']} bytes) {c30[1] * 1e3:.1f} ms each; ECDH+PRG "
                  f"{f['pair_s'] * 1e3:.2f} ms per pair, PRG {f['prg_s'] * 1e3:.2f} ms")
            for frac in DROPOUTS:
                mine = next((r for r in rows if r["n"] == n and r["dropout"] == frac
                             and r["drop_stage"] == "masked_input"
                             and r.get("mode") == HONEST_BUT_CURIOUS), None)
                theirs = f["server_s_scaled_by_dropout"][str(frac)]
                if mine is None:
                    print(f"         {frac:.0%} dropped: flwr server ~{theirs:.1f} s")
                    continue
                print(f"         {frac:.0%} dropped: flwr server ~{theirs:.1f} s vs ours "
                      f"{mine['server_cpu_s']:.3f} s -> ratio {theirs / mine['server_cpu_s']:.1f}x",
                      flush=True)
        results["flower"] = fl

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
