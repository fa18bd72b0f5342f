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
  It asks its SuperNode for a task when the SuperNode wakes it through a FIFO (a message
  and all its objects have arrived), and on its own only once a second as a safety net
  (Flower: a poll every ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, so each message waited
  half an interval).  Before any fork it runs each cryptographic primitive of the
  protocol once on fixed public inputs (OpenSSL's per-process set-up, ~25 ms of CPU, was
  paid by every forked ClientApp).  Objects not there yet are asked for again after
  50 ms, doubling up to 0.2 s (Flower: 1 s doubling up to 10 s;
  :func:`securefed.flower.transport.fast_object_pulls`).
* :func:`run_supernode` runs Flower's ``flower-supernode`` with these changes: the pause
  between two polls for a new message when none came (3 s in Flower) is
  ``poll_interval`` (0.25 s) while a run is active (a message in the last 30 s) and
  ``idle_poll_interval`` (1 s) at rest; the heartbeat interval is 10 s, Flower's minimum
  (30 s in Flower, so a crashed node looked online for up to a minute and its restart was
  refused until then); its waits for the ClientApp's reply end when the reply is stored
  (Flower: 0.5 s polls); it wakes the executor once a message's objects are in; and it
  asks the SuperLink again for an object not there yet after 50 ms.  A ClientApp's reply
  that Flower's loop left in the node's state is pushed at its next pass
  (:func:`_pull_and_wake`: after a SuperLink restart, a stopped run's stray reply could
  take the push stage of the next run's message).  None of these changes what is sent,
  checked or stored.
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

    executor [--node-config CONFIG] [--wake-fifo FIFO] --runtime-api-address 127.0.0.1:9094 [--insecure | --root-certificates CA]
    supernode [--poll-interval S] [--idle-poll-interval S] [--wake-fifo FIFO] -- <flower-supernode arguments>
    node [--poll-interval S] [--idle-poll-interval S] -- <flower-supernode arguments>   # both, supervised

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

def _warm_crypto() -> None:
    """Run each primitive of the protocol once, on fixed public inputs, before any fork.

    Why: the first X25519 key that a process builds costs about 25 ms of CPU (OpenSSL
    looks the algorithm up once per process); a forked ClientApp paid it on every
    message.  Nothing here is secret and no random generator is touched (fixed bytes in,
    results discarded), so a forked child shares no key material with its parent or its
    siblings: each still draws its own keys from the OS.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from nacl.bindings import crypto_sign_open

    fixed = bytes(range(32))  # a public constant, never a key anyone uses
    agreement = X25519PrivateKey.from_private_bytes(fixed)
    agreement.exchange(agreement.public_key())
    signing = Ed25519PrivateKey.from_private_bytes(fixed)
    # signatures are made with OpenSSL and checked with libsodium (securefed.identity)
    crypto_sign_open(signing.sign(b"warm") + b"warm", signing.public_key().public_bytes_raw())
    HKDF(algorithm=hashes.SHA256(), length=32, salt=fixed, info=b"warm").derive(fixed)
    AESGCM(fixed).decrypt(fixed[:12], AESGCM(fixed).encrypt(fixed[:12], b"warm", None), None)
    Cipher(algorithms.AES(fixed), modes.CTR(bytes(16))).encryptor().update(bytes(16))


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

    def __init__(self, *, close_in_child: Sequence[int] = ()) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self._fallback = SubprocessExecutor()
        self._children: set[int] = set()
        self._close_in_child = tuple(close_in_child)  # the executor's own wake-up FIFO

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
                for fd in self._close_in_child:
                    os.close(fd)
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
                 node_config: str | None = None, wake_fifo: str | None = None) -> None:
    """``flower-superexec`` with :class:`ForkExecutor`; ``argv`` as for flower-superexec.

    ``ready_file`` is created once the modules are loaded (the supervisor starts the
    SuperNode only then, so a node that is online answers at once).  ``node_config`` is the
    SuperNode's ``--node-config`` value: when it names a partition of the bundled public
    data, that federation is built here once (:func:`securefed.flower.nodedata.preload_node_data`)
    instead of in every message that needs it.  ``wake_fifo`` is the FIFO through which the
    SuperNode (:func:`run_supernode`) says that a message has arrived: the executor then asks
    for the task at once instead of at its next poll (see :class:`_WakeClock`).
    """
    missing = _preload(PRELOAD)
    if missing:
        print("securefed: warm executor could not preload " + "; ".join(missing), flush=True)
    _warm_crypto()
    if node_config:
        from flwr.common.config import parse_config_args

        from securefed.flower.nodedata import preload_node_data

        try:
            preload_node_data(parse_config_args([node_config]))
        except ValueError as exc:  # the SuperNode refuses the same value with its own message
            print(f"securefed: warm executor could not read --node-config {node_config!r}: {exc}",
                  flush=True)
    import flwr.supercore.inflatable.inflatable_utils as objects
    import flwr.supercore.superexec.run_superexec as loop

    from securefed.flower.transport import fast_object_pulls

    # A warm ClientApp asks its SuperNode for the message's objects as soon as it starts,
    # which may be before the SuperNode has them all; Flower then waits 1 s, 2 s, ...
    # before asking again (tuned for a ClientApp that took seconds to start).
    fast_object_pulls(objects)
    # While its SuperNode restarts (a crash, a refused activation) the executor retries the
    # local Runtime API; Flower's back-off grows to 20 s, which would idle a node that is
    # back.  The API is on this machine: retry at least once a second.
    import flwr.supercore.retry.http_retry as http_retry

    http_retry.MAX_RETRY_DELAY = 1.0
    from flwr.supercore.cli import flower_superexec

    wake_fd = None
    if wake_fifo:
        # read and write end in one: the FIFO never reads as closed while this process lives
        wake_fd = os.open(wake_fifo, os.O_RDWR | os.O_NONBLOCK)
        loop.time = _WakeClock(wake_fd)  # type: ignore[attr-defined]
    executor = ForkExecutor(close_in_child=() if wake_fd is None else (wake_fd,))
    loop.get_executor = lambda *_a, **_k: executor  # the one change to Flower's loop
    if ready_file:
        with open(ready_file, "w", encoding="ascii") as fh:
            fh.write(str(os.getpid()))
        # Enter Flower's loop only once the SuperNode's Runtime API accepts connections:
        # a refused first call would start Flower's exponential back-off (up to seconds).
        _wait_for_port(_runtime_address(argv, flag="--runtime-api-address"))
    sys.argv = ["flower-superexec", *argv]
    flower_superexec()


#: How often a woken executor still asks its SuperNode for a task on its own: only a safety
#: net for a lost wake-up (the FIFO full, a SuperNode restarted in between).
WAKE_FALLBACK_POLL = 1.0


class _WakeClock:
    """The ``time`` module as Flower's SuperExec loop sees it: its pause between two task
    polls ends as soon as a byte arrives on the wake-up FIFO (and after
    :data:`WAKE_FALLBACK_POLL` seconds at the latest).

    Why: Flower's executor polls its SuperNode for a new task every
    ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` seconds (1 s by default), so each message waited
    half an interval on average, and a round waits for its slowest node: three nodes polling
    every 0.5 s added about 0.37 s to every message round trip.  The SuperNode knows when a
    message has arrived and says so through the FIFO, which costs nothing while idle.

    The FIFO carries no data, only "look now": it sits in a folder only the node's user can
    open (mode 0700), and a process of that user writing to it could only make the executor
    ask its SuperNode for a task early, which the SuperNode answers as it would any poll.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def sleep(self, seconds: float) -> None:
        import select

        ready, _, _ = select.select([self._fd], [], [], WAKE_FALLBACK_POLL)
        if ready:
            try:
                while os.read(self._fd, 4096):
                    pass
            except BlockingIOError:
                pass

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


#: Seconds after the last message during which a SuperNode polls at its run-time interval;
#: after that it polls at its idle interval (a run's stages follow each other within
#: seconds, while a node at rest may wait hours for the next run).
ACTIVE_WINDOW = 30.0


class _PollClock:
    """The ``time`` module as the SuperNode loop sees it.

    Flower's loop sleeps 3 s between two polls of the SuperLink when no message came: here
    ``poll_interval`` while a run is active (a message came in the last
    :data:`ACTIVE_WINDOW` seconds) and ``idle_interval`` otherwise, so a node at rest costs
    the SuperLink a request a second instead of four.  Its other pauses (0.5 s) wait for
    something local: the ClientApp's reply and its objects in the SuperNode's own memory.
    Those end as soon as the reply or an object is stored (``event``, set by the SuperNode's
    state and object store, see :func:`run_supernode`), and after the pause Flower asked
    for at the latest.
    """

    def __init__(self, poll_interval: float, event: Any = None, *,
                 idle_interval: float | None = None) -> None:
        self._poll = poll_interval
        self._idle = poll_interval if idle_interval is None else max(idle_interval, poll_interval)
        self._event = event
        self._last_message = float("-inf")

    def message_arrived(self) -> None:
        self._last_message = time.monotonic()

    def poll_interval(self) -> float:
        """The pause before the next poll of the SuperLink."""
        active = time.monotonic() - self._last_message < ACTIVE_WINDOW
        return self._poll if active else self._idle

    def sleep(self, seconds: float) -> None:
        if seconds >= 1.0 or self._event is None:  # the idle poll of the SuperLink
            time.sleep(min(seconds, self.poll_interval()))
            return
        # a local wait: the caller checks its condition again on return, so a stale set
        # costs one extra check and a set before this call is never lost
        self._event.wait(seconds)
        self._event.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _wake(fifo: str) -> None:
    """Write one byte to the executor's wake-up FIFO; never fail (the executor also polls)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader (the executor restarts) or no FIFO: its own poll will do
        return
    try:
        os.write(fd, b"!")
    except OSError:  # full: a wake-up is already pending
        pass
    finally:
        os.close(fd)


def _notify_on_store(event: Any) -> None:
    """Make the SuperNode's state and object store set ``event`` whenever a message or an
    object is stored (the ClientApp's reply arrives through them)."""
    import functools

    from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    def notifying(method: Any) -> Any:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            finally:
                event.set()

        return wrapper

    InMemoryNodeState.store_message = notifying(InMemoryNodeState.store_message)  # type: ignore[method-assign]
    InMemoryObjectStore.put = notifying(InMemoryObjectStore.put)  # type: ignore[method-assign]


def _pending_reply_run(state: Any) -> int | None:
    """The run of a reply that a ClientApp has stored in the SuperNode's ``state`` and that no
    push stage has taken yet (``None``: there is none).  Looks only: the reply stays where
    it is for Flower's push stage to take."""
    with state.lock_msg_store:
        for entry in state.msg_store.values():
            metadata = entry.message.metadata
            if not entry.is_retrieved and metadata.reply_to_message_id:
                return int(metadata.run_id)
    return None


def _pull_and_wake(pull_and_store: Any, clock: _PollClock, wake_fifo: str | None = None) -> Any:
    """Flower's ``_pull_and_store_message`` for the SuperNode loop, with two changes.

    * When a message (and all its objects) is in, the poll clock is told (fast polls while a
      run is active) and the warm executor is woken to start its task at once.
    * When no new message came but a ClientApp's reply is waiting in the node's state, the
      reply's run is returned as if a message had come, so Flower's loop pushes it now.

    Why the second: Flower's loop pushes replies only in the stage that follows a pulled
    message, and that stage sends the first reply it finds, whichever message it answers.
    A message of a run that stopped while it was being received (its SuperLink killed in
    mid-pull; the run is then stopped and resubmitted) is dropped by that loop, but its task
    was already created, so its ClientApp still runs and replies.  That stray reply then
    takes the push stage of the next message pulled, for instance the resubmitted run's
    first message, whose own reply was left in the state unsent: the resubmitted run waited
    out its round timeout for that node's hello and failed ("no SuperNode answered for
    client ids [0]").  Nothing else changes: each reply is
    still pushed once, by Flower's own push stage, and a reply of a stopped run is still
    refused by the SuperLink and dropped.
    """

    def pull_and_wake(*args: Any, **kwargs: Any) -> Any:
        run_id = pull_and_store(*args, **kwargs)
        if run_id is not None:  # a message (and all its objects) is in: start its task now
            clock.message_arrived()
            if wake_fifo:
                _wake(wake_fifo)
            return run_id
        return _pending_reply_run(kwargs["state"])

    return pull_and_wake


def run_supernode(argv: Sequence[str], *, poll_interval: float = 0.25,
                  idle_poll_interval: float = 1.0, heartbeat_interval: int = 10,
                  wake_fifo: str | None = None) -> None:
    """``flower-supernode`` with a shorter idle poll and heartbeat (see the module docstring).

    It polls every ``poll_interval`` seconds while a run is active and every
    ``idle_poll_interval`` seconds at rest; its local waits (for the ClientApp's reply and
    its objects) end when they are stored (:class:`_PollClock`), and with ``wake_fifo`` it wakes the warm executor as soon as a
    message and all its objects are stored (:class:`_WakeClock`).
    """
    if not 0.01 <= poll_interval <= 3.0:
        from securefed.errors import ConfigurationError

        raise ConfigurationError(f"poll interval must be in [0.01, 3] s, got {poll_interval!r}")
    if not poll_interval <= idle_poll_interval <= 30.0:
        from securefed.errors import ConfigurationError

        raise ConfigurationError(f"idle poll interval must be in [poll interval = {poll_interval}, "
                                 f"30] s, got {idle_poll_interval!r}")
    import threading

    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as fleet
    import flwr.supernode.start_client_internal as node_loop
    from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
    from flwr.supernode.cli import flower_supernode

    stored = threading.Event()
    _notify_on_store(stored)
    clock = _PollClock(poll_interval, stored, idle_interval=idle_poll_interval)
    node_loop.time = clock  # type: ignore[attr-defined]
    # The SuperLink hands a message out as soon as its sender has announced it, often
    # before all its objects have arrived: ask again after 50 ms, not Flower's 1 s.
    from securefed.flower.transport import fast_object_pulls

    fast_object_pulls(node_loop)
    node_loop._pull_and_store_message = _pull_and_wake(node_loop._pull_and_store_message,
                                                       clock, wake_fifo)
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
             idle_poll_interval: float = 1.0, activation_wait: float = 90.0) -> int:
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
                                 "--idle-poll-interval", str(idle_poll_interval),
                                 "--wake-fifo", wake, "--", *node_args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        threading.Thread(target=forward, args=(proc.stdout,), daemon=True).start()
        return proc

    import tempfile

    private = tempfile.mkdtemp(prefix="securefed-node-")  # mode 0700: this user only
    ready = os.path.join(private, "executor-ready")
    wake = os.path.join(private, "wake")  # the SuperNode wakes the executor through it
    os.mkfifo(wake, 0o600)
    procs["executor"] = subprocess.Popen([*me, "executor", "--ready-file", ready,  # noqa: S603
                                          "--wake-fifo", wake,
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
        for remove, path in ((os.remove, ready), (os.remove, wake), (os.rmdir, private)):
            try:
                remove(path)
            except OSError:  # already gone (the ready file is removed once the executor is up)
                pass
    return int(code)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("executor", "supernode", "node"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "executor":
        own: dict[str, str | None] = {"--ready-file": None, "--node-config": None,
                                      "--wake-fifo": None}
        for flag in own:
            if flag in rest[:-1]:
                i = rest.index(flag)
                own[flag] = rest[i + 1]
                rest = rest[:i] + rest[i + 2:]
        run_executor(rest, ready_file=own["--ready-file"], node_config=own["--node-config"],
                     wake_fifo=own["--wake-fifo"])
        return 0
    parser = argparse.ArgumentParser(prog=f"python -m securefed.flower.warm {command}")
    parser.add_argument("--poll-interval", type=float, default=0.25,
                        help="seconds between two polls for a new message when none came, "
                             "while a run is active (Flower's default: 3)")
    parser.add_argument("--idle-poll-interval", type=float, default=1.0,
                        help="the same at rest: no message for 30 s")
    parser.add_argument("--wake-fifo", default=None,
                        help="FIFO through which the SuperNode wakes its warm executor "
                             "(set by the node command)")
    if "--" in rest:
        split = rest.index("--")
        own, flower_args = rest[:split], rest[split + 1:]
    else:
        own, flower_args = [], rest
    opts = parser.parse_args(own)
    if command == "supernode":
        run_supernode(flower_args, poll_interval=opts.poll_interval,
                      idle_poll_interval=opts.idle_poll_interval, wake_fifo=opts.wake_fifo)
        return 0
    return run_node(flower_args, poll_interval=opts.poll_interval,
                    idle_poll_interval=opts.idle_poll_interval)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
