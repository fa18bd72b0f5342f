"""Checkpoints, resumption, rejoining hospitals, signed apps, the gateway's filter and the
connection diagnostics, without starting Flower's servers (the real-process versions are in
tests/test_flower_deploy.py)."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from securefed.errors import ConfigurationError, KeyMaterialError  # noqa: E402
from securefed.flower.checkpoint import (  # noqa: E402
    Checkpoint,
    in_flight_path,
    load_checkpoint,
    load_in_flight,
    save_checkpoint,
)
from securefed.flower.clientapp import app as client_app  # noqa: E402
from securefed.flower.serverapp import run_server  # noqa: E402
from securefed.flower.settings import app_run_config  # noqa: E402
from securefed.flower.testing import InProcessGrid  # noqa: E402

NODES = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
FAST = {"round-timeout": 5.0, "straggler-timeout": 0.5, "eval-data": "none"}


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The hospitals' identity keys and roster (secure aggregation's default mode)."""
    from securefed.identity import write_identity_files

    roster, keys = write_identity_files(["h0", "h1", "h2"], tmp_path_factory.mktemp("pki"))
    nodes = [{**NODES[i], "identity-key": str(keys[f"h{i}"]), "roster": str(roster),
              "secagg-min-clients": 2} for i in range(3)]
    return nodes, {"secagg-roster": str(roster), "secagg-min-clients": 2}


class _Crash(Exception):
    """Stands for the ServerApp process dying."""


class CrashingGrid(InProcessGrid):
    """Raises :class:`_Crash` when a training message of round ``crash_round`` is pushed (the
    plain round's message, or the secure round's message that carries the model)."""

    def __init__(self, *args, crash_round: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.crash_round = crash_round
        self.armed = True

    def push_messages(self, messages):
        from securefed.flower.transport import read_content

        messages = list(messages)
        for msg in messages:
            fields, _ = read_content(msg.content)
            if self.armed and msg.metadata.message_type.startswith("train") \
                    and int(fields.get("round", -1)) == self.crash_round:
                self.armed = False
                raise _Crash(f"killed at round {self.crash_round}")
        return super().push_messages(messages)


def _central_dp(**extra):
    # FedMedHeter with a server optimiser (server state) under central DP (a ledger); the
    # reproducible noise mode draws the noise from the server generator, so two runs compare
    return app_run_config({"channel": "plain", "strategy": "fedmedheter", "server-optimizer": "adam",
                           "num-rounds": 4, "seed": 3, "dp": "central",
                           "dp-clip-norm": 1.0, "dp-noise-multiplier": 1.1, "dp-reproducible-noise": True,
                           **FAST, **extra})


def test_a_resumed_run_equals_the_uninterrupted_run(tmp_path) -> None:
    """Killed after round 1 (while round 2 is being sent), resumed from the checkpoint: the
    same rounds, the same model bit for bit and the same epsilon per round as a run that
    never stopped (the nodes kept their state, as SuperNodes do when only the ServerApp dies)."""
    reference = run_server(InProcessGrid(client_app, NODES, _central_dp()), _central_dp(), log=quiet)
    ckpt = tmp_path / "run.ckpt"
    cfg = _central_dp(**{"checkpoint-path": str(ckpt), "result-path": str(tmp_path / "r.json")})
    grid = CrashingGrid(client_app, NODES, cfg, crash_round=2)
    with pytest.raises(_Crash, match="killed at round 2"):
        run_server(grid, cfg, log=quiet)
    # not the protocol's own stop: written "interrupted", which a supervisor resumes
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "interrupted"
    saved = load_checkpoint(ckpt)
    assert saved.completed == 2
    assert [r["round"] for r in saved.summary["rounds"]] == [0, 1]
    resumed = run_server(grid, {**cfg, "resume": True}, log=quiet)
    assert resumed["status"] == "completed" and resumed["resumed_at"] == [2]
    assert [r["round"] for r in resumed["rounds"]] == [0, 1, 2, 3]
    np.testing.assert_array_equal(resumed["final_params"], reference["final_params"])
    assert [r["epsilon"] for r in resumed["rounds"]] == [r["epsilon"] for r in reference["rounds"]]
    # the ledger continued: epsilon grows every round and never restarts from zero
    eps = [r["epsilon"] for r in resumed["rounds"]]
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
    assert load_checkpoint(ckpt).completed == 4
    # a finished run resumed again has nothing left to do
    again = run_server(grid, {**cfg, "resume": True}, log=quiet)
    assert [r["round"] for r in again["rounds"]] == [0, 1, 2, 3]


def test_a_resumed_distributed_dp_run_keeps_its_ledger(tmp_path, pki) -> None:
    """Distributed DP under secure aggregation, the ServerApp killed while round 2's model is
    being sent: the resumed run (a new Flower run, so the nodes start with fresh state) runs
    rounds 2 and 3 only.  Round 2's first attempt was recorded in flight before its model
    went out (its noisy sum could have been unmasked before a crash), so the resumed run
    charges it: from round 2 on, epsilon is the uninterrupted run's one round later, exactly
    one round's charge more; nothing completed is charged twice."""
    nodes, secagg_keys = pki
    cfg = app_run_config({"channel": "secagg", "dp": "distributed", "dp-clip-norm": 1.0,
                          "dp-noise-multiplier": 1.1, "num-rounds": 4, "seed": 3,
                          **secagg_keys, **FAST})
    reference = run_server(InProcessGrid(client_app, nodes, cfg), cfg, log=quiet)
    ckpt = tmp_path / "run.ckpt"
    cfg = {**cfg, "checkpoint-path": str(ckpt)}
    with pytest.raises(_Crash, match="killed at round 2"):
        run_server(CrashingGrid(client_app, nodes, cfg, crash_round=2), cfg, log=quiet)
    assert load_checkpoint(ckpt).completed == 2
    resumed = run_server(InProcessGrid(client_app, nodes, cfg), {**cfg, "resume": True}, log=quiet)
    assert resumed["status"] == "completed" and resumed["resumed_at"] == [2]
    assert [r["round"] for r in resumed["rounds"]] == [0, 1, 2, 3]
    eps = [r["epsilon"] for r in resumed["rounds"]]
    ref = [r["epsilon"] for r in reference["rounds"]]
    assert eps[:2] == pytest.approx(ref[:2], rel=1e-12)
    assert eps[2] == pytest.approx(ref[3], rel=1e-12) and eps[3] > ref[3]
    assert resumed["charged_unfinished_attempts"] == [2]
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
    ledger = load_checkpoint(ckpt).ledger
    assert resumed["privacy_ledger"] == ledger and resumed["privacy"]["private"] is True
    assert resumed["privacy"]["client"]["rounds"] == 5  # 4 rounds and the cut-short attempt
    assert load_in_flight(ckpt) == []  # all of it is in the checkpoint now


def test_resuming_under_other_settings_is_refused(tmp_path) -> None:
    ckpt = tmp_path / "run.ckpt"
    cfg = _central_dp(**{"checkpoint-path": str(ckpt), "num-rounds": 2})
    run_server(InProcessGrid(client_app, NODES, cfg), cfg, log=quiet)
    other = {**cfg, "resume": True, "dp-noise-multiplier": 0.5}
    with pytest.raises(ConfigurationError, match="written by a run with other settings"):
        run_server(InProcessGrid(client_app, NODES, other), other, log=quiet)
    with pytest.raises(ConfigurationError, match="resume = true needs a checkpoint-path"):
        run_server(InProcessGrid(client_app, NODES, cfg), {**cfg, "resume": True,
                                                           "checkpoint-path": ""}, log=quiet)


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path) -> None:
    params = np.random.default_rng(0).normal(size=17)
    ck = Checkpoint(completed=3, params=params, server_rng="{}", strategy_state=[{
        "m": np.arange(4, dtype=np.float32), "lr": 0.1, "name": "x", "none": None}],
        ledger={"kind": "rounds", "rounds": 3}, summary={"rounds": []}, digest="d")
    path = save_checkpoint(tmp_path / "c.json", ck)
    back = load_checkpoint(path)
    np.testing.assert_array_equal(back.params, params)
    assert back.params.dtype == np.float64
    assert back.strategy_state[0]["lr"] == 0.1
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary file left
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    path.write_text('{"format": "something else"}')
    with pytest.raises(ConfigurationError, match="expected 'securefed-flower-checkpoint/1'"):
        load_checkpoint(path)


# ------------------------------------------------------------------ rejoining hospitals
class FlakyGrid(InProcessGrid):
    """A grid where a node can be offline (not listed, messages lost) and can restart under a
    new node id with a fresh state, as a SuperNode without node authentication does."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.offline: set[int] = set()

    def get_node_ids(self):
        return [n for n in self._ids if n not in self.offline]

    def restart(self, index: int) -> int:
        from flwr.app import Context, RecordDict

        old = self._ids[index]
        new = old + 100_000
        ctx = self._contexts.pop(old)
        self._contexts[new] = Context(run_id=1, node_id=new, node_config=dict(ctx.node_config),
                                      state=RecordDict(), run_config=dict(ctx.run_config))
        self._ids[index] = new
        self.offline.discard(old)
        self._down.discard(old)
        return new


@pytest.mark.parametrize("channel", ["plain", "secagg"])
def test_an_offline_hospital_is_left_out_and_rejoins_after_a_restart(channel, pki) -> None:
    nodes, secagg_keys = pki
    if channel == "plain":  # these hospitals hold identity keys: plain rounds are opt-in
        nodes = [{**n, "allow-plain-channel": True} for n in nodes]
    cfg = app_run_config({"channel": channel, "num-rounds": 5, "seed": 2, "secagg-threshold": 2,
                          **secagg_keys, **FAST})
    grid = FlakyGrid(client_app, nodes, cfg)
    logs: list[str] = []
    events: dict[str, int] = {}

    def log(text: str) -> None:
        logs.append(text)
        if "round 2/5 done" in text:  # node 2 crashes after round 1 ...
            grid.offline.add(grid._ids[2])
            grid._down.add(grid._ids[2])
        if "round 3/5 done" in text:  # ... and comes back after round 2, with a new node id
            events["new"] = grid.restart(2)

    summary = run_server(grid, cfg, log=log)
    contributors = [r["contributors"] for r in summary["rounds"]]
    if channel == "plain":
        # left out of round 2 at once (no timeout waited), back from the next round on
        assert contributors == [[0, 1, 2], [0, 1, 2], [0, 1], [0, 1, 2], [0, 1, 2]]
        assert "offline at the start of the round" in summary["rounds"][2]["failures"]["2"]
    else:
        # secure rounds overlap: round 2's keys were shared during round 1, so round 2 ends
        # with the survivors' sum; round 3 was sampled during round 2, while the node was
        # away; the node is back from the first round sampled after its restart, round 4
        assert contributors == [[0, 1, 2], [0, 1, 2], [0, 1], [0, 1], [0, 1, 2]]
        assert summary["rounds"][2]["revealed"]["dropped_after_sharing"] == [2]
        assert summary["rounds"][3]["selected"] == [0, 1]  # left out when round 3 was sampled
    assert any(f"client 2 rejoined as node {events['new']}" in t for t in logs)


def test_a_rejoined_plain_node_matches_its_fresh_generator() -> None:
    """After a restart the node's state is gone; it starts again from its client stream and
    the round still completes with it (no straggler timeout)."""
    cfg = app_run_config({"channel": "plain", "num-rounds": 2, "seed": 4, **FAST, "straggler-timeout": 30.0})
    grid = FlakyGrid(client_app, NODES, cfg)

    def log(text: str) -> None:
        if "round 1/2 done" in text:
            grid.restart(1)

    import time

    t0 = time.monotonic()
    summary = run_server(grid, cfg, log=log)
    assert [r["contributors"] for r in summary["rounds"]] == [[0, 1, 2], [0, 1, 2]]
    assert time.monotonic() - t0 < 20  # nobody waited out the 30 s straggler timeout


# ------------------------------------------------------------------ signed apps and bundles
def test_consortium_bundle_and_app_signature(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization

    from securefed.flower import APP_DIR
    from securefed.flower.apps import SignedApp, build_fab, sign_fab, verify_signed_app
    from securefed.flower.bundle import load_signing_key, make_consortium

    coord, hospitals = make_consortium(tmp_path, hospitals=["north", "south"], host="link.example")
    assert [(h.name, h.client_id, h.superlink) for h in hospitals] == [
        ("north", 0, "link.example:9092"), ("south", 1, "link.example:9092")]
    for h in hospitals:
        key = serialization.load_ssh_private_key(h.node_key.read_bytes(), password=None)
        assert key.curve.name == "secp384r1"  # Flower's node authentication curve
        assert oct(h.node_key.stat().st_mode & 0o777) == "0o600"
        assert (coord.folder / "nodes" / f"{h.name}.pub").read_text() == (h.folder / "node.pub").read_text()
        assert h.trusted_entities.read_text() == coord.trusted_entities.read_text()
        assert not (h.folder / "ca.key").exists() and not (h.folder / "app-signing.key").exists()
    fab = build_fab(APP_DIR)
    signed = sign_fab(fab, load_signing_key(coord.signing_key))
    # Flower's own SuperNode check accepts it with the hospital's trusted entities ...
    assert verify_signed_app(signed, hospitals[0].trusted_entities)
    # ... and refuses a changed bundle, an unsigned one, and another key's signature
    tampered = SignedApp(fab=fab + b"\0", verifications=signed.verifications)
    assert not verify_signed_app(tampered, hospitals[0].trusted_entities)
    from cryptography.hazmat.primitives.asymmetric import ed25519

    rogue = sign_fab(fab, ed25519.Ed25519PrivateKey.generate())
    assert not verify_signed_app(rogue, hospitals[0].trusted_entities)
    back = SignedApp.load(signed.save(tmp_path / "app.signed.json"))
    assert back == signed
    with pytest.raises(ConfigurationError, match="TLS files already exist"):
        make_consortium(tmp_path, hospitals=["north"], host="x")
    from securefed.flower.bundle import write_node_key

    with pytest.raises(ConfigurationError, match="refusing to overwrite a private key"):
        write_node_key(hospitals[0].node_key, tmp_path / "x.pub")
    with pytest.raises(KeyMaterialError, match="expected an Ed25519 key"):
        load_signing_key(hospitals[0].node_key)
    # the hospitals' roster (made by them) goes to every folder; their identity keys do not
    from securefed.identity import write_identity_files

    roster, keys = write_identity_files(["north", "south"], tmp_path / "hospital-keys")
    coord2, hosp2 = make_consortium(tmp_path / "with-roster", hospitals=["north", "south"],
                                    roster=roster)
    assert coord2.roster.read_bytes() == roster.read_bytes()
    assert [h.node_config["roster"] for h in hosp2] == [str(h.folder / "roster.json") for h in hosp2]
    assert not list((tmp_path / "with-roster").rglob("*.identity"))
    # the folder is copied to the hospital's machine: its roster path follows it, and the
    # node's secure-aggregation settings (identity key and pinned roster) load there
    import shutil

    from securefed.flower.bundle import load_hospital
    from securefed.flower.secagg_stages import node_secagg_settings

    moved = tmp_path / "at-the-hospital" / "north"
    shutil.copytree(hosp2[0].folder, moved)
    shutil.rmtree(tmp_path / "with-roster")
    north = load_hospital(moved)
    assert north.node_config["roster"] == str(moved / "roster.json")
    settings = node_secagg_settings({**north.node_config, "identity-key": str(keys["north"])},
                                    north.client_id)
    assert settings["roster"].client_ids == (0, 1)
    with pytest.raises(ConfigurationError, match=r"the roster lists hospitals \['north', 'south'\]"):
        make_consortium(tmp_path / "mismatch", hospitals=["south", "north"], roster=roster)


def test_gateway_allows_exactly_the_fleet_api() -> None:
    from securefed.flower.gateway import ALLOWED

    assert (b"POST", b"/v1/fleet/pull-messages") in ALLOWED
    assert (b"GET", b"/health") in ALLOWED
    for method, path in [(b"POST", b"/v1/control/start-run"), (b"POST", b"/v1/runtime/pull-messages"),
                         (b"GET", b"/v1/fleet/pull-messages"), (b"POST", b"/v1/fleet/../control/start-run"),
                         (b"POST", b"/v1/control/register-node"), (b"GET", b"/docs")]:
        assert (method, path) not in ALLOWED
    # every Fleet route Flower serves is allowed, and nothing else under /v1
    from flwr.superlink.routers.fleet.router import router as fleet_router

    served = {(m.encode(), r.path.encode()) for r in fleet_router.routes for m in r.methods}
    assert served == {a for a in ALLOWED if a[1] != b"/health"}


# ------------------------------------------------------------------ diagnostics
class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def health_servers(tmp_path):
    from securefed.flower.tls import write_tls_files

    files = write_tls_files(tmp_path / "tls")
    servers = []

    def start(tls: bool) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(files.server_cert, files.server_key)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield files, start(True), start(False)
    for server in servers:
        server.shutdown()
        server.server_close()


def test_connection_problems_are_named(health_servers, tmp_path) -> None:
    from securefed.flower.cluster import free_port
    from securefed.flower.diagnose import check_superlink
    from securefed.flower.tls import write_tls_files

    files, tls, plain = health_servers
    assert check_superlink(tls, root_certificates=files.ca_cert) == "ok"
    assert check_superlink(plain, insecure=True) == "ok"
    with pytest.raises(ConfigurationError, match="TLS mismatch: this node was started with --insecure"):
        check_superlink(tls, insecure=True)
    with pytest.raises(ConfigurationError, match="TLS mismatch: this node expects TLS"):
        check_superlink(plain, root_certificates=files.ca_cert)
    with pytest.raises(ConfigurationError, match="connection refused"):
        check_superlink(f"127.0.0.1:{free_port()}", root_certificates=files.ca_cert)
    other = write_tls_files(tmp_path / "other")
    with pytest.raises(ConfigurationError, match="did not sign"):
        check_superlink(tls, root_certificates=other.ca_cert)
    with pytest.raises(ConfigurationError, match="does not resolve"):
        check_superlink("no-such-host.invalid:9092", insecure=True)
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        check_superlink("9092", insecure=True)


def test_deploy_node_command_line(tmp_path) -> None:
    from securefed.flower.bundle import make_consortium
    from securefed.flower.deploy import node_command

    _, (north,) = make_consortium(tmp_path, hospitals=["north"], host="link.example", port=9443)
    cmd = node_command(north, data=str(tmp_path / "r.csv"), schema=str(tmp_path / "s.json"))
    flower = cmd[cmd.index("--") + 1:]
    assert flower[flower.index("--superlink") + 1] == "link.example:9443"
    assert flower[flower.index("--auth-supernode-private-key") + 1] == str(north.node_key)
    assert flower[flower.index("--trusted-entities") + 1] == str(north.trusted_entities)
    assert "--insecure" not in flower and flower[flower.index("--root-certificates") + 1] == str(north.ca_cert)
    config = flower[flower.index("--node-config") + 1]
    assert "client-id=0" in config and json.dumps(str(tmp_path / "r.csv")) in config
    assert Path(cmd[1]).name.startswith("python") or cmd[1] == "-m"


# ------------------------------------------------------------------ DP under secure aggregation
@pytest.mark.parametrize("mode", ["central", "local", "distributed"])
def test_secure_deployment_agrees_with_the_simulation_under_dp(mode, pki) -> None:
    """Secure aggregation with central, local or distributed DP, noise in the reproducible
    mode: the deployed run and the simulation agree to 1e-4 and report the same epsilon per
    round.  Central noise comes from the server's stream, local noise from each client's
    stream, and under distributed DP each node draws its discrete Gaussian share (after its
    stochastic rounding) from its per-round channel stream, as the simulated client does;
    the server's stream is never used for a client's rounding."""
    from securefed.data import pima_federation
    from securefed.federated import run_federated
    from securefed.flower.secagg_stages import build_secagg_channel
    from securefed.flower.settings import build_model, build_strategy

    nodes, secagg_keys = pki
    cfg = app_run_config({"channel": "secagg", "dp": mode, "dp-clip-norm": 1.0,
                          "dp-noise-multiplier": 0.8, "dp-reproducible-noise": True,
                          "num-rounds": 3, "seed": 4, **secagg_keys, **FAST})
    summary = run_server(InProcessGrid(client_app, nodes, cfg), cfg, log=quiet)
    strategy = build_strategy(cfg)
    sim = run_federated(pima_federation(seed=0, n_hospitals=3), strategy=strategy,
                        model=build_model(cfg), rounds=3, seed=4,
                        channel=build_secagg_channel(cfg, strategy=strategy))
    gap = np.max(np.abs(np.asarray(summary["final_params"]) - sim.final_params))
    assert gap <= 1e-4
    eps = [r["epsilon"] for r in summary["rounds"]]
    assert eps == pytest.approx([h.extra["epsilon"] for h in sim.history], rel=1e-12)
    assert all(b > a > 0 for a, b in zip(eps, eps[1:], strict=False))
    assert summary["privacy"]["client"]["mechanism"] == mode
    if mode == "distributed":  # the server and k hospitals remove k of the 3 shares
        assert [c["colluding_hospitals"] for c in summary["privacy"]["collusion"]] == [1, 2]
        assert summary["privacy"]["collusion"][0]["epsilon"] > eps[-1]
        # by default each node draws its share from the OS CSPRNG: the seed no longer
        # determines the noise, and the run is reported private with the same epsilon
        secure = {**cfg, "dp-reproducible-noise": False}
        other = run_server(InProcessGrid(client_app, nodes, secure), secure, log=quiet)
        assert np.max(np.abs(np.asarray(other["final_params"]) - sim.final_params)) > 1e-3
        assert other["privacy"]["private"] is True
        assert [r["epsilon"] for r in other["rounds"]] == pytest.approx(eps, rel=1e-12)
    # and the noise is really there: without it the model is elsewhere
    none = {**cfg, "dp": "none"}
    plain = run_federated(pima_federation(seed=0, n_hospitals=3), strategy=build_strategy(none),
                          model=build_model(cfg), rounds=3, seed=4,
                          channel=build_secagg_channel(none))
    assert np.max(np.abs(plain.final_params - sim.final_params)) > 1000 * max(gap, 1e-7)


def test_a_hospital_keeps_its_own_noise_floor(pki) -> None:
    """A node config's dp-min-noise-multiplier: the node trains only in runs whose noise is
    added at the hospitals, from the OS, with at least that multiplier, whatever the
    coordinator's run config says."""
    from securefed.errors import MessageRejected, ProtocolAbort
    from securefed.flower.node import check_node_privacy
    from securefed.flower.settings import build_strategy

    floor = {"dp-min-noise-multiplier": 1.0}

    def strategy(**extra):
        return build_strategy(app_run_config({"channel": "secagg", "dp-clip-norm": 1.0,
                                              "dp-noise-multiplier": 1.2, **extra}))

    assert check_node_privacy(floor, strategy(dp="distributed")) is None
    assert check_node_privacy(floor, strategy(dp="local")) is None
    with pytest.raises(MessageRejected, match="the run asks for dp = 'central', expected 'local' "
                                              "or 'distributed'"):
        check_node_privacy(floor, strategy(dp="central"))
    with pytest.raises(MessageRejected, match="the run asks for dp = 'none'"):
        check_node_privacy(floor, strategy())
    with pytest.raises(MessageRejected, match="dp-reproducible-noise = true, which is not private"):
        check_node_privacy(floor, strategy(dp="distributed", **{"dp-reproducible-noise": True}))
    with pytest.raises(MessageRejected, match="noise multiplier 0.5, below this hospital's floor 1.0"):
        check_node_privacy(floor, strategy(dp="distributed", **{"dp-noise-multiplier": 0.5}))
    with pytest.raises(ConfigurationError, match="must be a number > 0, got 'high'"):
        check_node_privacy({"dp-min-noise-multiplier": "high"}, strategy(dp="local"))
    # in a run: every hospital refuses to train below its floor, so the round has nobody
    nodes, secagg_keys = pki
    floored = [{**n, **floor} for n in nodes]
    low = app_run_config({"channel": "plain", "dp": "local", "dp-clip-norm": 1.0, "dp-noise-multiplier": 0.5,
                          "num-rounds": 1, **FAST})
    plain_ok = [{**n, "allow-plain-channel": True} for n in floored]
    with pytest.raises(ProtocolAbort, match="below this hospital's floor 1.0"):
        run_server(InProcessGrid(client_app, plain_ok, low), low, log=quiet)
    ok = app_run_config({"channel": "secagg", "dp": "distributed", "dp-clip-norm": 1.0,
                         "dp-noise-multiplier": 1.0, "num-rounds": 1, **secagg_keys, **FAST})
    done = run_server(InProcessGrid(client_app, floored, ok), ok, log=quiet)
    assert done["status"] == "completed" and done["rounds"][0]["contributors"] == [0, 1, 2]


def test_a_hospital_with_an_identity_key_refuses_plain_rounds_unless_it_opts_in(pki) -> None:
    """The submitter chooses the channel (the run config is not signed): a node set up for
    secure aggregation answers plain rounds, which send its update in the clear, only if its
    own node config says allow-plain-channel = true."""
    from securefed.errors import MessageRejected, ProtocolAbort
    from securefed.flower.node import check_plain_channel

    nodes, _ = pki
    with pytest.raises(MessageRejected, match="answers secure-aggregation rounds only"):
        check_plain_channel(nodes[0])
    assert check_plain_channel({**nodes[0], "allow-plain-channel": True}) is None
    assert check_plain_channel(NODES[0]) is None  # no identity key: plain by default
    with pytest.raises(MessageRejected, match="answers secure-aggregation rounds only"):
        check_plain_channel({**NODES[0], "allow-plain-channel": False})
    with pytest.raises(ConfigurationError, match="allow-plain-channel must be true or false, got 'yes'"):
        check_plain_channel({**NODES[0], "allow-plain-channel": "yes"})
    plain = app_run_config({"channel": "plain", "num-rounds": 1, **FAST})
    with pytest.raises(ProtocolAbort, match="answers secure-aggregation rounds only"):
        run_server(InProcessGrid(client_app, nodes, plain), plain, log=quiet)
    mixed = [nodes[0], {**nodes[1], "allow-plain-channel": True}, {**nodes[2], "allow-plain-channel": True}]
    done = run_server(InProcessGrid(client_app, mixed, plain), plain, log=quiet)
    assert done["rounds"][0]["contributors"] == [1, 2]
    assert "secure-aggregation rounds only" in done["rounds"][0]["failures"]["0"]


def test_gateway_parses_and_forwards_only_clean_fleet_requests() -> None:
    """The gateway in front of a stand-in upstream that records what reaches it: a Fleet call
    is forwarded without hop-by-hop headers; a Control API call, a query string and a request
    framed twice (Content-Length and Transfer-Encoding) never reach it (403, 403, 400)."""
    import asyncio
    import socket
    import threading

    from securefed.flower.cluster import free_port
    from securefed.flower.gateway import serve

    seen: list[bytes] = []
    up_port, gw_port = free_port(), free_port()
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def upstream(reader, writer):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await reader.read(65536)
            if not chunk:
                return
            data += chunk
        seen.append(data)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(upstream, "127.0.0.1", up_port)
        async with server:
            await serve(listen=f"127.0.0.1:{gw_port}", upstream=f"127.0.0.1:{up_port}",
                        certfile=None, keyfile=None, ca=None, ready=ready.set, log=quiet)

    task = loop.create_task(main())

    def run_loop() -> None:
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass  # stopped by the test
        finally:
            loop.close()

    thread = threading.Thread(target=run_loop, daemon=True)
    thread.start()
    assert ready.wait(10)

    def ask(raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", gw_port), timeout=10) as sock:
            sock.sendall(raw)
            out = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return out
                out += chunk
                if b"\r\n\r\n" in out and out.endswith((b"ok", b"only\n", b"\r\n\r\n")):
                    return out

    try:
        fleet = ask(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                    b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nUpgrade: h2c\r\n\r\n{}")
        assert fleet.startswith(b"HTTP/1.1 200") and len(seen) == 1
        forwarded = seen[0].lower()
        assert forwarded.startswith(b"post /v1/fleet/pull-messages http/1.1")
        for header in (b"upgrade:", b"connection:", b"x-secret:"):
            assert header not in forwarded
        assert ask(b"POST /v1/control/start-run HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                   ).startswith(b"HTTP/1.1 403")
        assert ask(b"POST /v1/fleet/pull-messages?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                   ).startswith(b"HTTP/1.1 403")
        assert ask(b"POST /v1/fleet/push-messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert len(seen) == 1  # none of the three reached the upstream
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)


def test_deploy_submit_never_runs_two_serverapps_from_one_checkpoint(monkeypatch, tmp_path) -> None:
    """``securefed deploy submit``'s wait (Control API calls replaced by a script of
    answers, the clock by a counter): a SuperLink unreachable for a while is waited for, not
    taken for a lost run; a run the SuperLink no longer completes is stopped, and seen
    finished, before the run is submitted again with resume = true."""
    import securefed.flower.apps as apps
    import securefed.flower.deploy as deploy

    clock = [0.0]
    monkeypatch.setattr(deploy.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(deploy.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    events: list[tuple] = []
    submitted: list[dict] = []
    monkeypatch.setattr(apps, "store_signed_app", lambda *a, **k: None)

    def start_run(address, *, root_certificates, app, run_config):
        submitted.append(dict(run_config))
        events.append(("start", len(submitted)))
        return len(submitted)

    monkeypatch.setattr(apps, "start_run", start_run)
    # run 1: unreachable for 20 s (a restart), then running, then no longer listed... but
    # still running when asked again: it must be stopped first; run 2 completes
    script = {1: ["down"] * 10 + ["running", "running", "", "running", "finished:stopped"],
              2: ["running", "finished:completed"]}

    def run_status(address, ca, run_id):
        answer = script[run_id].pop(0)
        events.append(("status", run_id, answer))
        if answer == "down":
            raise ConnectionError("SuperLink restarting")
        return answer, ""

    monkeypatch.setattr(deploy, "run_status", run_status)
    monkeypatch.setattr(deploy, "stop_run", lambda a, c, run_id: events.append(("stop", run_id)))
    status, run_ids = deploy.submit_and_wait(
        address="127.0.0.1:1", ca=tmp_path / "ca.pem", database=tmp_path / "db", app=object(),
        run_config={"checkpoint-path": str(tmp_path / "c")}, resume_attempts=2, timeout=3600,
        log=quiet)
    assert status == "finished:completed" and run_ids == [1, 2]
    assert submitted[1]["resume"] is True and "resume" not in submitted[0]
    order = [e for e in events if e[0] in ("start", "stop")]
    assert order == [("start", 1), ("stop", 1), ("start", 2)]
    # run 2 was submitted only after run 1 was seen finished
    assert events.index(("status", 1, "finished:stopped")) < events.index(("start", 2))


def test_local_dp_attempts_cut_short_are_charged_across_two_crashes(tmp_path) -> None:
    """Local DP: each hospital's noisy update leaves it when it answers, so an attempt cut
    short by a crash may already have released it.  Killed in round 0 (before any
    checkpoint), restarted with resume = true and killed again in round 2, then resumed to the
    end: the ledger holds the 4 rounds and both cut-short attempts.  Local DP charges every
    round alike, so the epsilon after k rounds and j attempts is an uninterrupted run's after
    k + j rounds."""
    cfg = app_run_config({"channel": "plain", "dp": "local", "dp-clip-norm": 1.0, "dp-noise-multiplier": 2.0,
                          "num-rounds": 6, "seed": 5, **FAST})
    ref = [r["epsilon"] for r in run_server(InProcessGrid(client_app, NODES, cfg), cfg,
                                            log=quiet)["rounds"]]
    ckpt = tmp_path / "run.ckpt"
    cfg = {**cfg, "num-rounds": 4, "checkpoint-path": str(ckpt)}
    with pytest.raises(_Crash, match="killed at round 0"):
        run_server(CrashingGrid(client_app, NODES, cfg, crash_round=0), cfg, log=quiet)
    assert not ckpt.exists() and [a["round"] for a in load_in_flight(ckpt)] == [0]
    with pytest.raises(_Crash, match="killed at round 2"):
        run_server(CrashingGrid(client_app, NODES, cfg, crash_round=2), {**cfg, "resume": True},
                   log=quiet)
    assert load_checkpoint(ckpt).completed == 2
    assert [a["round"] for a in load_in_flight(ckpt)] == [2]  # attempt 0 is in the checkpoint
    done = run_server(InProcessGrid(client_app, NODES, cfg), {**cfg, "resume": True}, log=quiet)
    assert [r["round"] for r in done["rounds"]] == [0, 1, 2, 3]
    assert done["charged_unfinished_attempts"] == [0, 2]
    eps = [r["epsilon"] for r in done["rounds"]]
    assert eps == pytest.approx([ref[1], ref[2], ref[4], ref[5]], rel=1e-12)
    # central DP adds its noise at the server: an unfinished round released nothing
    central = _central_dp(**{"checkpoint-path": str(tmp_path / "central.ckpt")})
    with pytest.raises(_Crash):
        run_server(CrashingGrid(client_app, NODES, central, crash_round=1), central, log=quiet)
    assert load_in_flight(tmp_path / "central.ckpt") == []
    assert not in_flight_path(tmp_path / "central.ckpt").exists()  # nor any file written
