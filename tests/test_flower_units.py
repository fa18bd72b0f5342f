"""Fast checks of the Flower deployment's pieces (no processes started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("flwr")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from securefed.data import pima_federation  # noqa: E402
from securefed.errors import ConfigurationError, InvalidDataError  # noqa: E402
from securefed.federated import FedAvg, FedProx, LocalConfig  # noqa: E402
from securefed.federated.round import seed_streams  # noqa: E402
from securefed.flower.cluster import descendants, toml_value  # noqa: E402
from securefed.flower.node import config_from_json, config_to_json, local_round  # noqa: E402
from securefed.flower.nodedata import (  # noqa: E402
    bundled_federation,
    load_csv_with_schema,
    load_node_data,
    preload_node_data,
)
from securefed.flower.settings import (  # noqa: E402
    DeploymentSettings,
    app_run_config,
    build_model,
    build_strategy,
    client_generator,
    generator_from_json,
    generator_to_json,
)
from securefed.flower.tls import write_tls_files  # noqa: E402
from securefed.flower.transport import (  # noqa: E402
    make_content,
    pack_state,
    read_content,
    unpack_state,
)


def test_client_generator_is_the_engine_stream() -> None:
    # run_federated: root.spawn(2 + n) -> init, server, client 0..n-1
    root = np.random.SeedSequence(7)
    _, _, *children = root.spawn(2 + 3)
    for cid in range(3):
        expected = np.random.default_rng(children[cid]).random(5)
        np.testing.assert_array_equal(client_generator(7, cid, 3).random(5), expected)
    assert seed_streams(7, 3).init_seed == int(np.random.SeedSequence(7).spawn(5)[0].generate_state(1)[0])
    with pytest.raises(ConfigurationError, match="client id must be in"):
        client_generator(7, 3, 3)


def test_generator_state_survives_a_round_trip() -> None:
    rng = np.random.default_rng(123)
    rng.random(17)
    copy = generator_from_json(generator_to_json(rng))
    np.testing.assert_array_equal(copy.permutation(50), rng.permutation(50))


def test_build_strategy_reads_hyper_parameters() -> None:
    s = build_strategy({"strategy": "fedprox", "learning-rate": 0.05, "local-epochs": 2,
                        "batch-size": 0, "proximal-mu": 0.3, "unrelated": "x"})
    assert isinstance(s, FedProx)
    assert (s.learning_rate, s.local_epochs, s.batch_size, s.proximal_mu) == (0.05, 2, None, 0.3)
    a = build_strategy({"strategy": "fedavg", "proximal-mu": 0.3})
    assert type(a) is FedAvg
    with pytest.raises(ConfigurationError, match="unknown strategy 'nope'; valid"):
        build_strategy({"strategy": "nope"})
    with pytest.raises(ConfigurationError, match="unknown strategy wrapper"):
        build_strategy({"wrappers": "bogus"})
    assert build_model({"model": "mlp", "hidden": "4,3", "num-features": 5}).hidden == (4, 3)
    with pytest.raises(ConfigurationError, match="hidden must be"):
        build_model({"hidden": "a,b"})


def test_deployment_settings_validate() -> None:
    s = DeploymentSettings.from_run_config({"num-rounds": 2, "channel": "plain"})
    assert s.num_rounds == 2 and s.channel == "plain"
    with pytest.raises(ConfigurationError, match="num-rounds must be an integer >= 1, got 0"):
        DeploymentSettings.from_run_config({"num-rounds": 0})
    with pytest.raises(ConfigurationError, match="channel must be"):
        DeploymentSettings.from_run_config({"channel": "carrier-pigeon"})
    with pytest.raises(ConfigurationError, match="result-path must be an absolute path"):
        DeploymentSettings.from_run_config({"result-path": "out/run.json"})


def test_the_default_channel_is_secure_aggregation_and_plain_is_named() -> None:
    """A run that names no channel gets secure aggregation (against a deviating server), so
    without the roster it stops with a reason instead of sending updates in the clear."""
    assert app_run_config()["channel"] == "secagg"
    with pytest.raises(ConfigurationError, match="needs secagg-roster"):
        DeploymentSettings.from_run_config(app_run_config())
    with pytest.raises(ConfigurationError, match="needs secagg-roster"):
        DeploymentSettings.from_run_config({})  # a run config without the app's defaults
    named = DeploymentSettings.from_run_config(app_run_config({"channel": "plain"}))
    assert named.channel == "plain"
    hbc = DeploymentSettings.from_run_config(app_run_config({"secagg-mode": "honest-but-curious"}))
    assert (hbc.channel, hbc.secagg_mode) == ("secagg", "honest-but-curious")


def test_message_envelope_and_client_state_round_trip() -> None:
    fields = {"round": 3, "params": np.arange(4, dtype=np.float64), "config": "{}"}
    back, nbytes = read_content(make_content(fields))
    assert back["round"] == 3 and nbytes > 32
    np.testing.assert_array_equal(back["params"], fields["params"])
    state = {"a": np.ones(3), "n": 4, "hist": [1.0, 2.0], "meta": {"k": None}}
    out = unpack_state(pack_state(state))
    np.testing.assert_array_equal(out["a"], np.ones(3))
    assert out["n"] == 4 and out["hist"] == [1.0, 2.0] and out["meta"] == {"k": None}
    with pytest.raises(InvalidDataError, match="cannot be saved"):
        pack_state({"bad": object()})


def test_local_round_matches_the_engine_for_one_client() -> None:
    """Two rounds at one node (state kept between them) draw the engine's client stream."""
    from flwr.app import RecordDict

    run_config = {"strategy": "fedavg", "learning-rate": 0.1, "local-epochs": 1, "batch-size": 8,
                  "model": "logreg", "num-features": 7}
    client = load_node_data({"partition-id": 1, "num-partitions": 3})
    strategy = build_strategy(run_config)
    spec = build_model(run_config)
    params = np.linspace(-0.2, 0.2, spec.num_params())
    state = RecordDict()
    rng = client_generator(0, 1, 3)
    for r in range(2):
        fields = {"round": r, "seed": 0, "num_clients": 3, "params": params,
                  "config": config_to_json(strategy.configure(r))}
        vec, weight, payload, stats = local_round(run_config, client, fields, state)
        local = strategy.local_train(spec.build(), client, params, strategy.configure(r), rng=rng,
                                     client_state={})
        w = strategy.client_weight(local, client_state={})
        ref, _ = strategy.client_process(local.update, w, client_state={}, rng=rng)
        np.testing.assert_array_equal(vec, ref)
        assert weight == w and stats["num_examples"] == client.num_examples


def test_config_json_round_trip() -> None:
    c = LocalConfig(learning_rate=0.1, local_epochs=2, batch_size=None, proximal_mu=0.5,
                    extra={"alpha": 0.3})
    assert config_from_json(config_to_json(c)) == c


def test_bundled_node_data_is_built_once_and_handed_out_as_copies(tmp_path) -> None:
    bundled_federation.cache_clear()
    fed = pima_federation(seed=1, n_hospitals=4)
    config = {"partition-id": 1, "num-partitions": 4, "data-seed": 1}
    assert preload_node_data(config) is True
    assert bundled_federation.cache_info().misses == 1
    first = load_node_data(config)
    first.X[:] = 0.0  # a caller that writes into its arrays leaves the cache as it was
    again = load_node_data(config)
    assert bundled_federation.cache_info().misses == 1
    for got in (again, bundled_federation(1, 4).clients[1]):
        np.testing.assert_array_equal(got.X, fed.clients[1].X)
        np.testing.assert_array_equal(got.y, fed.clients[1].y)
        np.testing.assert_array_equal(got.X_test, fed.clients[1].X_test)
    # a hospital's own file is never preloaded, nor a config the node would refuse
    assert preload_node_data({"client-id": 0, "data-path": str(tmp_path / "h.csv"),
                              "schema-path": str(tmp_path / "s.json")}) is False
    assert preload_node_data({"partition-id": 5, "num-partitions": 3}) is False
    assert bundled_federation.cache_info().misses == 1


def test_node_data_partition_and_csv(tmp_path) -> None:
    fed = pima_federation(seed=0, n_hospitals=3)
    part = load_node_data({"partition-id": 2, "num-partitions": 3})
    np.testing.assert_array_equal(part.X, fed.clients[2].X)
    with pytest.raises(ConfigurationError, match="partition-id must be in"):
        load_node_data({"partition-id": 3, "num-partitions": 3})
    with pytest.raises(ConfigurationError, match="expected 'client-id' or 'partition-id'"):
        load_node_data({"data-path": "x.csv"})

    csv = tmp_path / "h.csv"
    csv.write_text("glu,bmi,type\n100,30,Yes\n120,25,No\n", encoding="utf-8")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"features": ["glu", "bmi"], "label": "type", "positive": "Yes",
                                  "mean": [110, 27.5], "std": [10, 2.5]}), encoding="utf-8")
    c = load_csv_with_schema(csv, schema, client_id=4)
    np.testing.assert_allclose(c.X, [[-1, 1], [1, -1]])
    np.testing.assert_array_equal(c.y, [1, 0])
    assert load_node_data({"client-id": 4, "data-path": str(csv), "schema-path": str(schema)}).client_id == 4
    csv.write_text("glu,bmi,type\n100,,Yes\n120,25,No\n", encoding="utf-8")
    with pytest.raises(InvalidDataError, match=r"row 2 of the file, column\(s\) \['bmi'\]"):
        load_csv_with_schema(csv, schema, client_id=0)
    csv.write_text("glu,type\n100,Yes\n", encoding="utf-8")
    with pytest.raises(InvalidDataError, match=r"lacks columns \['bmi'\]"):
        load_csv_with_schema(csv, schema, client_id=0)
    # inside the ClientApp the detail stays in the node's log: the coordinator, which gets
    # the error's text as the reply's reason, learns only that the data did not load
    import logging

    from securefed.flower.clientapp import _own_data

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("securefed.flower.clientapp").addHandler(handler)
    try:
        with pytest.raises(InvalidDataError) as refused:
            _own_data({"client-id": 0, "data-path": str(csv), "schema-path": str(schema)})
    finally:
        logging.getLogger("securefed.flower.clientapp").removeHandler(handler)
    assert str(refused.value) == ("this hospital's data could not be loaded; the reason is in "
                                  "the node's own log")
    assert str(csv) not in str(refused.value) and "bmi" not in str(refused.value)
    assert any("lacks columns ['bmi']" in r.getMessage() for r in records)


def test_tls_files(tmp_path) -> None:
    files = write_tls_files(tmp_path, hosts=["superlink.example.org"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "superlink.example.org"}
    # the CA really signed the server certificate
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert oct(files.server_key.stat().st_mode & 0o777) == "0o600"
    assert oct(files.ca_key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigurationError, match="already exist"):
        write_tls_files(tmp_path)


def test_toml_values_and_descendants() -> None:
    assert toml_value('a "b"') == '"a \\"b\\""' and toml_value(3) == "3" and toml_value(True) == "true"
    with pytest.raises(ConfigurationError):
        toml_value([1])
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess,sys,time; p=subprocess.Popen([sys.executable,'-c',"
                               "'import time; time.sleep(30)']); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while not descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = descendants(parent.pid)
        assert len(kids) == 1 and os.getpid() not in kids
    finally:
        for pid in descendants(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()


def test_fedmedheter_options_from_strings() -> None:
    from securefed.flower.settings import app_run_config

    s = build_strategy(app_run_config({
        "strategy": "fedmedheter", "adaptive-lr": "none", "weight-bounds": "0.5,2",
        "compression": "top0.1-q8", "server-optimizer": "adam", "proximal-mu": 0.2}))
    assert s.adaptive_lr is None and s.weight_bounds == (0.5, 2.0)
    assert s.server_optimizer == "adam" and s.proximal_mu == 0.2
    assert s.codec.name == "top0.1-q8"
    with pytest.raises(ConfigurationError, match="weight-bounds must be 'low,high'"):
        build_strategy(app_run_config({"strategy": "fedmedheter", "weight-bounds": "1"}))
    with pytest.raises(ConfigurationError, match="compression must be"):
        build_strategy(app_run_config({"strategy": "fedmedheter", "compression": "zip"}))
    with pytest.raises(ConfigurationError, match="unknown run-config keys"):
        app_run_config({"no-such-key": 1})


def test_fast_object_pulls_overrides_flowers_explicit_back_off() -> None:
    """Flower's callers pass their 1 s / 10 s back-off explicitly; the wrapper must still
    retry after 50 ms (capped at 0.2 s), keep every other argument, and not stack when
    applied twice."""
    import types

    from securefed.flower.transport import OBJECT_RETRY, fast_object_pulls

    seen: list[tuple[tuple, dict]] = []

    def pull_objects(*args, **kwargs):
        seen.append((args, kwargs))
        return {"id": b"content"}

    module = types.SimpleNamespace(pull_objects=pull_objects)
    fast_object_pulls(module)
    fast_object_pulls(module)
    assert module.pull_objects.__wrapped__ is pull_objects
    out = module.pull_objects(["id"], "fn", initial_backoff=1, backoff_cap=10, max_time=7.5)
    assert out == {"id": b"content"}
    assert seen == [((["id"], "fn"), {"initial_backoff": OBJECT_RETRY[0],
                                      "backoff_cap": OBJECT_RETRY[1], "max_time": 7.5})]
    module.pull_objects(["id"], "fn")  # Flower's own defaults are not passed: the same
    assert seen[-1][1] == {"initial_backoff": 0.05, "backoff_cap": 0.2}


def test_poll_clock_is_fast_only_while_a_run_is_active() -> None:
    import threading

    from securefed.flower import warm

    event = threading.Event()
    clock = warm._PollClock(0.25, event, idle_interval=1.0)
    assert clock.poll_interval() == 1.0  # no message yet: at rest
    clock.message_arrived()
    assert clock.poll_interval() == 0.25
    clock._last_message -= warm.ACTIVE_WINDOW + 1  # the last message is older than the window
    assert clock.poll_interval() == 1.0
    event.set()  # a local wait after the reply was stored returns and re-arms the event
    clock.sleep(0.5)
    assert not event.is_set()
    assert clock.monotonic is time.monotonic  # everything else is the time module


def test_a_reply_whose_push_stage_a_stray_reply_took_is_still_pushed() -> None:
    """Flower's SuperNode loop pushes replies only in the stage after a pulled message, and
    that stage takes the first reply it finds.  A stopped run's stray reply (its message was
    dropped in mid-pull when the SuperLink was killed, but its ClientApp still ran) takes the
    push stage of the resubmitted run's hello; the hello's own reply must still be pushed,
    at the next pass of the loop.  Driven through Flower's own node state and push stage."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.app.message.message import make_message
    from flwr.app.metadata import Metadata
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import RunNotRunningException
    from flwr.supernode import start_client_internal as node_loop
    from flwr.supernode.nodestate import NodeStateFactory

    from securefed.flower import warm

    objects = ObjectStoreFactory()
    state, store = NodeStateFactory(objects).state(), objects.store()

    def arrives(run_id: int, group: str) -> Message:
        metadata = Metadata(run_id=run_id, message_id="", src_node_id=1, dst_node_id=5,
                            reply_to_message_id="", group_id=group, created_at=time.time(),
                            ttl=600.0, message_type="train")
        message = make_message(metadata, RecordDict({"c": ConfigRecord({"group": group})}))
        node_loop._insert_message(message, state, store)
        return message

    def answer(message: Message) -> None:  # what a ClientApp stores through the Runtime API
        reply = Message(RecordDict({"c": ConfigRecord({"ok": 1})}), reply_to=message)
        node_loop._insert_message(reply, state, store)

    stopped_run, pushed, refused = 11, [], []

    def send(message, _tree, _runtime):
        if message.metadata.run_id == stopped_run:
            refused.append(message.metadata.reply_to_message_id)
            raise RunNotRunningException()
        pushed.append(message.metadata.reply_to_message_id)
        return set(), "session"

    stray, hello = arrives(stopped_run, "1"), arrives(22, "hello")
    assert warm._pending_reply_run(state) is None  # messages, no reply yet
    handed_out = iter([hello.metadata.run_id])  # the SuperLink hands out the hello only
    clock = warm._PollClock(0.25, idle_interval=1.0)
    pull = warm._pull_and_wake(lambda **_kw: next(handed_out, None), clock)
    answer(stray)  # the stray ClientApp answers first ...
    then = [lambda: answer(hello)]  # ... the hello's ClientApp during the push stage
    for _ in range(4):  # Flower's loop: the pull stage, then after a message the push stage
        if pull(state=state) is not None:
            node_loop._push_messages(state=state, object_store=store, send=send,
                                     push_object=lambda *_a: None)
        if then:
            then.pop()()
    assert refused == [stray.metadata.message_id]  # refused by the SuperLink, dropped
    assert pushed == [hello.metadata.message_id]  # once, though its stage was taken
    assert warm._pending_reply_run(state) is None
    assert clock.poll_interval() == 0.25  # the pulled hello was noted: fast polls, run active


def test_wake_clock_is_woken_through_the_fifo_and_drains_it(tmp_path) -> None:
    from securefed.flower import warm

    fifo = tmp_path / "wake"
    os.mkfifo(fifo, 0o600)
    warm._wake(str(tmp_path / "no-such-fifo"))  # nothing to wake: no error
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        clock = warm._WakeClock(fd)
        for _ in range(3):
            warm._wake(str(fifo))
        clock.sleep(30.0)  # returns at once: wake-ups are pending
        with pytest.raises(BlockingIOError):
            os.read(fd, 1)  # all three were consumed by one wake-up
    finally:
        os.close(fd)


def test_node_keys_are_registered_as_flowers_command_would_and_bad_keys_are_named(tmp_path) -> None:
    """The coordinator registers node keys through the Control API from its own process
    (securefed.flower.control): the bytes sent are those ``flwr supernode register`` sends
    for the same file, and a key Flower's node authentication cannot use is refused with
    the file's name before anything is sent."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from flwr.cli.supernode.register import try_load_public_key

    from securefed.flower.bundle import write_node_key
    from securefed.flower.control import _node_key_bytes

    write_node_key(tmp_path / "node.key", tmp_path / "node.pub")
    assert _node_key_bytes(tmp_path / "node.pub") == try_load_public_key(tmp_path / "node.pub")
    other = tmp_path / "other.pub"
    write_node_key(tmp_path / "other.key", other)
    assert _node_key_bytes(other) != _node_key_bytes(tmp_path / "node.pub")
    edwards = tmp_path / "ed25519.pub"
    edwards.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    with pytest.raises(ConfigurationError, match="ed25519.pub: .*NIST curve"):
        _node_key_bytes(edwards)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    with pytest.raises(ConfigurationError, match="garbage.pub: not readable"):
        _node_key_bytes(garbage)
    with pytest.raises(ConfigurationError, match="missing.pub: not readable"):
        _node_key_bytes(tmp_path / "missing.pub")
