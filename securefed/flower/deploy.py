"""``securefed deploy``: one command per party to set up, start and use a deployment.

=====================================  ==================================================
``securefed deploy init``              write the coordinator's and every hospital's folder
                                       (:mod:`securefed.flower.bundle`)
``securefed deploy superlink``         coordinator: SuperLink on loopback (TLS, node
                                       authentication, database) behind the Fleet-only
                                       gateway; registers every hospital's node key
``securefed deploy node``              hospital: check the connection, then start the
                                       SuperNode (node key, trusted-entities, warm ClientApp)
``securefed deploy sign``              whoever holds the app-signing key: sign the app
``securefed deploy submit``            coordinator: submit the signed app, wait, and continue
                                       from the checkpoint if the SuperLink or ServerApp dies
=====================================  ==================================================
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from securefed.errors import ConfigurationError, ProtocolAbort
from securefed.flower.control import run_status, stop_run

__all__ = ["add_deploy_commands"]

_INTERNAL_PORT_OFFSET = 1  # the SuperLink listens on loopback at the gateway's port + 1


def _env(home: Path) -> dict[str, str]:
    from securefed.flower.cluster import offline_env

    home.mkdir(parents=True, exist_ok=True)
    return offline_env(flwr_home=home)


def _cmd_init(args: argparse.Namespace) -> int:
    from securefed.flower.bundle import make_consortium

    names = [n.strip() for n in args.hospitals.split(",") if n.strip()]
    coordinator, hospitals = make_consortium(args.out, hospitals=names, host=args.host,
                                             port=args.port, roster=args.roster,
                                             overwrite=args.overwrite)
    print(f"coordinator folder (keep on the coordinator machine): {coordinator.folder}")
    print(f"  start with: securefed deploy superlink --bundle {coordinator.folder}")
    print(f"  CA private key {coordinator.tls_dir / 'ca.key'}: move it offline")
    for h in hospitals:
        print(f"hospital {h.name} (client id {h.client_id}): give {h.folder} to that hospital only;")
        print("  it starts with: securefed deploy node --bundle <folder> --data records.csv "
              "--schema schema.json")
    return 0


def _cmd_superlink(args: argparse.Namespace) -> int:
    """Start the SuperLink and the gateway, register the node keys, supervise both."""
    from securefed.flower.bundle import load_coordinator

    coord = load_coordinator(args.bundle)
    tls = coord.tls_dir
    state = Path(args.state or coord.folder / "state").absolute()
    state.mkdir(parents=True, exist_ok=True)
    internal = args.internal_port or coord.port + _INTERNAL_PORT_OFFSET
    # Flower's SuperLink, its Control-only and Fleet-only middleware skipped for the other
    # APIs' requests (securefed.flower.link)
    link = subprocess.Popen([  # noqa: S603
        sys.executable, "-m", "securefed.flower.link", "--ssl-certfile", str(tls / "server.pem"),
        "--ssl-keyfile", str(tls / "server.key"), "--ssl-ca-certfile", str(tls / "ca.pem"),
        "--host", "127.0.0.1", "--port", str(internal), "--database", str(state / "superlink.db"),
        "--enable-supernode-auth", "--disable-runtime-dependency-installation"],
        env=_env(state / "flwr-superlink"))
    gateway = subprocess.Popen([  # noqa: S603
        sys.executable, "-m", "securefed.flower.gateway", "--listen", f"{args.listen}:{coord.port}",
        "--upstream", f"127.0.0.1:{internal}", "--certfile", str(tls / "server.pem"),
        "--keyfile", str(tls / "server.key"), "--ca", str(tls / "ca.pem")])
    _write_cli_config(coord, internal)  # for `flwr ls` etc. on this machine (docs)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        from securefed.flower.diagnose import check_superlink

        deadline = time.monotonic() + 60
        while True:
            try:
                check_superlink(f"127.0.0.1:{internal}", root_certificates=tls / "ca.pem")
                break
            except ConfigurationError:
                if time.monotonic() > deadline or link.poll() is not None:
                    raise
                time.sleep(0.5)
        from securefed.flower.control import AlreadyRegistered, register_node

        for name, path in coord.node_public_keys().items():
            try:
                register_node(f"127.0.0.1:{internal}", tls / "ca.pem", path)
                said = "registered"
            except AlreadyRegistered:  # a restart on the same database
                said = "registered (already)"
            except Exception as exc:  # noqa: BLE001 - named, and the others still registered
                said = f"NOT registered ({type(exc).__name__}: {str(exc)[-300:]})"
            print(f"securefed: node key of {name}: {said}", flush=True)
        print(f"securefed: SuperLink ready; hospitals dial {coord.host}:{coord.port}; the Control "
              f"API is at 127.0.0.1:{internal} on this machine only", flush=True)
        while not stopping and link.poll() is None and gateway.poll() is None:
            time.sleep(0.5)
    finally:
        for proc in (gateway, link):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (gateway, link):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0 if stopping else 1


def _write_cli_config(coord: Any, internal: int) -> Path:
    home = coord.folder / "state" / "flwr-cli"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "coordinator"\n\n[superlink.coordinator]\n'
        f'address = "127.0.0.1:{internal}"\n'
        f'root-certificates = "{coord.tls_dir / "ca.pem"}"\n', encoding="utf-8")
    return home


def _node_config(hospital: Any, *, data: str | None = None, schema: str | None = None,
                 identity_key: str | None = None) -> dict[str, Any]:
    config = dict(hospital.node_config)
    if data is not None:
        config["data-path"] = str(Path(data).absolute())
    if schema is not None:
        config["schema-path"] = str(Path(schema).absolute())
    if identity_key is not None:
        config["identity-key"] = str(Path(identity_key).absolute())
    return config


def node_command(hospital: Any, *, data: str | None = None, schema: str | None = None,
                 identity_key: str | None = None, runtime_port: int = 9094,
                 poll_interval: float = 0.25) -> list[str]:
    """The command a hospital's ``securefed deploy node`` runs (exposed for tests)."""
    from securefed.flower.cluster import _config_arg

    config = _node_config(hospital, data=data, schema=schema, identity_key=identity_key)
    return [sys.executable, "-m", "securefed.flower.warm", "node", "--poll-interval",
            str(poll_interval), "--", "--root-certificates", str(hospital.ca_cert),
            "--superlink", hospital.superlink, "--port", str(runtime_port),
            "--auth-supernode-private-key", str(hospital.node_key),
            "--trusted-entities", str(hospital.trusted_entities),
            "--node-config", _config_arg(config)]


def _cmd_node(args: argparse.Namespace) -> int:
    from securefed.flower.bundle import load_hospital
    from securefed.flower.diagnose import check_superlink
    from securefed.flower.nodedata import load_node_data

    hospital = load_hospital(args.bundle)
    if args.insecure:  # only to show the diagnosis of a mismatch; never in a deployment
        check_superlink(hospital.superlink, insecure=True)
    else:
        check_superlink(hospital.superlink, root_certificates=hospital.ca_cert)
    command = node_command(hospital, data=args.data, schema=args.schema,
                           identity_key=args.identity_key, runtime_port=args.runtime_port,
                           poll_interval=args.poll_interval)
    config = _node_config(hospital, data=args.data, schema=args.schema,
                          identity_key=args.identity_key)
    if "roster" in config and "identity-key" not in config:
        print("securefed: no --identity-key: this node can take part in plain runs only; secure "
              "aggregation (malicious-server mode) needs the hospital's identity file", flush=True)
    if "roster" in config and "identity-key" in config:
        from securefed.flower.secagg_stages import node_secagg_settings

        node_secagg_settings(config, hospital.client_id)  # refuse a missing or foreign key now
    data = load_node_data(config)  # refuse bad data here, with the row named
    print(f"securefed: {hospital.name} (client {hospital.client_id}): {data.num_examples} records, "
          f"{data.X.shape[1]} features; SuperLink {hospital.superlink} reachable over TLS",
          flush=True)
    home = Path(args.home or hospital.folder / "flwr-home").absolute()
    env = _env(home)
    os.execvpe(command[0], command, env)  # noqa: S606 - replace this process with the node
    return 0  # pragma: no cover


def _cmd_sign(args: argparse.Namespace) -> int:
    from securefed.flower import APP_DIR
    from securefed.flower.apps import build_fab, sign_fab
    from securefed.flower.bundle import load_signing_key

    app = sign_fab(build_fab(args.app or APP_DIR), load_signing_key(args.key))
    path = app.save(args.out)
    print(f"signed app {app.fab_hash[:16]}... -> {path}")
    return 0


def _run_config(items: list[str]) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    config: dict[str, Any] = {}
    for item in items:
        path = Path(item)
        if path.suffix == ".toml" and path.is_file():
            config.update(tomllib.loads(path.read_text(encoding="utf-8")))
        else:
            try:
                config.update(tomllib.loads(item))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigurationError(f"run config {item!r} is not 'key = value' TOML: {exc}") from exc
    return config


#: How long the SuperLink may stay unreachable (a restart) before a run is taken for lost.
UNREACHABLE_GRACE = 60.0


def submit_and_wait(*, address: str, ca: Path, database: Path, app: Any,
                    run_config: Mapping[str, Any], resume_attempts: int,
                    timeout: float, log: Any = print) -> tuple[str, list[int]]:
    """Submit ``app``; wait; on a failure that is not the ServerApp's own abort, submit again
    with ``resume = true`` (up to ``resume_attempts`` times).  Returns (status, run ids).

    A run is taken for lost only when the SuperLink has been unreachable for
    :data:`UNREACHABLE_GRACE` seconds, or answers but no longer lists it; before a lost or
    failed run is submitted again, the old one is stopped (and must be seen finished), so two
    ServerApps never continue from the same checkpoint."""
    from securefed.flower.apps import start_run, store_signed_app

    if resume_attempts and not run_config.get("checkpoint-path"):
        raise ConfigurationError("resuming needs checkpoint-path in the run config")
    config = dict(run_config)
    run_ids: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            store_signed_app(database, app)
            run_ids.append(start_run(address, root_certificates=ca, app=app, run_config=config))
            log(f"securefed: run {run_ids[-1]} started")
        except Exception as exc:  # noqa: BLE001 - the SuperLink is down; try again below
            if time.monotonic() > deadline:
                raise
            log(f"securefed: cannot submit ({type(exc).__name__}: {exc}); retrying in 2 s")
            time.sleep(2)
            continue
        status = ""
        unreachable_since: float | None = None
        while time.monotonic() < deadline:
            try:
                status, _ = run_status(address, ca, run_ids[-1])
                unreachable_since = None
                if status == "":  # the SuperLink answers but no longer knows the run
                    status = "lost"
            except Exception:  # noqa: BLE001 - SuperLink restarting: wait, then call it lost
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                status = "lost" if now - unreachable_since >= UNREACHABLE_GRACE else "unreachable"
            if status.startswith("finished") or status == "lost":
                break
            time.sleep(2)
        if status == "lost":
            _stop_and_wait(address, ca, run_ids[-1], deadline=deadline, log=log)
        result = Path(str(config.get("result-path", ""))) if config.get("result-path") else None
        aborted = bool(result and result.exists() and
                       json.loads(result.read_text(encoding="utf-8")).get("status") == "aborted")
        if status == "finished:completed" or aborted or resume_attempts <= 0 \
                or time.monotonic() >= deadline:
            return status, run_ids
        resume_attempts -= 1
        config["resume"] = True
        log(f"securefed: run {run_ids[-1]} ended with {status!r}; continuing from the checkpoint")


def _stop_and_wait(address: str, ca: Path, run_id: int, *, deadline: float, log: Any) -> None:
    """Stop a run taken for lost and wait until the SuperLink reports it finished (or does
    not know it), so that its ServerApp cannot go on beside the resumed one."""
    while time.monotonic() < deadline:
        try:
            status, _ = run_status(address, ca, run_id)
            if status == "" or status.startswith("finished"):
                return
            stop_run(address, ca, run_id)
            log(f"securefed: stopping run {run_id} ({status}) before resuming")
        except Exception as exc:  # noqa: BLE001 - still unreachable: keep trying
            log(f"securefed: cannot stop run {run_id} yet ({type(exc).__name__}); retrying")
        time.sleep(2)
    raise ProtocolAbort(f"run {run_id} could not be stopped before the deadline; not resuming "
                        "beside it")


def _cmd_submit(args: argparse.Namespace) -> int:
    from securefed.flower import APP_DIR
    from securefed.flower.apps import SignedApp, build_fab, sign_fab
    from securefed.flower.bundle import load_coordinator, load_signing_key

    coord = load_coordinator(args.bundle)
    if args.signed:
        app = SignedApp.load(args.signed)
    else:
        app = sign_fab(build_fab(args.app or APP_DIR), load_signing_key(coord.signing_key))
    internal = args.internal_port or coord.port + _INTERNAL_PORT_OFFSET
    state = Path(args.state or coord.folder / "state").absolute()
    config = _run_config(args.run_config or [])
    if coord.roster is not None:
        config.setdefault("secagg-roster", str(coord.roster))
    status, run_ids = submit_and_wait(
        address=f"127.0.0.1:{internal}", ca=coord.tls_dir / "ca.pem",
        database=state / "superlink.db", app=app, run_config=config,
        resume_attempts=args.resume_attempts, timeout=args.timeout)
    print(json.dumps({"status": status, "run-ids": run_ids}))
    return 0 if status == "finished:completed" else 1


def add_deploy_commands(sub: Any) -> None:
    """Add ``securefed deploy ...`` to the command line's sub-parsers."""
    d = sub.add_parser("deploy", help="set up and run a Flower deployment across hospitals")
    dsub = d.add_subparsers(dest="deploy_command", required=True)

    p = dsub.add_parser("init", help="write the coordinator's and every hospital's folder")
    p.add_argument("--hospitals", required=True, help="comma-separated names, in client-id order")
    p.add_argument("--host", required=True, help="the name or address hospitals dial")
    p.add_argument("--port", type=int, default=9092, help="the hospital-facing port (default 9092)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--roster", help="the hospitals' roster.json (securefed keys identity, made "
                   "by the hospitals, not the coordinator), copied to every folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing keys")
    p.set_defaults(func=_cmd_init)

    p = dsub.add_parser("superlink", help="coordinator: start SuperLink + gateway, register nodes")
    p.add_argument("--bundle", required=True, help="the coordinator folder")
    p.add_argument("--listen", default="0.0.0.0", help="address the gateway listens on")
    p.add_argument("--internal-port", type=int, default=0,
                   help="the SuperLink's loopback port (default: the gateway's port + 1)")
    p.add_argument("--state", help="folder for the database (default: <bundle>/state)")
    p.set_defaults(func=_cmd_superlink)

    p = dsub.add_parser("node", help="hospital: check the connection and start the SuperNode")
    p.add_argument("--bundle", required=True, help="this hospital's folder")
    p.add_argument("--data", help="the hospital's records (CSV)")
    p.add_argument("--schema", help="the agreed schema (JSON)")
    p.add_argument("--identity-key", help="this hospital's identity file (securefed keys "
                   "identity), for secure aggregation")
    p.add_argument("--runtime-port", type=int, default=9094,
                   help="local port between the SuperNode and its ClientApps (127.0.0.1)")
    p.add_argument("--poll-interval", type=float, default=0.25,
                   help="seconds between polls for a new message while a run is active "
                        "(Flower's default: 3); at rest a node polls once a second")
    p.add_argument("--home", help="Flower's working folder (default: <bundle>/flwr-home)")
    p.add_argument("--insecure", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_node)

    p = dsub.add_parser("sign", help="sign the app with the consortium's app-signing key")
    p.add_argument("--key", required=True, help="app-signing.key")
    p.add_argument("--app", help="app folder (default: the installed securefed app)")
    p.add_argument("--out", required=True, help="signed app file to write (public)")
    p.set_defaults(func=_cmd_sign)

    p = dsub.add_parser("submit", help="coordinator: submit a signed run and wait for it")
    p.add_argument("--bundle", required=True, help="the coordinator folder")
    p.add_argument("--signed", help="a signed app file (default: sign with <bundle>/app-signing.key)")
    p.add_argument("--app", help="app folder to sign (default: the installed securefed app)")
    p.add_argument("--run-config", action="append",
                   help="'key = value' TOML or a .toml file (repeatable)")
    p.add_argument("--resume-attempts", type=int, default=3,
                   help="times to continue from the checkpoint after a crash (default 3)")
    p.add_argument("--timeout", type=float, default=24 * 3600.0)
    p.add_argument("--internal-port", type=int, default=0)
    p.add_argument("--state", help="folder of the SuperLink's database (default: <bundle>/state)")
    p.set_defaults(func=_cmd_submit)
