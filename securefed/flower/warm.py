"""A hospital node that answers in a second, not in ten: a warm ClientApp executor.

Why.  In Flower 1.42 a SuperNode started with ``--isolation subprocess`` (the default) starts
a fresh ``flwr-clientapp`` process for every message.  Each one starts Python and imports
Flower (about 1.5 s of CPU) and securefed with torch (about 3 s more) before it reads the
message, and the SuperNode looks for new messages only every 3 seconds.  A secure round
takes two message round trips, so a round cost tens of seconds on a small machine, almost
all of it start-up and waiting.  No Flower isolation mode keeps a ClientApp warm: Flower's
warm executor pools are for Kubernetes and for other task types.

What this module does instead, with Flower's own pieces:

* :func:`run_executor` is a SuperExec for ``--isolation process``.  It imports Flower, torch
  and securefed's ClientApp **once**, then runs Flower's own SuperExec loop (task polling,
  tokens) with one change: a ClientApp task is started by ``os.fork()`` of this warm
  process instead of a new interpreter.  Each message still runs in its own process, which
  exits when the message is answered, so the isolation between messages is the one Flower's
  subprocess mode gives: whatever a node keeps between messages travels through
  ``context.state`` in the SuperNode, as before.  The child re-seeds Python's ``random``
  from the OS; secrets never come from it (securefed draws them from ``os.urandom``).
  Two waits tuned for a cold ClientApp are shortened for a warm one: the back-off while
  the message's objects are still on their way to the SuperNode (1 s, doubling, in Flower;
  50 ms, doubling up to 0.2 s here: the SuperNode is on the same machine).
* :func:`run_supernode` runs Flower's ``flower-supernode`` unchanged except for two
  intervals that Flower 1.42 hard-codes: the pause between two polls for a new message when
  none came (3 s; ``poll_interval`` here, 0.25 s by default) and the heartbeat interval
  (30 s, so a crashed node looks online for up to a minute and its restart is refused until
  then; 10 s here, Flower's minimum).
* :func:`run_node` supervises the two: it starts the SuperNode with ``--isolation process``
  and the warm executor beside it, restarts the SuperNode while the SuperLink still holds a
  previous session of the same node key (Flower's exit code 305 after a crash), and stops
  both on SIGTERM.

Threat model: unchanged from Flower's.  The warm process holds no secret (it imports code
and, for a node that trains on a partition of the bundled public Pima files, builds that
public data once; it never sees a message nor a hospital's own records), the forked
ClientApp talks only to its own SuperNode on 127.0.0.1, and a node started with
``--trusted-entities`` still refuses an unsigned app before any task is created.

Command lines (``python -m securefed.flower.warm ...``)::

    executor [--node-config CONFIG] --runtime-api-address 127.0.0.1:9094 [--insecure | --root-certificates CA]
    supernode [--poll-interval S] -- <flower-supernode arguments>
    node [--poll-interval S] -- <flower-supernode arguments>   # both, supervised

Measured effect: see docs/deployment.md ("Time per round") and
``benchmarks/flower_deployment.py``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["run_executor", "run_supernode", "run_node", "PRELOAD", "main"]

#: Modules a ClientApp of securefed imports while it handles a message; the warm executor
#: imports them once so that each forked ClientApp finds them loaded.
PRELOAD = (
    "flwr.supernode.cli.flwr_clientapp",
    "flwr.supernode.runtime.run_clientapp",
    "flwr.clientapp",
    "numpy",
    "torch",
    "torch.optim",
    "torch._dynamo",  # torch imports it when the first optimizer is built: seconds of CPU
    "pandas",
    "securefed.flower.clientapp",
    "securefed.flower.node",
    "securefed.flower.nodedata",
    "securefed.flower.secagg_stages",
    "securefed.federated.engine",
    "securefed.federated.registry",
    "securefed.federated.fedmedheter",
    "securefed.secagg",
    "securefed.dp",
    "securefed.compression",
    "securefed.data",
)

def _preload(modules: Sequence[str]) -> list[str]:
    """Import ``modules``; return those that could not be imported (with the reason)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    return missing


class ForkExecutor:
    """A Flower SuperExec executor that forks ClientApps from this warm process.

    Other task types (a ServerApp, should this executor serve a SuperLink) are started as
    Flower's subprocess executor starts them.
    """

    def __init__(self) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self._fallback = SubprocessExecutor()
        self._children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types: Any, **kwargs: Any) -> Any:
        return self._fallback.get_eligible_capacity(supported_task_types, **kwargs)

    def wait_for_capacity(self, *args: Any, **kwargs: Any) -> None:
        return None

    def launch(self, spec: Any) -> Any:
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor.types import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self._fallback.launch(spec)
        argv = ["flwr-clientapp", "--runtime-api-address", spec.runtime_api_address,
                "--token", spec.token]
        if spec.insecure:
            argv.append("--insecure")
        elif spec.root_certificates_path is not None:
            argv += ["--root-certificates", spec.root_certificates_path]
        if spec.parent_pid is not None:
            argv += ["--parent-pid", str(spec.parent_pid)]
        pid = os.fork()
        if pid == 0:  # the child: run one ClientApp task, then leave
            code = 0
            try:
                import random

                random.seed()  # a forked child must not share the parent's stream
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

                sys.argv = argv
                profile = os.environ.get("SECUREFED_WARM_PROFILE")
                if profile:  # one cProfile dump per task, to see where a message's time goes
                    import cProfile

                    cProfile.runctx("flwr_clientapp()", globals(), {"flwr_clientapp": flwr_clientapp},
                                    f"{profile}.{os.getpid()}")
                else:
                    flwr_clientapp()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - report and leave, never return to the loop
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        self._children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished ClientApp children (no zombies)."""
        for pid in list(self._children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._children.discard(pid)

    def close(self) -> None:
        for pid in list(self._children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.reconcile()


def run_executor(argv: Sequence[str], *, ready_file: str | None = None,
                 node_config: str | None = None) -> None:
    """``flower-superexec`` with :class:`ForkExecutor`; ``argv`` as for flower-superexec.

    ``ready_file`` is created once the modules are loaded (the supervisor starts the
    SuperNode only then, so a node that is online answers at once).  ``node_config`` is the
    SuperNode's ``--node-config`` value: when it names a partition of the bundled public
    data, that federation is built here once (:func:`securefed.flower.nodedata.preload_node_data`)
    instead of in every message that needs it.
    """
    missing = _preload(PRELOAD)
    if missing:
        print("securefed: warm executor could not preload " + "; ".join(missing), flush=True)
    if node_config:
        from flwr.common.config import parse_config_args

        from securefed.flower.nodedata import preload_node_data

        try:
            preload_node_data(parse_config_args([node_config]))
        except ValueError as exc:  # the SuperNode refuses the same value with its own message
            print(f"securefed: warm executor could not read --node-config {node_config!r}: {exc}",
                  flush=True)
    import functools

    import flwr.supercore.inflatable.inflatable_utils as objects
    import flwr.supercore.superexec.run_superexec as loop

    # A warm ClientApp asks its SuperNode for the message's objects before the SuperNode has
    # fetched them from the SuperLink; Flower then backs off 1 s, 2 s, ... (tuned for a
    # ClientApp that took seconds to start).  The SuperNode is local: ask again sooner.
    objects.pull_objects = functools.partial(objects.pull_objects, initial_backoff=0.05,
                                             backoff_cap=0.2)
    # While its SuperNode restarts (a crash, a refused activation) the executor retries the
    # local Runtime API; Flower's back-off grows to 20 s, which would idle a node that is
    # back.  The API is on this machine: retry at least once a second.
    import flwr.supercore.retry.http_retry as http_retry

    http_retry.MAX_RETRY_DELAY = 1.0
    from flwr.supercore.cli import flower_superexec

    executor = ForkExecutor()
    loop.get_executor = lambda *_a, **_k: executor  # the one change to Flower's loop
    if ready_file:
        with open(ready_file, "w", encoding="ascii") as fh:
            fh.write(str(os.getpid()))
        # Enter Flower's loop only once the SuperNode's Runtime API accepts connections:
        # a refused first call would start Flower's exponential back-off (up to seconds).
        _wait_for_port(_runtime_address(argv, flag="--runtime-api-address"))
    sys.argv = ["flower-superexec", *argv]
    flower_superexec()


class _PollClock:
    """The ``time`` module as the SuperNode loop sees it, with short idle sleeps."""

    def __init__(self, poll_interval: float) -> None:
        self._poll = poll_interval

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self._poll))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def run_supernode(argv: Sequence[str], *, poll_interval: float = 0.25,
                  heartbeat_interval: int = 10) -> None:
    """``flower-supernode`` with a shorter idle poll and heartbeat (see the module docstring)."""
    if not 0.01 <= poll_interval <= 3.0:
        from securefed.errors import ConfigurationError

        raise ConfigurationError(f"poll interval must be in [0.01, 3] s, got {poll_interval!r}")
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as fleet
    import flwr.supernode.start_client_internal as node_loop
    from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
    from flwr.supernode.cli import flower_supernode

    node_loop.time = _PollClock(poll_interval)  # type: ignore[attr-defined]
    # The interval the node announces (fleet) and the one its sender keeps (heartbeat)
    # must agree, or the SuperLink marks the node offline between two heartbeats.
    interval = max(int(heartbeat_interval), HEARTBEAT_MIN_INTERVAL)
    fleet.HEARTBEAT_DEFAULT_INTERVAL = interval
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = interval
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def _runtime_address(argv: Sequence[str], *, flag: str | None = None) -> str:
    """The SuperNode's Runtime API address from its arguments (``--host``/``--port``, or
    the value of ``flag``)."""
    host, port = "127.0.0.1", "9094"
    args = list(argv)
    for i, arg in enumerate(args[:-1]):
        if flag is not None and arg == flag:
            return args[i + 1]
        if arg == "--host":
            host = args[i + 1]
        elif arg == "--port":
            port = args[i + 1]
    return f"{host}:{port}"


def _wait_for_port(address: str) -> None:
    """Block until ``address`` accepts a TCP connection (or the parent process is gone)."""
    import socket

    host, _, port = address.rpartition(":")
    parent = os.getppid()
    while os.getppid() == parent:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)


def run_node(argv: Sequence[str], *, poll_interval: float = 0.25,
             activation_wait: float = 90.0) -> int:
    """Supervise a fast SuperNode (``--isolation process``) and its warm executor.

    A SuperNode that the SuperLink refuses to activate because a previous session of the
    same node key is still marked online (Flower's exit code 305, reported in its output;
    for up to two heartbeat intervals after a crash) is started again every few seconds
    for ``activation_wait`` seconds; any other exit of either process stops both and is
    returned.
    """
    args = [a for a in argv if a != "--"]
    if "--isolation" in args:
        i = args.index("--isolation")
        del args[i:i + 2]
    node_args = [*args, "--isolation", "process"]
    runtime = _runtime_address(args)
    node_config = args[args.index("--node-config") + 1] if "--node-config" in args[:-1] else ""
    me = [sys.executable, "-m", "securefed.flower.warm"]
    procs: dict[str, subprocess.Popen] = {}
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    import threading

    refused = threading.Event()

    def forward(stream: Any) -> None:
        """Copy the SuperNode's output to ours; note Flower's activation refusal (its exit
        status is 1 for every error, so the message is the only sign of it)."""
        for line in iter(stream.readline, b""):
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            if b"Exit Code: 305" in line or b"Failed to activate SuperNode" in line:
                refused.set()
        stream.close()

    def start_node() -> subprocess.Popen:
        refused.clear()
        proc = subprocess.Popen([*me, "supernode", "--poll-interval", str(poll_interval),  # noqa: S603
                                 "--", *node_args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        threading.Thread(target=forward, args=(proc.stdout,), daemon=True).start()
        return proc

    import tempfile

    ready = os.path.join(tempfile.mkdtemp(prefix="securefed-node-"), "executor-ready")
    procs["executor"] = subprocess.Popen([*me, "executor", "--ready-file", ready,  # noqa: S603
                                          *(["--node-config", node_config] if node_config else []),
                                          "--runtime-api-address", runtime, "--insecure",
                                          "--parent-pid", str(os.getpid())])
    first_refusal: float | None = None
    code = 0
    try:
        # The node goes online only once its ClientApps can start at once.
        deadline = time.monotonic() + 300.0
        while not stopping and not os.path.exists(ready):
            if procs["executor"].poll() is not None or time.monotonic() > deadline:
                print("securefed: the warm executor did not start", flush=True)
                return procs["executor"].poll() or 1
            time.sleep(0.1)
        os.remove(ready)
        os.rmdir(os.path.dirname(ready))
        procs["supernode"] = start_node()
        while not stopping:
            time.sleep(0.2)
            node_rc = procs["supernode"].poll()
            if node_rc is not None and node_rc != 0:
                time.sleep(0.5)  # let the output reader see the last lines
            if node_rc is not None and node_rc != 0 and refused.is_set():
                now = time.monotonic()
                first_refusal = first_refusal or now
                if now - first_refusal > activation_wait:
                    print(f"securefed: the SuperLink kept refusing this node for {activation_wait:.0f} s "
                          "(another SuperNode with the same node key is online?)", flush=True)
                    code = node_rc
                    break
                print("securefed: the SuperLink still holds this node's previous session "
                      "(it expires two heartbeats after a crash); starting again in 3 s", flush=True)
                time.sleep(3.0)
                procs["supernode"] = start_node()
                continue
            if node_rc is not None:
                code = node_rc
                break
            exec_rc = procs["executor"].poll()
            if exec_rc is not None:
                print(f"securefed: the warm executor exited with code {exec_rc}", flush=True)
                code = exec_rc or 1
                break
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return int(code)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("executor", "supernode", "node"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "executor":
        own: dict[str, str | None] = {"--ready-file": None, "--node-config": None}
        for flag in own:
            if flag in rest[:-1]:
                i = rest.index(flag)
                own[flag] = rest[i + 1]
                rest = rest[:i] + rest[i + 2:]
        run_executor(rest, ready_file=own["--ready-file"], node_config=own["--node-config"])
        return 0
    parser = argparse.ArgumentParser(prog=f"python -m securefed.flower.warm {command}")
    parser.add_argument("--poll-interval", type=float, default=0.25,
                        help="seconds between two polls for a new message when none came "
                             "(Flower's default: 3)")
    if "--" in rest:
        split = rest.index("--")
        own, flower_args = rest[:split], rest[split + 1:]
    else:
        own, flower_args = [], rest
    opts = parser.parse_args(own)
    if command == "supernode":
        run_supernode(flower_args, poll_interval=opts.poll_interval)
        return 0
    return run_node(flower_args, poll_interval=opts.poll_interval)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
