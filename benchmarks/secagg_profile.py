"""Where a secure-aggregation client's time goes: one complete-graph round, profiled.

Runs one round of the protocol (``SecAggClient`` / ``SecAggServer``, complete graph, the
threshold ``secagg_bench`` uses) with ``--dropout`` of the clients gone after their masked
input, and prints

* each client stage's mean CPU time (``time.process_time``) over the clients that are *not*
  profiled, so the profiler's own overhead is not in these figures;
* the server's CPU time for each of its steps (receiving each stage's messages, closing each
  stage, finishing), all clients included;
* for a sample of the clients that stay to the end, run under ``cProfile`` (every
  ``--every``-th), the functions with
  the most own time, in milliseconds per profiled client (inflated by the profiler: read
  them as shares, the stage means as times).

Usage::

    python benchmarks/secagg_profile.py                      # n = 500, d = 100,000, 30 %
    python benchmarks/secagg_profile.py --mode honest-but-curious
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from secagg_bench import BITS, _encoder_inputs, _threshold, _warm_pki  # noqa: E402

from securefed.secagg.protocol import MALICIOUS, MODES, SecAggClient, SecAggServer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--d", type=int, default=100_000)
    ap.add_argument("--dropout", type=float, default=0.3, help="share that drops before unmasking")
    ap.add_argument("--mode", choices=MODES, default=MALICIOUS)
    ap.add_argument("--every", type=int, default=25, help="profile every k-th client")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    ids = list(range(args.n))
    identities, roster = _warm_pki(ids) if args.mode == MALICIOUS else ({}, None)
    server = SecAggServer(ids, round_index=0, threshold=_threshold(args.n), bits=BITS,
                          length=args.d + 1, mode=args.mode, roster=roster)
    clients = {c: SecAggClient(c, session=server.session, round_index=0, bits=BITS,
                               length=args.d + 1, mode=args.mode, identity=identities.get(c),
                               roster=roster) for c in ids}
    inputs = _encoder_inputs(args.n, args.d, 0)
    rng = np.random.default_rng(0)
    dropped = set(rng.choice(args.n, int(round(args.dropout * args.n)), replace=False).tolist())
    profiled = set([c for c in ids if c not in dropped][::args.every])  # they run every stage
    prof = cProfile.Profile()
    stage_cpu: dict[str, list[float]] = defaultdict(list)

    def call(cid: int, stage: str, fn):  # type: ignore[no-untyped-def]
        c0 = time.process_time()
        if cid in profiled:
            prof.enable()
        out = fn()
        if cid in profiled:
            prof.disable()
        else:
            stage_cpu[stage].append(time.process_time() - c0)
        return out

    server_cpu: dict[str, float] = defaultdict(float)

    def srv(step: str, fn):  # type: ignore[no-untyped-def]
        c0 = time.process_time()
        out = fn()
        server_cpu[step] += time.process_time() - c0
        return out

    for c in ids:
        blob = call(c, "advertise_keys", clients[c].advertise_keys)
        srv("receive advertise_keys", lambda c=c, b=blob: server.receive(c, b))
    directories = srv("close_advertise_keys", server.close_advertise_keys)
    for c in ids:
        blob = call(c, "share_keys", lambda c=c: clients[c].share_keys(directories[c]))
        srv("receive share_keys", lambda c=c, b=blob: server.receive(c, b))
    deliveries = srv("close_share_keys", server.close_share_keys)
    for c in ids:
        blob = call(c, "masked_input", lambda c=c: clients[c].masked_input(deliveries[c], inputs(c)))
        srv("receive masked_input", lambda c=c, b=blob: server.receive(c, b))
    requests = srv("close_masked_input", server.close_masked_input)
    for stage in (["consistency"] if args.mode == MALICIOUS else []) + ["unmask"]:
        for c in sorted(requests):
            if c not in dropped:
                blob = call(c, stage, lambda c=c, s=stage, r=requests[c]: getattr(clients[c], s)(r))
                srv(f"receive {stage}", lambda c=c, b=blob: server.receive(c, b))
        if stage == "consistency":
            requests = srv("close_consistency", server.close_consistency)
    srv("finish", server.finish)

    print(f"n={args.n}, d={args.d}, mode={args.mode}, {len(dropped)} dropped before unmasking; "
          f"CPU seconds per client (mean over {args.n - len(profiled)} clients not profiled)")
    total = 0.0
    for stage, times in stage_cpu.items():
        total += float(np.mean(times))
        print(f"  {stage:>15} {np.mean(times):.4f}")
    print(f"  {'total':>15} {total:.4f}")
    print(f"\nserver CPU seconds by step ({sum(server_cpu.values()):.3f} in all)")
    for step, sec in server_cpu.items():
        print(f"  {step:>22} {sec:.3f}")
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:args.top]  # type: ignore[attr-defined]
    print(f"\nown time per profiled client ({len(profiled)} clients, under cProfile), ms:")
    for (path, line, name), (_cc, calls, tottime, _ct, _callers) in rows:
        where = f"{os.path.basename(path)}:{line}" if line else "built-in"
        print(f"  {1e3 * tottime / len(profiled):7.1f}  {calls / len(profiled):7.0f} calls  {name} ({where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
