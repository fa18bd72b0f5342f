"""Time of a deployed round on Flower (real processes, loopback, TLS) beside the simulation.

    python benchmarks/flower_deployment.py --rounds 3 --channel secagg --channel plain
    python benchmarks/flower_deployment.py --rounds 3 --channel secagg --cold   # Flower's default executor
    python benchmarks/flower_deployment.py --rounds 3 --channel secagg --secagg-mode honest-but-curious
    python benchmarks/flower_deployment.py --rounds 3 --channel secagg --trace-requests   # SuperLink requests
    python benchmarks/flower_deployment.py --rounds 3 --channel secagg --idle-seconds 30  # CPU at rest too
    python benchmarks/flower_deployment.py --rounds 4 --channel secagg --superlink-env FLWR_SUPEREXEC_TASK_POLL_INTERVAL=2
    python benchmarks/flower_deployment.py --rounds 5 --channel secagg --flower-superlink   # Flower's own SuperLink command
    python benchmarks/flower_deployment.py --import-time                         # import securefed

Starts one local cluster exactly as a deployment runs (the consortium set-up of
``securefed deploy``: SuperLink on loopback with node authentication and a database, the
Fleet-only gateway, SuperNodes with their node keys and trusted-entities, signed app; the
hospitals' identity keys and pinned roster, which secure aggregation's default mode against a
deviating server needs), then runs each channel for the given number of rounds and prints,
per run:

* wall time of the run, of each round (as the ServerApp measured it) and of the first round
  (which includes the hello and, under secure aggregation, the first key exchange);
* CPU seconds used by every process of the cluster during the run (SuperLink, gateway,
  ServerApp, SuperNodes, executors and every ClientApp), per round on average (start-up of
  the ServerApp and the first key exchange included) and for each later round alone
  (between two of the run's per-round checkpoints): on a shared machine the wall time
  depends on the other work, the CPU time much less;
* the machine's load average, how busy its CPUs were and how much CPU time the host gave
  to other guests (steal, from ``/proc/stat``), so a reader can tell whether the wall times
  are those of an idle machine;
* the largest difference of the final model from the in-process simulation with the same
  seed.

With ``--trace-requests`` the SuperLink alone logs at DEBUG level, which makes it log every
HTTP request it serves, and the run's requests are counted from that log: in all, per
message round trip (a trip begins with each Runtime API ``push-messages`` of the ServerApp),
per endpoint, and the SuperLink's own CPU time per request; and when each step of a trip
was served (:func:`trip_timeline`).  The logging costs the SuperLink
CPU time of its own, so the round times of a traced run are not the untraced ones.

A run that does not complete prints the ServerApp's log instead of figures.
``--secagg-mode honest-but-curious`` times the faster mode against a server that follows the
protocol (every node's own config then accepts it).  ``--cold`` starts the SuperNodes as plain ``flower-supernode`` processes (a fresh ClientApp
interpreter per message, Flower's 3-second poll) for comparison.  ``--import-time`` measures
``import securefed`` in fresh interpreters (best of 5, wall and CPU).
Needs ``pip install 'securefed[flower]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from securefed.data import pima_federation
from securefed.federated import run_federated
from securefed.flower import APP_DIR
from securefed.flower.bundle import make_consortium
from securefed.flower.cluster import LocalCluster
from securefed.flower.settings import app_run_config, build_model, build_strategy
from securefed.identity import write_identity_files

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int, *, children: bool) -> int:
    """utime + stime (and cutime + cstime with ``children``) of ``pid``; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(x) for x in fields[11:15 if children else 13])


def cluster_cpu_seconds(cluster: LocalCluster) -> float:
    """CPU seconds (user + system, children included) of every live cluster process."""
    return sum(_cpu_ticks(pid, children=True) for pid in cluster.all_pids()) / _TICK


_REQUEST = re.compile(r'"(?:GET|POST) /v1/([\w/-]+) HTTP')


def count_requests(log_text: str) -> Counter[str]:
    """Requests per endpoint in a SuperLink log written at DEBUG level (uvicorn's access log).

    >>> line = '2026-12-02T06:12:44.899Z DEBUG [uvicorn.access] 127.0.0.1:42312 - "POST /v1/runtime/push-object HTTP/1.1" 200'
    >>> count_requests(line + "\\n" + line + "\\nINFO other line")
    Counter({'runtime/push-object': 2})
    """
    return Counter(_REQUEST.findall(log_text))


_STAMPED = re.compile(r'^(\d{4}-\d\d-\d\dT[\d:.]+)Z .*"POST /v1/([\w/-]+) HTTP', re.MULTILINE)


def trip_timeline(log_text: str) -> str:
    """When the steps of each message round trip happened, from the SuperLink's DEBUG log.

    A trip runs from one Runtime ``push-messages`` of the ServerApp to the next (the last,
    unfinished one is left out).  For each: when the ServerApp's last object push, the
    nodes' first and last reply (Fleet ``push-messages``), the nodes' last object push and
    the ServerApp's last object pull were served, in seconds after the trip began; printed
    as the range over the trips.
    """
    import datetime

    events = [(datetime.datetime.fromisoformat(stamp).timestamp(), what)
              for stamp, what in _STAMPED.findall(log_text)]
    starts = [i for i, (_, what) in enumerate(events) if what == "runtime/push-messages"]
    steps: dict[str, list[float]] = {k: [] for k in ("length", "pushed", "first", "last",
                                                     "stored", "pulled")}
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        t0 = events[a][0]

        def last(what: str, trip=events[a:b], t0=t0) -> float | None:
            times = [t for t, w in trip if w == what]
            return max(times) - t0 if times else None

        replies = [t - t0 for t, w in events[a:b] if w == "fleet/push-messages"]
        found = {"length": events[b][0] - t0, "pushed": last("runtime/push-object"),
                 "first": min(replies, default=None), "last": max(replies, default=None),
                 "stored": last("fleet/push-object"), "pulled": last("runtime/pull-object")}
        if all(v is not None for v in found.values()):
            for k, v in found.items():
                steps[k].append(v)

    def span(k: str) -> str:
        return f"{min(steps[k]):.1f}-{max(steps[k]):.1f} s" if steps[k] else "n/a"

    return (f"{len(steps['length'])} trips of {span('length')}; after a trip began: ServerApp "
            f"objects pushed by {span('pushed')}, replies {span('first')} (first) to "
            f"{span('last')} (last), reply objects stored by {span('stored')}, ServerApp pulls "
            f"done by {span('pulled')}")


def own_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of one process, its children not included."""
    return _cpu_ticks(pid, children=False) / _TICK


def request_summary(counts: Counter[str], link_cpu: float, rounds: int) -> str:
    """One line on what a run asked of the SuperLink (see ``--trace-requests``)."""
    total = sum(counts.values())
    trips = max(counts.get("runtime/push-messages", 0), 1)
    top = ", ".join(f"{name} {n / trips:.1f}" for name, n in counts.most_common(8))
    return (f"SuperLink: {total} requests ({total / rounds:.0f} per round, {total / trips:.1f} per "
            f"message round trip over {trips} trips); its own CPU {link_cpu:.1f} s, "
            f"{1e3 * link_cpu / max(total, 1):.1f} ms per request (DEBUG logging included); per "
            f"trip: {top}")


def machine_ticks() -> tuple[int, int, int]:
    """``(busy, steal, total)`` clock ticks of the whole machine so far (``/proc/stat``).

    Steal is the time the hypervisor gave this machine's virtual CPUs to another guest: on
    a shared host it slows every process down without showing in the load average.
    """
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


def _steal_percent(before: tuple[int, int, int], after: tuple[int, int, int]) -> int:
    return round(100 * (after[1] - before[1]) / max(after[2] - before[2], 1))


def machine_usage(before: tuple[int, int, int], after: tuple[int, int, int]) -> str:
    busy, steal, total = (b - a for a, b in zip(before, after, strict=True))
    total = max(total, 1)
    return f"both CPUs busy {100 * busy / total:.0f}%, stolen by the host {100 * steal / total:.0f}%"


def import_time() -> None:
    code = ("import time, resource; t = time.perf_counter(); c = time.process_time(); "
            "import securefed; print(time.perf_counter() - t, time.process_time() - c)")
    runs = []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        runs.append(tuple(float(x) for x in out.stdout.split()))
    wall, cpu = min(runs)
    heavy = subprocess.run([sys.executable, "-c", "import sys, securefed; print(sorted(m for m in "
                            "('torch', 'tenseal', 'dp_accounting', 'cryptography', 'flwr', "
                            "'pandas') if m in sys.modules))"], capture_output=True, text=True,
                           check=True).stdout.strip()
    print(f"import securefed: {wall:.3f} s wall, {cpu:.3f} s CPU (best of 5); heavy modules "
          f"loaded by it: {heavy}; load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--channel", action="append", choices=["plain", "secagg"])
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--secagg-mode", default="malicious",
                        choices=["malicious", "honest-but-curious"],
                        help="secure aggregation's mode (default: against a deviating server)")
    parser.add_argument("--cold", action="store_true",
                        help="plain flower-supernode processes (Flower's subprocess isolation)")
    parser.add_argument("--idle-seconds", type=float, default=0.0,
                        help="first measure the cluster's CPU at rest for this long")
    parser.add_argument("--trace-requests", action="store_true",
                        help="count the SuperLink's requests from its DEBUG log (slows it down)")
    parser.add_argument("--superlink-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the SuperLink alone (repeatable), e.g. "
                             "FLWR_SUPEREXEC_TASK_POLL_INTERVAL=2 for its ServerApp executor")
    parser.add_argument("--flower-superlink", action="store_true",
                        help="Flower's own flower-superlink command instead of "
                             "securefed.flower.link (for an A/B comparison)")
    parser.add_argument("--node-poll-interval", type=float, default=None, metavar="S",
                        help="a warm SuperNode's poll for messages during a run (default 0.25 s)")
    parser.add_argument("--keep-logs", metavar="DIR", default=None,
                        help="copy the cluster's process logs (SuperLink, gateway, SuperNodes) "
                             "to DIR before the run's folder is removed")
    parser.add_argument("--import-time", action="store_true", help="only time import securefed")
    args = parser.parse_args()
    bad = [item for item in args.superlink_env if "=" not in item or item.startswith("=")]
    if bad:
        parser.error(f"--superlink-env expects NAME=VALUE, got {bad[0]!r}")
    if args.import_time:
        import_time()
        return
    channels = args.channel or ["secagg", "plain"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = [f"hospital{i}" for i in range(args.nodes)]
        # the hospitals make their identity keys; the coordinator gets only the roster
        roster, keys = write_identity_files(names, work / "hospital-keys")
        consortium = make_consortium(work / "bundle", hospitals=names, roster=roster)
        nodes = [{"partition-id": i, "num-partitions": args.nodes, "identity-key": str(keys[name]),
                  "secagg-mode": args.secagg_mode, "allow-plain-channel": "plain" in channels}
                 for i, name in enumerate(names)]
        t0 = time.perf_counter()
        link_env = dict(item.split("=", 1) for item in args.superlink_env)
        if args.trace_requests:
            link_env["FLWR_LOG_LEVEL"] = "DEBUG"
        with LocalCluster(work / "cluster", node_configs=nodes, consortium=consortium,
                          warm=not args.cold, superlink_env=link_env,
                          gated_link=not args.flower_superlink,
                          node_poll_interval=args.node_poll_interval) as cluster:
            print(f"cluster of {args.nodes} SuperNodes ({'cold' if args.cold else 'warm'}) ready "
                  f"in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f}",
                  flush=True)
            if args.idle_seconds > 0:  # nodes poll every second at rest, the SuperLink answers
                time.sleep(5.0)  # past the start-up
                idle0, ticks0 = cluster_cpu_seconds(cluster), machine_ticks()
                time.sleep(args.idle_seconds)
                idle = cluster_cpu_seconds(cluster) - idle0
                print(f"at rest: {idle / args.idle_seconds:.3f} s of cluster CPU per second over "
                      f"{args.idle_seconds:.0f} s; {machine_usage(ticks0, machine_ticks())}",
                      flush=True)
            failed = False
            for channel in channels:
                overrides = {"num-rounds": args.rounds, "num-clients": args.nodes,
                             "channel": channel, "strategy": args.strategy, "seed": 0,
                             "secagg-mode": args.secagg_mode}
                result = work / f"{channel}.json"
                checkpoint = work / f"{channel}.checkpoint.json"
                # (checkpoint mtime, cluster CPU, machine ticks, SuperLink's own CPU) when each
                # round completed
                marks: list[tuple[int, float, tuple[int, int, int], float]] = []

                def on_poll(cl: LocalCluster, _seconds: float, path: Path = checkpoint,
                            marks: list[tuple[int, float, tuple[int, int, int], float]] = marks,
                            ) -> None:
                    try:
                        stamp = path.stat().st_mtime_ns
                    except FileNotFoundError:
                        return
                    if not marks or marks[-1][0] != stamp:  # a round has just been completed
                        link_pid = cl.superlink.popen.pid if cl.superlink else 0
                        marks.append((stamp, cluster_cpu_seconds(cl), machine_ticks(),
                                      own_cpu_seconds(link_pid)))

                link = cluster.superlink
                assert link is not None
                log_offset = link.log_path.stat().st_size
                link_cpu0 = own_cpu_seconds(link.popen.pid)
                cpu0 = cluster_cpu_seconds(cluster)
                load0 = os.getloadavg()[0]
                ticks0 = machine_ticks()
                out = cluster.run_app(APP_DIR, run_config={**overrides, "result-path": str(result),
                                                           "checkpoint-path": str(checkpoint)},
                                      done_file=result, timeout=1800, on_poll=on_poll)
                cpu = cluster_cpu_seconds(cluster) - cpu0
                link_cpu = own_cpu_seconds(link.popen.pid) - link_cpu0
                usage = machine_usage(ticks0, machine_ticks())
                summary = json.loads(result.read_text()) if result.exists() else {}
                if not out.ok or summary.get("status") != "completed":
                    print(f"{channel:7s} {out.status or 'no status'}: the run did not complete "
                          f"({summary.get('abort_reason', out.details)}); ServerApp log:\n"
                          f"{out.log[-4000:] or cluster.run_log(out.run_id)[-4000:]}", flush=True)
                    failed = True
                    continue
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
                later = per_round[1:] or per_round
                # CPU of each later round, between two checkpoints (sampled every 0.3 s)
                later_cpu = [round(b[1] - a[1], 1) for a, b in zip(marks[:-1], marks[1:], strict=True)]
                later_steal = [_steal_percent(a[2], b[2]) for a, b in zip(marks[:-1], marks[1:], strict=True)]
                # the SuperLink's share of it (its own process: requests, state; not the ServerApp)
                later_link = [round(b[3] - a[3], 1) for a, b in zip(marks[:-1], marks[1:], strict=True)]
                print(f"{channel:7s} {out.status}: run {out.seconds:.1f} s wall; rounds {per_round} s "
                      f"(first {per_round[0]} s, later mean {np.mean(later):.1f} s); "
                      f"cluster CPU {cpu:.1f} s ({cpu / args.rounds:.1f} s per round; later rounds "
                      f"{later_cpu} s, of which the SuperLink {later_link} s; host steal in each "
                      f"{later_steal} %); "
                      f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; {usage}; "
                      f"simulated {sim_s:.2f} s; max |w_deployed - w_simulated| = {diff:.2e}",
                      flush=True)
                if args.trace_requests:
                    with open(link.log_path, encoding="utf-8", errors="replace") as fh:
                        fh.seek(log_offset)
                        text = fh.read()
                    print(f"{channel:7s} {request_summary(count_requests(text), link_cpu, args.rounds)}",
                          flush=True)
                    print(f"{channel:7s} {trip_timeline(text)}", flush=True)
            if args.keep_logs:
                shutil.copytree(work / "cluster" / "logs", args.keep_logs, dirs_exist_ok=True)
                print(f"logs copied to {args.keep_logs}", flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
