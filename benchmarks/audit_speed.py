"""Time the audit end to end against its goals: the default profile (all five threat
scenarios included) within 180 s and ``--quick`` within 30 s on a 2-core machine.

    PYTHONPATH=. python benchmarks/audit_speed.py [--profiles quick,default] [--workers N]

Each profile runs ``securefed audit`` in a fresh output directory (nothing reused), in this
process, and prints its wall time, the ratio to the goal, and two CPU figures: the CPU
the audit reports (this process plus what each cell measured in the worker processes; the
workers' start-up imports are not in it) and the 1-minute load average before and after.
On a machine shared with other jobs the wall time is inflated by the load; the CPU time is
not, and ``CPU / workers`` is what the wall time would approach on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

GOALS_S = {"quick": 30.0, "default": 180.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="quick,default")
    ap.add_argument("--keep", default=None,
                    help="write the audits under this folder (one per profile) and keep them")
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes (default: the audit's own, min(2, CPUs))")
    args = ap.parse_args()
    from evaluation import profile, run_audit, write_report

    print(f"{os.cpu_count()} CPUs")
    print(f"{'profile':<9}{'cells':>7}{'wall s':>9}{'/ goal':>8}{'CPU s':>9}{'CPU/workers':>13}"
          f"{'load before':>13}{'load after':>12}")
    for name in args.profiles.split(","):
        cfg = profile(name)
        workers = args.workers or min(2, os.cpu_count() or 1)
        load0 = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            where = Path(args.keep or tmp) / name
            if where.exists() and args.keep:
                raise SystemExit(f"{where} exists; choose an empty --keep folder")
            t0 = time.perf_counter()
            res = run_audit(cfg, where, progress=False, workers=workers)
            c0 = time.process_time()
            write_report(res, command=f"securefed audit --{name}")
            wall = time.perf_counter() - t0
            cpu = res.cpu_time + time.process_time() - c0
        n = len(res.cells) + len(res.threat_cells)
        print(f"{name:<9}{n:>7}{wall:>9.1f}{wall / GOALS_S[name]:>8.2f}{cpu:>9.1f}"
              f"{cpu / workers:>13.1f}{load0:>13.1f}{os.getloadavg()[0]:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
