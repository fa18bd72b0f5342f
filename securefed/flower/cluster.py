"""A small local Flower cluster: one SuperLink and several SuperNodes as real OS processes.

Used by the deployment tests and the documentation's walk-through.  Everything listens on
``127.0.0.1`` only, on free ports found by binding port 0.  Each process gets its own
``FLWR_HOME`` under the cluster's working directory, its own log file, and the environment
an offline deployment needs (no update check, no telemetry, no runtime dependency
installation).

Clean-up is the point of this module.  The SuperLink and the SuperNodes start helpers
(``flower-superexec``, then ``flwr-serverapp`` / ``flwr-clientapp``) that may sit in other
sessions, so killing a process group is not enough: every process is started with
``start_new_session=True`` so that the PID held is the real one, its descendants are
recorded from ``/proc`` while the cluster runs, and :meth:`LocalCluster.stop` sends SIGTERM
to the SuperNodes, then to the SuperLink, then SIGKILL by PID to whatever is left after a
deadline.  ``LocalCluster`` is a context manager, so a failing test still cleans up.

With a *consortium* (the folders :func:`securefed.flower.bundle.make_consortium` writes) the
cluster runs as a real deployment does: the SuperLink listens on 127.0.0.1 only, with
SuperNode authentication (every hospital's node key registered) and a database, behind the
Fleet-only gateway of :mod:`securefed.flower.gateway`; every SuperNode runs with
``--trusted-entities`` and its node key; runs are submitted as apps signed by the consortium
key (:mod:`securefed.flower.apps`).  With ``warm=True`` (the default) each SuperNode is
:func:`securefed.flower.warm.run_node`: a short message poll and a warm ClientApp executor.
The SuperLink is started as :mod:`securefed.flower.link` (Flower's SuperLink with its
Control-only and Fleet-only request layers skipped for the other APIs' requests), as
``securefed deploy superlink`` starts it.

This module needs the ``flwr`` executables on ``PATH`` (``pip install securefed[flower]``)
and imports ``flwr`` only to submit signed apps and to ask the Control API (register node
keys, list nodes, follow and stop runs; :mod:`securefed.flower.control`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefed.errors import ConfigurationError, SecurefedError

_LOG = logging.getLogger(__name__)

__all__ = [
    "ClusterError",
    "LocalCluster",
    "RunOutcome",
    "free_port",
    "descendants",
    "offline_env",
    "toml_value",
]


class ClusterError(SecurefedError, RuntimeError):
    """The local cluster could not start, or a run on it did not finish."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _parent_map() -> dict[int, int]:
    """``{pid: ppid}`` for every process visible in ``/proc``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) >= 2:
            parents[int(entry)] = int(rest[1])
    return parents


def descendants(pid: int, parents: dict[int, int] | None = None) -> set[int]:
    """All live descendants of ``pid`` (children, grandchildren, ...), read from ``/proc``
    (or from ``parents``, a :func:`_parent_map` already read)."""
    parents = _parent_map() if parents is None else parents
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return False
    state = stat[stat.rfind(")") + 2 :].split()[0]
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _start_time(pid: int) -> int | None:
    """When the live process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat``
    field 22), or ``None`` when there is no such process or it has exited (a zombie).  With
    the PID it names one process for good: a PID reused after the process exited comes with
    another start time."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
        fields = stat[stat.rfind(")") + 2 :].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _still_ours(known: dict[int, int]) -> dict[int, int]:
    """The entries of ``known`` (PID -> start time) that are still the same live processes."""
    return {pid: st for pid, st in known.items() if _start_time(pid) == st}


def offline_env(*, flwr_home: Path, pythonpath: Sequence[str] = ()) -> dict[str, str]:
    """The environment of one Flower process in an offline deployment.

    The venv's ``bin`` goes first on ``PATH`` because the SuperLink and SuperNodes start
    ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by bare name.
    """
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    # The SuperExec polls for new tasks (a ClientApp or ServerApp to start) once a second
    # by default; half a second takes a quarter second off each message round trip on
    # average and costs little CPU when idle (0.1 s would cost ~0.2 of a core per cluster).
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.5")
    if pythonpath:
        old = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, *([old] if old else [])])
    return env


def toml_value(value: Any) -> str:
    """One value written as TOML (what ``--node-config`` and ``--run-config`` expect)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    raise ConfigurationError(
        f"config values must be bool, int, float or str, got {type(value).__name__}"
    )


def _config_arg(config: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={toml_value(val)}" for key, val in config.items())


@dataclass(frozen=True)
class RunOutcome:
    """How one run ended (after any resumptions: ``run_ids`` lists every Flower run)."""

    run_id: int
    status: str  # e.g. "finished:completed", "finished:failed"
    details: str
    seconds: float
    log: str = ""  # the ServerApp's output, fetched when the run did not complete
    run_ids: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    # descendants seen so far, PID -> start time (a PID alone may be reused once it exits)
    known: dict[int, int] = field(default_factory=dict)


class LocalCluster:
    """A SuperLink and ``len(node_configs)`` SuperNodes on 127.0.0.1, as separate processes.

    Parameters
    ----------
    workdir:
        A fresh directory for the FLWR_HOMEs, logs, the database and the CLI configuration.
    node_configs:
        One mapping per SuperNode, passed as its ``--node-config`` (for example
        ``{"partition-id": 0, "num-partitions": 3}``); with a consortium, added to the
        hospital's own ``node.json`` settings.
    tls_dir:
        A directory made by :func:`securefed.flower.tls.write_tls_files` (``ca.pem``,
        ``server.pem``, ``server.key``); ``None`` runs without TLS (tests only).
    consortium:
        ``(coordinator, hospitals)`` from :func:`securefed.flower.bundle.make_consortium`:
        node authentication, trusted apps, the Fleet-only gateway and signed submissions
        (see the module docstring).  Its TLS files replace ``tls_dir``.
    warm:
        Start each SuperNode as :func:`securefed.flower.warm.run_node` (fast poll, warm
        ClientApps); ``False`` starts plain ``flower-supernode`` processes.
    database:
        Give the SuperLink a database file (``--database``), so that its state survives a
        restart (:meth:`restart_superlink`).
    pythonpath:
        Extra entries for the processes' ``PYTHONPATH``; by default the folder that holds
        the ``securefed`` package in use, so that the apps import the same code.
    superlink_env:
        Extra environment variables for the SuperLink process alone, for example
        ``{"FLWR_LOG_LEVEL": "DEBUG"}`` to have it log every HTTP request it serves
        (``benchmarks/flower_deployment.py --trace-requests``).
    gated_link:
        Start the SuperLink as :mod:`securefed.flower.link` (Flower's SuperLink with its
        Control-only and Fleet-only middleware skipped for other APIs' requests); ``False``
        starts Flower's own ``flower-superlink``.
    node_poll_interval:
        A warm SuperNode's poll for messages while a run is active (seconds; ``None``: the
        default of :func:`securefed.flower.warm.run_node`, 0.25 s).

    Use it as a context manager::

        with LocalCluster(workdir, node_configs=[{"partition-id": i} for i in range(3)]) as c:
            # no consortium, so no roster: secure aggregation in its honest-but-curious mode
            outcome = c.run_app(app_dir, run_config={"num-rounds": 3,
                                                     "secagg-mode": "honest-but-curious"})
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        node_configs: Sequence[Mapping[str, Any]],
        tls_dir: str | Path | None = None,
        consortium: tuple[Any, Sequence[Any]] | None = None,
        warm: bool = True,
        database: bool = True,
        pythonpath: Sequence[str] | None = None,
        superlink_env: Mapping[str, str] | None = None,
        gated_link: bool = True,
        node_poll_interval: float | None = None,
        startup_timeout: float = 300.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if not node_configs:
            raise ConfigurationError("node_configs must name at least one SuperNode, got none")
        for exe in ("flower-superlink", "flower-supernode", "flwr"):
            if shutil.which(exe, path=str(Path(sys.executable).parent)) is None and shutil.which(exe) is None:
                raise ClusterError(f"{exe!r} not found; install the extra: pip install 'securefed[flower]'")
        self.workdir = Path(workdir).absolute()
        self.node_configs = [dict(c) for c in node_configs]
        self.coordinator, self.hospitals = (None, []) if consortium is None else (
            consortium[0], list(consortium[1]))
        if self.coordinator is not None:
            if len(self.hospitals) != len(self.node_configs):
                raise ConfigurationError(f"{len(self.node_configs)} node configs for "
                                         f"{len(self.hospitals)} hospitals in the consortium")
            tls_dir = self.coordinator.tls_dir
        self.tls_dir = None if tls_dir is None else Path(tls_dir).absolute()
        if self.tls_dir is not None:
            for name in ("ca.pem", "server.pem", "server.key"):
                if not (self.tls_dir / name).is_file():
                    raise ConfigurationError(f"TLS file {self.tls_dir / name} is missing")
        if pythonpath is None:
            # the folder that holds the securefed package
            pythonpath = [str(Path(__file__).resolve().parents[2])]
        self.pythonpath = list(pythonpath)
        self.superlink_env = {str(k): str(v) for k, v in (superlink_env or {}).items()}
        self.gated_link = gated_link
        self.node_poll_interval = node_poll_interval
        self.warm = warm
        self.database = self.workdir / "state" / "superlink.db" if database else None
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.superlink: _Proc | None = None
        self.gateway: _Proc | None = None
        self.supernodes: list[_Proc | None] = []
        self.port: int | None = None  # the port SuperNodes dial (the gateway's, if any)
        self.link_port: int | None = None  # the SuperLink's own port
        self._cli_home = self.workdir / "cli-home"
        self._spawned: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """The address SuperNodes dial (the gateway's when there is one)."""
        if self.port is None:
            raise ClusterError("the cluster has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def control_address(self) -> str:
        """The SuperLink's own address (Control API; loopback only)."""
        if self.link_port is None:
            raise ClusterError("the cluster has not been started")
        return f"127.0.0.1:{self.link_port}"

    def _spawn(self, name: str, args: list[str], extra_env: Mapping[str, str] | None = None) -> _Proc:
        home = self.workdir / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = offline_env(flwr_home=home, pythonpath=self.pythonpath)
        # Several apps share one machine here: one torch thread each avoids contention
        # (the models are tiny; results do not depend on it).
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(extra_env or {})
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(  # noqa: S603 (fixed argument list, no shell)
                args, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._spawned[name] = self._spawned.get(name, 0) + 1
        return _Proc(name=name, popen=popen, log_path=log_path)

    def _link_args(self) -> list[str]:
        tls_link = (
            ["--insecure"] if self.tls_dir is None else [
                "--ssl-certfile", str(self.tls_dir / "server.pem"),
                "--ssl-keyfile", str(self.tls_dir / "server.key"),
                "--ssl-ca-certfile", str(self.tls_dir / "ca.pem"),
            ]
        )
        # securefed.flower.link: Flower's SuperLink with its API-specific middleware skipped
        # for the other APIs' requests (gated_link=False: Flower's own command, as shipped)
        command = [sys.executable, "-m", "securefed.flower.link"] if self.gated_link \
            else ["flower-superlink"]
        args = [*command, *tls_link, "--host", "127.0.0.1", "--port", str(self.link_port),
                "--disable-runtime-dependency-installation"]
        if self.database is not None:
            self.database.parent.mkdir(parents=True, exist_ok=True)
            args += ["--database", str(self.database)]
        if self.coordinator is not None:
            args.append("--enable-supernode-auth")
        return args

    def start(self) -> None:
        """Start the SuperLink (and gateway), wait until healthy, register and start the
        SuperNodes, wait until they are online."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.link_port = free_port()
        self.port = self.link_port
        deadline = time.monotonic() + self.startup_timeout
        self.start_superlink(deadline=deadline)
        if self.coordinator is not None:
            self.port = free_port()
            tls = self.tls_dir
            assert tls is not None
            self.gateway = self._spawn("gateway", [
                sys.executable, "-m", "securefed.flower.gateway", "--listen", self.address,
                "--upstream", self.control_address, "--certfile", str(tls / "server.pem"),
                "--keyfile", str(tls / "server.key"), "--ca", str(tls / "ca.pem")])
            self._wait_healthy(self.address, self.gateway, deadline)
            self.register_nodes()
        for i in range(len(self.node_configs)):
            self.supernodes.append(self._spawn_node(i))
        self.wait_nodes_online(len(self.node_configs), timeout=max(5.0, deadline - time.monotonic()))
        self.record_children()

    def start_superlink(self, *, deadline: float | None = None) -> None:
        """Start the SuperLink on its port (again, after :meth:`kill_superlink`)."""
        if self.superlink is not None and self.superlink.popen.poll() is None:
            raise ClusterError("the SuperLink is already running")
        deadline = deadline or time.monotonic() + self.startup_timeout
        self.superlink = self._spawn("superlink", self._link_args(), self.superlink_env)
        self._write_cli_config()
        self._wait_healthy(self.control_address, self.superlink, deadline)
        self.record_children()

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink and everything it started (its ServerApp too): a crash."""
        proc = self.superlink
        if proc is None:
            return
        self.record_children()
        if proc.popen.poll() is None:
            _signal(proc.popen.pid, signal.SIGKILL)
        for pid in _still_ours(proc.known):
            _signal(pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _still_ours(proc.known) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart_superlink(self) -> None:
        """:meth:`kill_superlink`, then start it again on the same port and database."""
        self.kill_superlink()
        self.start_superlink()

    def _wait_healthy(self, address: str, proc: _Proc, deadline: float) -> None:
        while not self._healthy(address):
            self._check_alive(proc)
            if time.monotonic() > deadline:
                raise ClusterError(f"{proc.name} not healthy at {address} after "
                                   f"{self.startup_timeout} s\n" + self.tail(proc))
            time.sleep(0.2)

    @property
    def _ca(self) -> Path | None:
        return None if self.tls_dir is None else self.tls_dir / "ca.pem"

    def register_nodes(self) -> dict[str, int]:
        """Register every hospital's node public key with the SuperLink (node ids back)."""
        from securefed.flower.control import register_node

        assert self.coordinator is not None
        return {name: register_node(self.control_address, self._ca, path)
                for name, path in self.coordinator.node_public_keys().items()}

    def _node_args(self, index: int) -> list[str]:
        tls = (["--insecure"] if self.tls_dir is None
               else ["--root-certificates", str(self.tls_dir / "ca.pem")])
        args = [*tls, "--superlink", self.address, "--port", str(free_port())]
        config = dict(self.node_configs[index])
        if self.hospitals:
            hospital = self.hospitals[index]
            args += ["--auth-supernode-private-key", str(hospital.node_key),
                     "--trusted-entities", str(hospital.trusted_entities)]
            config = {**hospital.node_config, **config}
        if config:
            args += ["--node-config", _config_arg(config)]
        return args

    def _spawn_node(self, index: int) -> _Proc:
        args = self._node_args(index)
        if self.warm:
            poll = [] if self.node_poll_interval is None else [
                "--poll-interval", str(self.node_poll_interval)]
            command = [sys.executable, "-m", "securefed.flower.warm", "node", *poll, "--", *args]
        else:
            command = ["flower-supernode", *args]
        return self._spawn(f"supernode-{index}", command)

    def _check_alive(self, proc: _Proc) -> None:
        if proc.popen.poll() is not None:
            raise ClusterError(f"{proc.name} exited with code {proc.popen.returncode}\n"
                               + self.tail(proc))

    def _healthy(self, address: str | None = None) -> bool:
        scheme = "http" if self.tls_dir is None else "https"
        ctx = None
        if self.tls_dir is not None:
            ctx = ssl.create_default_context(cafile=str(self.tls_dir / "ca.pem"))
        try:
            with urllib.request.urlopen(f"{scheme}://{address or self.address}/health", timeout=2,
                                        context=ctx) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def _write_cli_config(self, address: str | None = None, name: str = "local") -> Path:
        """The flwr command line's configuration; by default it talks to the SuperLink itself
        (loopback), as the coordinator does."""
        home = self._cli_home if name == "local" else self.workdir / f"cli-{name}"
        home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]",
                 f"address = {toml_value(address or self.control_address)}"]
        if self.tls_dir is None:
            lines.append("insecure = true")
        else:
            lines.append(f"root-certificates = {toml_value(str(self.tls_dir / 'ca.pem'))}")
        (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return home

    def flwr(self, *args: str, timeout: float = 60.0, home: Path | None = None) -> str:
        """Run the ``flwr`` command line against this cluster and return its standard output."""
        done = self.flwr_result(*args, timeout=timeout, home=home)
        if done.returncode != 0:
            raise ClusterError(f"flwr {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done.stdout

    def flwr_result(self, *args: str, timeout: float = 60.0,
                    home: Path | None = None) -> subprocess.CompletedProcess:
        """Run the ``flwr`` command line; the completed process, whatever its exit status."""
        env = offline_env(flwr_home=home or self._cli_home, pythonpath=self.pythonpath)
        return subprocess.run(  # noqa: S603
            ["flwr", *args], cwd=self.workdir, env=env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def _json(self, *args: str) -> Any:
        out = self.flwr(*args, "--format", "json")
        start = out.find("{")
        if start < 0:
            raise ClusterError(f"flwr {' '.join(args)} printed no JSON: {out[-500:]!r}")
        return json.loads(out[start:])

    def online_nodes(self) -> int:
        """How many SuperNodes the SuperLink lists as online."""
        from securefed.flower.control import node_statuses

        return sum(1 for status in node_statuses(self.control_address, self._ca).values()
                   if status == "online")

    def wait_nodes_online(self, count: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.supernodes:
                if proc is not None:
                    self._check_alive(proc)
            if self.online_nodes() >= count:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"fewer than {count} SuperNodes online after {timeout:.0f} s\n"
                                   + self.logs())
            time.sleep(0.5)

    # ------------------------------------------------------------------ runs
    def submit(self, app_dir: str | Path, run_config: Mapping[str, Any] | None = None) -> int:
        """Start a run of the app in ``app_dir``; its run id.

        With a consortium the app is signed with the consortium key, stored in the
        SuperLink's database and started by hash (what ``securefed deploy submit`` does);
        otherwise it is submitted with ``flwr run``.
        """
        if self.coordinator is not None:
            from securefed.flower.apps import build_fab, sign_fab, start_run, store_signed_app
            from securefed.flower.bundle import load_signing_key

            assert self.database is not None
            if self.coordinator.roster is not None and "secagg-roster" not in (run_config or {}):
                run_config = {**(run_config or {}), "secagg-roster": str(self.coordinator.roster)}
            app = sign_fab(build_fab(app_dir), load_signing_key(self.coordinator.signing_key))
            store_signed_app(self.database, app)
            return start_run(self.control_address, root_certificates=self.tls_dir / "ca.pem"
                             if self.tls_dir else None, app=app, run_config=run_config or {})
        args = ["run", str(Path(app_dir).absolute()), "local", "--format", "json"]
        if run_config:
            path = self.workdir / f"run-config-{int(time.time() * 1000)}.toml"
            path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items()),
                            encoding="utf-8")
            args += ["--run-config", str(path)]
        data = self._json(*args)
        if not data.get("success", True) or "run-id" not in data:
            raise ClusterError(f"flwr run did not start a run: {data}")
        return int(data["run-id"])

    def run_app(
        self,
        app_dir: str | Path,
        *,
        run_config: Mapping[str, Any] | None = None,
        timeout: float = 300.0,
        done_file: str | Path | None = None,
        on_poll: Any = None,
        poll_interval: float = 0.3,
        resume_attempts: int = 0,
    ) -> RunOutcome:
        """Submit the Flower app in ``app_dir`` and wait until the run has finished.

        ``done_file``, when given, is a path the ServerApp writes at its end: the wait checks
        for it often and asks the SuperLink for the run status less often.
        ``on_poll(cluster, seconds)`` is called on every poll, every ``poll_interval`` seconds;
        tests use it to kill a process mid-run (a shorter interval lands the kill closer to the
        moment it watches for).

        ``resume_attempts``: when the run fails or its ServerApp is lost (the SuperLink was
        restarted under it), submit it again with ``resume = true`` up to this many times;
        the ServerApp then continues from the run's checkpoint (``checkpoint-path``).
        """
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        t0 = time.monotonic()
        config = dict(run_config or {})
        run_id = self.submit(app_dir, config)
        run_ids = [run_id]
        deadline = t0 + timeout
        # With a done file to watch, ask for the status rarely, only to notice a ServerApp
        # that died before writing it.
        interval = 5.0 if done_file is None else 30.0
        last_status = 0.0
        link_pid = self.superlink.popen.pid if self.superlink else None
        status, details = "", ""
        while True:
            now = time.monotonic()
            self.record_children()
            if on_poll is not None:
                on_poll(self, now - t0)
            restarted = self.superlink is not None and self.superlink.popen.pid != link_pid
            done = done_file is not None and Path(done_file).exists()
            if restarted or (done and now - last_status > 1.0) or now - last_status > interval:
                status, details = self.run_status(run_id) if self._healthy(self.control_address) \
                    else ("", "")
                last_status = time.monotonic()
                lost = restarted and not status.startswith("finished")
                if lost or (status.startswith("finished") and status != "finished:completed"
                            and resume_attempts > 0 and not _aborted(done_file)):
                    if resume_attempts <= 0:
                        break
                    resume_attempts -= 1
                    if lost:  # its ServerApp died with the old SuperLink; stop the orphan
                        self._stop_run(run_id)
                    link_pid = self.superlink.popen.pid if self.superlink else None
                    run_id = self.submit(app_dir, {**config, "resume": True})
                    run_ids.append(run_id)
                    continue
                if status.startswith("finished"):
                    break
            if now > deadline:
                self._stop_run(run_id)
                raise ClusterError(f"run {run_id} did not finish within {timeout} s "
                                   f"(last status {status!r})\n" + self.run_log(run_id))
            time.sleep(poll_interval)
        seconds = time.monotonic() - t0
        log = "" if status == "finished:completed" else self.run_log(run_id)
        return RunOutcome(run_id=run_id, status=status, details=details, seconds=seconds, log=log,
                          run_ids=tuple(run_ids))

    def run_status(self, run_id: int) -> tuple[str, str]:
        """``("finished:completed", details)`` etc., asked of the Control API from this
        process (a ``flwr ls`` would be a Python start-up: seconds of CPU taken from the
        cluster it is watching)."""
        from securefed.flower.control import run_status

        return run_status(self.control_address, self._ca, run_id)

    def _stop_run(self, run_id: int) -> None:
        """Ask the SuperLink to stop a run; a failure to do so is logged, not raised (the run
        may have ended meanwhile, and the caller goes on either way)."""
        from securefed.flower.control import stop_run

        try:
            stop_run(self.control_address, self._ca, run_id)
        except Exception as exc:  # noqa: BLE001 - best effort, reported
            _LOG.warning("could not stop run %s: %s", run_id, exc)

    def run_log(self, run_id: int) -> str:
        try:
            return self.flwr("log", str(run_id), "local", "--show", timeout=30)
        except (ClusterError, subprocess.TimeoutExpired) as exc:
            return f"(no log: {exc})"

    # ------------------------------------------------------------------ processes
    def _procs(self) -> list[_Proc]:
        procs = [p for p in self.supernodes if p is not None]
        if self.superlink is not None:
            procs.append(self.superlink)
        if self.gateway is not None:
            procs.append(self.gateway)
        return procs

    def record_children(self) -> None:
        """Remember every live descendant of the processes we started (read from /proc),
        with its start time, and forget those that have exited."""
        parents = _parent_map()  # one pass over /proc for all of them
        for proc in self._procs():
            if proc.popen.poll() is None:
                for pid in descendants(proc.popen.pid, parents):
                    st = _start_time(pid)
                    if st is not None:
                        proc.known.setdefault(pid, st)
            proc.known = _still_ours(proc.known)

    def start_node(self, index: int) -> None:
        """(Re)start SuperNode ``index`` with its node config, e.g. after :meth:`kill_node`."""
        if self.supernodes[index] is not None:
            raise ClusterError(f"SuperNode {index} is already running")
        self.supernodes[index] = self._spawn_node(index)

    def kill_node(self, index: int) -> None:
        """SIGKILL SuperNode ``index`` and everything it started, as a crashed machine would."""
        proc = self.supernodes[index]
        if proc is None:
            return
        self.record_children()
        if proc.popen.poll() is None:
            _signal(proc.popen.pid, signal.SIGKILL)
        for pid in _still_ours(proc.known):
            _signal(pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)
        self.supernodes[index] = None

    def all_pids(self) -> set[int]:
        """Every PID started by this cluster that is still alive."""
        self.record_children()
        pids: set[int] = set()
        for proc in self._procs():
            if proc.popen.poll() is None:
                pids.add(proc.popen.pid)
            pids |= set(_still_ours(proc.known))
        return pids

    def stop(self) -> None:
        """SIGTERM the SuperNodes, then the SuperLink and gateway; SIGKILL by PID what is
        left after a deadline."""
        self.record_children()
        nodes = [p for p in self.supernodes if p is not None]
        for proc in nodes:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        self._wait_exit(nodes, self.stop_timeout / 2)
        servers = [p for p in (self.superlink, self.gateway) if p is not None]
        for proc in servers:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        self._wait_exit(servers, self.stop_timeout / 2)
        leftovers: dict[int, int] = {}
        for proc in self._procs():
            if proc.popen.poll() is None:
                st = _start_time(proc.popen.pid)
                if st is not None:
                    leftovers[proc.popen.pid] = st
            leftovers.update(_still_ours(proc.known))
        for pid in _still_ours(leftovers):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _still_ours(leftovers):
            time.sleep(0.1)
        for pid in _still_ours(leftovers):
            _signal(pid, signal.SIGKILL)
        for proc in self._procs():
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.supernodes = []
        self.superlink = None
        self.gateway = None

    @staticmethod
    def _wait_exit(procs: Sequence[_Proc], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    def tail(self, proc: _Proc, lines: int = 40) -> str:
        try:
            text = proc.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return f"--- last lines of {proc.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        """The tail of every process's log (for a failing test's message)."""
        return "\n".join(self.tail(p) for p in self._procs())


def _aborted(done_file: str | Path | None) -> bool:
    """Whether the ServerApp itself ended the run (its summary says ``aborted``): a protocol
    abort is a result, not a crash, and is not resumed."""
    if done_file is None or not Path(done_file).exists():
        return False
    try:
        return json.loads(Path(done_file).read_text(encoding="utf-8")).get("status") == "aborted"
    except (OSError, ValueError):
        return False
