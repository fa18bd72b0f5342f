"""The ServerApp and ClientApp logic through an in-process grid (no processes, no network).

Every message still goes through the real ClientApp object and the real byte envelope, and
each node's state is saved to and restored from bytes between messages, as on a SuperNode.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from securefed.data import pima_federation  # noqa: E402
from securefed.errors import ConfigurationError, MessageRejected, ProtocolAbort  # noqa: E402
from securefed.federated import run_federated  # noqa: E402
from securefed.flower.clientapp import app as client_app  # noqa: E402
from securefed.flower.serverapp import run_server  # noqa: E402
from securefed.flower.settings import app_run_config, build_model, build_strategy  # noqa: E402
from securefed.flower.testing import InProcessGrid, plain_round_reference  # noqa: E402

NODES = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
FAST = {"round-timeout": 5.0, "straggler-timeout": 0.5, "eval-data": "none"}


def simulate(cfg: dict, channel=None):
    return run_federated(pima_federation(seed=0, n_hospitals=3), strategy=build_strategy(cfg),
                         model=build_model(cfg), rounds=cfg["num-rounds"], seed=cfg["seed"],
                         channel=channel)


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
def test_plain_rounds_equal_the_simulation_bit_for_bit(strategy) -> None:
    cfg = app_run_config({"channel": "plain", "strategy": strategy, "num-rounds": 2, "seed": 11, **FAST})
    summary = run_server(InProcessGrid(client_app, NODES, cfg), cfg, log=quiet)
    np.testing.assert_array_equal(summary["final_params"], simulate(cfg).final_params)


def test_plain_round_goes_on_without_a_silent_node() -> None:
    cfg = app_run_config({"channel": "plain", "num-rounds": 1, **FAST})
    grid = InProcessGrid(client_app, NODES, cfg, silent=lambda i, t, f: i == 1 and t == "train")
    summary = run_server(grid, cfg, log=quiet)
    assert summary["rounds"][0]["contributors"] == [0, 2]
    assert "1" in summary["rounds"][0]["failures"]


def test_a_node_refuses_a_replayed_round() -> None:
    from flwr.app import Message

    from securefed.flower.transport import make_content

    cfg = app_run_config({"channel": "plain", "num-rounds": 1, **FAST})
    grid = InProcessGrid(client_app, NODES[:1], {**cfg, "num-clients": 1})
    summary = run_server(grid, {**cfg, "num-clients": 1}, log=quiet)
    assert summary["status"] == "completed"
    ctx = next(iter(grid._contexts.values()))
    msg = Message(content=make_content({"round": 0, "seed": 0, "num_clients": 1,
                                        "params": np.zeros(8), "config": "{}"}),
                  dst_node_id=ctx.node_id, message_type="train")
    msg.metadata.__dict__["_message_id"] = "replay"
    with pytest.raises(MessageRejected, match="expected a round after 0"):
        client_app(msg, ctx)


def test_unknown_node_config_fails_the_run_with_the_reason() -> None:
    cfg = app_run_config({"channel": "plain", "num-rounds": 1, **FAST})
    grid = InProcessGrid(client_app, [{"partition-id": 0}, {"partition-id": 0}, {"partition-id": 2}], cfg)
    with pytest.raises(ConfigurationError, match="two SuperNodes claim client id 0"):
        run_server(grid, cfg, log=quiet)


# ------------------------------------------------------------------ secure aggregation
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Identity keys of the three hospitals and the pinned roster (securefed keys identity)."""
    from securefed.identity import write_identity_files

    roster, keys = write_identity_files(["h0", "h1", "h2"], tmp_path_factory.mktemp("pki"))
    return roster, [keys[f"h{i}"] for i in range(3)]


@pytest.fixture
def secagg(pki):
    """Node configs with each hospital's identity and roster, and the server's run-config
    keys: the default (malicious-server) mode of secure aggregation."""
    roster, keys = pki

    class Setup:
        nodes = [{**NODES[i], "identity-key": str(keys[i]), "roster": str(roster)} for i in range(3)]
        run = {"secagg-roster": str(roster)}

        @classmethod
        def lenient(cls, minimum):  # an explicit, weaker minimum at the nodes too
            return [{**n, "secagg-min-clients": minimum} for n in cls.nodes]

    return Setup


def _tolerance(summary: dict) -> float:
    """Quantisation tolerance: each client's stochastic rounding moves the weighted sum by
    less than one unit (1/scale) per coordinate, so the mean update by < n / (scale * W);
    a generous factor covers the propagation through the next rounds' training."""
    total = 0.0
    for r in summary["rounds"]:
        rev = r["revealed"]
        total += len(r["contributors"]) / (rev["scale"] * rev["weight_sum"])
    return 20.0 * total


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedheter"])
def test_secagg_rounds_equal_the_simulation_within_quantisation(strategy, secagg) -> None:
    from securefed.flower.secagg_stages import build_secagg_channel

    cfg = app_run_config({"strategy": strategy, "channel": "secagg", "num-rounds": 3, "seed": 4,
                          **secagg.run, **FAST})
    summary = run_server(InProcessGrid(client_app, secagg.nodes, cfg), cfg, log=quiet)
    assert summary["rounds"][0]["revealed"]["mode"] == "malicious"
    sim = simulate(cfg, channel=build_secagg_channel(cfg))
    got = np.asarray(summary["final_params"])
    tol = _tolerance(summary)
    assert np.max(np.abs(got - sim.final_params)) <= tol
    # and the tolerance is far below what a different seed changes
    other = simulate({**cfg, "seed": 5}, channel=build_secagg_channel(cfg))
    assert np.max(np.abs(other.final_params - sim.final_params)) > 100 * tol
    assert [r["contributors"] for r in summary["rounds"]] == [[0, 1, 2]] * 3


def test_secagg_round_completes_with_the_survivors_sum(secagg) -> None:
    """Two of three survive: allowed only because the server and the nodes both lower the
    minimum of contributors to 2, explicitly."""
    cfg = app_run_config({"channel": "secagg", "num-rounds": 1, "seed": 2, "secagg-threshold": 2,
                          "secagg-min-clients": 2, **secagg.run, **FAST})

    def node2_crashes(i, _t, fields):  # after sharing its keys, before its masked input
        return i == 2 and "masked" in fields and fields["round"] == 0

    grid = InProcessGrid(client_app, secagg.lenient(2), cfg, silent=node2_crashes)
    summary = run_server(grid, cfg, log=quiet)
    (r0,) = summary["rounds"]
    assert r0["contributors"] == [0, 1] and r0["revealed"]["dropped_after_sharing"] == [2]
    assert "masked_input" in r0["failures"]["2"]
    assert len(summary["rounds"]) == 1
    expected = plain_round_reference(cfg, [0, 1])
    got = np.asarray(summary["final_params"])
    assert np.max(np.abs(got - expected)) <= _tolerance(summary)
    assert np.max(np.abs(plain_round_reference(cfg, [0, 1, 2]) - expected)) > 100 * _tolerance(summary)


def test_secagg_aborts_cleanly_below_the_threshold(tmp_path, secagg) -> None:
    result = tmp_path / "out.json"
    cfg = app_run_config({"channel": "secagg", "num-rounds": 2, "seed": 2, "secagg-threshold": 2,
                          "secagg-min-clients": 2, "result-path": str(result), **secagg.run,
                          **FAST})

    def two_crash(i, _t, fields):  # node 2 before its masked input of round 0, node 1 of round 1
        return "masked" in fields and (i, fields["round"]) in ((2, 0), (1, 1))

    with pytest.raises(ProtocolAbort, match="below the threshold t = 2"):
        run_server(InProcessGrid(client_app, secagg.lenient(2), cfg, silent=two_crash), cfg,
                   log=quiet)
    import json

    saved = json.loads(result.read_text())
    assert saved["status"] == "aborted" and "below the threshold" in saved["abort_reason"]
    assert len(saved["rounds"]) == 1  # round 0 completed; its model is kept


# ------------------------------------------------------------------ DP and compression
@pytest.mark.parametrize("mode", ["central", "local"])
def test_dp_runs_as_in_the_simulation(mode) -> None:
    cfg = app_run_config({"channel": "plain", "num-rounds": 1, "seed": 1, "dp": mode, "dp-clip-norm": 1.0,
                          "dp-noise-multiplier": 0.5, "dp-reproducible-noise": True, **FAST})
    summary = run_server(InProcessGrid(client_app, NODES, cfg), cfg, log=quiet)
    sim = simulate(cfg)
    np.testing.assert_array_equal(summary["final_params"], sim.final_params)
    assert summary["rounds"][-1]["epsilon"] == pytest.approx(sim.history[-1].extra["epsilon"])
    assert summary["privacy"]["client"]["warning"] == "not private: noise reproducible from the seed"
    # the default: noise from the OS, so the seed no longer determines (or reveals) it
    secure = {**cfg, "dp-reproducible-noise": False}
    other = run_server(InProcessGrid(client_app, NODES, secure), secure, log=quiet)
    assert np.max(np.abs(np.asarray(other["final_params"]) - sim.final_params)) > 1e-3
    assert other["privacy"]["private"] is True
    assert other["privacy"]["client"]["unit"] == "hospital"


def test_old_dp_wrapper_names_still_work_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="use dp = 'central'"):
        strategy = build_strategy({"wrappers": "central-dp", "dp-clip-norm": 1.0,
                                   "dp-noise-multiplier": 1.0})
    assert strategy.mechanism == "central" and strategy.noise.secure
    with pytest.raises(ConfigurationError, match="two DP mechanisms"), \
            pytest.warns(DeprecationWarning):
        build_strategy({"wrappers": "local-dp", "dp": "central", "dp-clip-norm": 1.0,
                        "dp-noise-multiplier": 1.0})
    with pytest.raises(ConfigurationError, match=r"dp must be one of \['none', 'central', "
                       r"'local', 'distributed'\], got 'gaussian'"):
        build_strategy({"dp": "gaussian", "dp-clip-norm": 1.0, "dp-noise-multiplier": 1.0})


def test_distributed_dp_settings_in_a_deployment() -> None:
    from securefed.dp import DistributedDP
    from securefed.flower.secagg_stages import build_secagg_channel
    from securefed.flower.settings import DeploymentSettings

    cfg = app_run_config({"channel": "secagg", "dp": "distributed", "dp-clip-norm": 0.5,
                          "dp-noise-multiplier": 1.0, "dp-dropout-tolerance": 0.25,
                          "secagg-mode": "honest-but-curious"})
    strategy = build_strategy(cfg)
    assert isinstance(strategy, DistributedDP) and strategy.integer_noise.secure
    assert strategy.integer_noise.dropout_tolerance == 0.25
    channel = build_secagg_channel(cfg, strategy=strategy)
    assert channel.integer_noise is strategy.integer_noise  # the simulation accounts its noise
    assert (channel.clip_range, channel.max_weight) == (strategy.secagg_clip_range(), 1.0)
    with pytest.raises(ConfigurationError, match="expected channel = 'secagg', got channel = 'plain'"):
        DeploymentSettings.from_run_config({**cfg, "channel": "plain"})
    with pytest.raises(ConfigurationError, match="expected secagg-clip-range and secagg-max-weight "
                                                 "at their defaults, got 5.0 and 10000.0"):
        build_secagg_channel({**cfg, "secagg-clip-range": 5.0})
    with pytest.raises(ConfigurationError, match="dp-dropout-tolerance applies to dp = 'distributed' "
                                                 "only, got dp = 'central'"):
        build_strategy({**cfg, "dp": "central"})


def test_compressed_updates_travel_as_in_the_simulation() -> None:
    cfg = app_run_config({"channel": "plain", "strategy": "fedmedheter", "compression": "quant8", "num-rounds": 2,
                          "seed": 6, **FAST})
    summary = run_server(InProcessGrid(client_app, NODES, cfg), cfg, log=quiet)
    sim = simulate(cfg)
    np.testing.assert_array_equal(summary["final_params"], sim.final_params)
    assert [r["bytes_up"] for r in summary["rounds"]] == [h.bytes_up for h in sim.history]


def test_a_node_answers_one_unmask_request_per_round(secagg) -> None:
    """After a round, the node has deleted that round's keys: a second (replayed) unmask
    request, which could otherwise reveal both shares of a peer, gets an error."""
    from flwr.app import Message

    from securefed.flower.transport import make_content

    cfg = app_run_config({"channel": "secagg", "num-rounds": 1, "seed": 3, **secagg.run, **FAST})
    grid = InProcessGrid(client_app, secagg.nodes, cfg)
    run_server(grid, cfg, log=quiet)
    ctx = next(iter(grid._contexts.values()))
    assert not [k for k in ctx.state.config_records if k.startswith("securefed-secagg-client")]
    msg = Message(content=make_content({"unmask": b"\x00" * 64, "unmask_round": 0}),
                  dst_node_id=ctx.node_id, message_type="train.secagg")
    msg.metadata.__dict__["_message_id"] = "replay"
    with pytest.raises(MessageRejected, match="holds no protocol state for that round"):
        client_app(msg, ctx)


def test_client_sampling_matches_the_engine() -> None:
    cfg = app_run_config({"channel": "plain", "num-rounds": 3, "clients-per-round": 2, "seed": 9, **FAST})
    summary = run_server(InProcessGrid(client_app, NODES, cfg), cfg, log=quiet)
    sim = run_federated(pima_federation(seed=0, n_hospitals=3), strategy=build_strategy(cfg),
                        model=build_model(cfg), rounds=3, seed=9, clients_per_round=2)
    np.testing.assert_array_equal(summary["final_params"], sim.final_params)
    assert [len(r["selected"]) for r in summary["rounds"]] == [2, 2, 2]


def test_secagg_with_client_sampling_uses_only_the_selected(secagg) -> None:
    cfg = app_run_config({"channel": "secagg", "num-rounds": 2, "clients-per-round": 2,
                          "seed": 9, "secagg-min-clients": 2, **secagg.run, **FAST})
    summary = run_server(InProcessGrid(client_app, secagg.lenient(2), cfg), cfg, log=quiet)
    for r in summary["rounds"]:
        assert len(r["selected"]) == 2 and r["contributors"] == r["selected"]


def test_secagg_honest_but_curious_mode_is_named_on_both_sides(secagg) -> None:
    """The weaker mode runs without identity keys when the run config and the nodes both
    name it; a node that keeps the default refuses to join it."""
    cfg = app_run_config({"channel": "secagg", "num-rounds": 1, "seed": 4,
                          "secagg-mode": "honest-but-curious", **FAST})
    hbc_nodes = [{**n, "secagg-mode": "honest-but-curious"} for n in NODES]
    summary = run_server(InProcessGrid(client_app, hbc_nodes, cfg), cfg, log=quiet)
    assert summary["rounds"][0]["revealed"]["mode"] == "honest-but-curious"
    with pytest.raises(ProtocolAbort, match="advertised keys"):
        run_server(InProcessGrid(client_app, secagg.nodes, cfg), cfg, log=quiet)


def test_secagg_node_refuses_a_server_survivor_set_below_its_minimum(secagg) -> None:
    """The server lowers its own minimum to 2; the nodes keep theirs (3): when a node
    crashes, the survivors refuse to sign a set of two and the run aborts."""
    cfg = app_run_config({"channel": "secagg", "num-rounds": 1, "seed": 2, "secagg-threshold": 2,
                          "secagg-min-clients": 2, **secagg.run, **FAST})

    def node2_crashes(i, _t, fields):
        return i == 2 and "masked" in fields

    with pytest.raises(ProtocolAbort, match="signed the survivor set"):
        run_server(InProcessGrid(client_app, secagg.nodes, cfg, silent=node2_crashes), cfg,
                   log=quiet)


def test_secagg_malicious_mode_needs_the_roster_at_the_server() -> None:
    from securefed.errors import ConfigurationError

    cfg = app_run_config({"channel": "secagg", "num-rounds": 1, **FAST})
    with pytest.raises(ConfigurationError, match="needs secagg-roster"):
        run_server(InProcessGrid(client_app, NODES, cfg), cfg, log=quiet)
