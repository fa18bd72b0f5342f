"""The ServerApp: the coordinator's side of a Flower deployment of securefed.

It drives the same round as :func:`securefed.federated.run_federated`, phase by phase:
``before_round`` -> ``configure`` -> (clients: ``local_train``, ``client_weight``,
``client_process``) -> channel aggregation -> ``server_aggregate`` -> ``server_update``,
with the same seeds, so that a deployment and a simulation with the same run config and seed
end on the same model (bit for bit for the plain channel; within the quantisation tolerance
under secure aggregation).

The ServerApp receives only what the chosen channel lets through: under the plain channel
each hospital's encoded weighted update; under secure aggregation masked vectors, public
keys, encrypted key shares and, at the end, the sum.  It never receives patient rows.

At the end it writes a JSON summary (final parameters, per-round figures, which hospitals
contributed, and why any did not) to the run config's ``result-path`` when one is given.

**Checkpoints and resumption.**  With ``checkpoint-path`` set, the run is saved after every
completed round (:mod:`securefed.flower.checkpoint`: model, server generator, the strategy's
server state, the DP ledger, the summary so far; written atomically).  A run submitted with
``resume = true`` continues from that file: it skips the completed rounds, continues the
ledger (epsilon never restarts from zero) and runs only the remaining ones, so a SuperLink
or ServerApp that died in round ``k`` costs at most round ``k``.  A round in flight when the
process died is run again from its start with the model of round ``k - 1``; it was never
completed, so it was never applied.  Under local or distributed DP its first attempt is
charged all the same (its noisy data may have left the hospitals): the round is recorded
in flight before its model goes out (:meth:`ServerRun.mark_in_flight`) and the resumed run
charges it.  Protocol messages of the continued run
count rounds from 0 again (each Flower run is a new session for the nodes); the summary,
the strategy and the ledger use the absolute round numbers.

**Hospitals that come back.**  Before each round the ServerApp asks the SuperLink which
SuperNodes are online.  A sampled hospital whose node is offline is left out of that round at
once (no waiting out the timeouts), after waiting up to ``rejoin-wait`` seconds for it.  A
node the ServerApp does not know yet (a hospital that restarted without node authentication
gets a new Flower node id) is asked who it is (``query.hello``) and mapped to its client id,
so a restarted hospital takes part again from the next round it can join.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from securefed.channel import ChannelResult, DropoutPlan, PlainChannel, Upload
from securefed.errors import (
    ConfigurationError,
    InvalidDataError,
    PrivacyBudgetExceeded,
    ProtocolAbort,
)
from securefed.federated.engine import evaluate
from securefed.federated.round import sample_clients, seed_streams
from securefed.federated.types import FederationFacts, LocalConfig
from securefed.flower.node import config_to_json
from securefed.flower.settings import (
    DeploymentSettings,
    build_model,
    build_strategy,
    generator_from_json,
    generator_to_json,
)
from securefed.flower.transport import exchange
from securefed.models import get_flat_params, set_flat_params
from securefed.wire import unpack

__all__ = ["app", "run_server", "run_plain", "plain_round", "RoundPlan", "ServerRun"]


def release_charge(strategy: Any) -> dict[str, Any] | None:
    """What one round of ``strategy`` will be charged (the ledger's saved form of a round),
    when its DP releases noisy data from the hospitals before the round completes (local or
    distributed DP); ``None`` otherwise (no DP, or central DP, whose noise the server adds
    when it aggregates)."""
    from securefed.flower.checkpoint import strategy_chain

    for layer in strategy_chain(strategy):
        if getattr(layer, "releases_before_aggregation", False):
            return layer.next_round_entry()
    return None


class RoundPlan:
    """Everything a channel driver needs for one round."""

    def __init__(self, *, grid: Any, round_index: int, params: np.ndarray, config: LocalConfig,
                 selected: tuple[int, ...], nodes: Mapping[int, int], settings: DeploymentSettings,
                 strategy: Any, rng: np.random.Generator, log: Callable[[str], None],
                 run_config: Mapping[str, Any]) -> None:
        self.grid = grid
        self.round_index = round_index
        self.params = params
        self.config = config
        self.selected = selected
        self.nodes = nodes  # client id -> Flower node id
        self.settings = settings
        self.strategy = strategy
        self.rng = rng
        self.log = log
        self.run_config = run_config
        self.failures: dict[int, str] = {}
        self.train_losses: list[float] = []
        self.absolute_round = round_index  # the round in the whole run (set by ServerRun.plan)

    def train_fields(self) -> dict[str, Any]:
        """The public part of a round's first message: model, config and seeding."""
        return {
            "round": self.round_index,
            "seed": self.settings.seed,
            "num_clients": self.settings.num_clients,
            "params": np.asarray(self.params, dtype=np.float64),
            "config": config_to_json(self.config),
        }


def plain_round(plan: RoundPlan) -> ChannelResult:
    """One round of the plain channel: one message out, one reply back per hospital."""
    # The plain channel numbers its messages with the absolute round, so a node that kept
    # its state across a resumed run still refuses a replayed round.
    fields = {**plan.train_fields(), "round": plan.absolute_round}
    outgoing = {plan.nodes[cid]: fields for cid in plan.selected}
    replies, sent = exchange(plan.grid, outgoing, message_type="train",
                             group_id=str(plan.round_index), timeout=plan.settings.round_timeout,
                             straggler_timeout=plan.settings.straggler_timeout)
    by_node = {node: cid for cid, node in plan.nodes.items()}
    uploads: list[Upload] = []
    for node_id, reply in replies.items():
        cid = by_node[node_id]
        if not reply.ok:
            plan.failures[cid] = str(reply.error)
            continue
        got = reply.fields or {}
        if int(got.get("client", -1)) != cid or int(got.get("round", -1)) != plan.absolute_round:
            plan.failures[cid] = (f"reply for round {got.get('round')} from client {got.get('client')}, "
                                  f"expected round {plan.absolute_round} from client {cid}")
            continue
        payload = unpack(got["payload"])
        vector = plan.strategy.codec.decode(payload, dim=plan.params.shape[0])
        uploads.append(Upload(client_id=cid, vector=vector, weight=float(got["weight"]),
                              payload=payload))
        plan.train_losses.append(float(got["train_loss"]))
    if not uploads:
        raise ProtocolAbort(f"round {plan.round_index}: no hospital answered "
                            f"({dict(sorted(plan.failures.items()))})")
    uploads.sort(key=lambda u: u.client_id)  # the simulation sums in client order
    result = PlainChannel().aggregate(uploads, round_index=plan.round_index, dim=plan.params.shape[0],
                                      codec=plan.strategy.codec, dropouts=DropoutPlan(),
                                      rng=plan.rng)
    down = {plan.nodes[cid]: 0 for cid in plan.selected}
    down.update(sent)
    return ChannelResult(
        weighted_sum=result.weighted_sum, weight_sum=result.weight_sum,
        contributors=result.contributors, bytes_up=result.bytes_up,
        bytes_down={cid: down[plan.nodes[cid]] for cid in plan.selected},
        received=result.received, timings=result.timings, revealed=result.revealed,
    )


def _wait_for_nodes(grid: Any, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise ProtocolAbort(f"only {len(nodes)} SuperNodes connected after {timeout:.0f} s, "
                                f"expected {count}")
        time.sleep(0.5)


def _test_data(settings: DeploymentSettings) -> tuple[np.ndarray, np.ndarray] | None:
    if settings.eval_data in ("", "none"):
        return None
    if settings.eval_data == "pima-test":
        from securefed.data import pima_federation

        fed = pima_federation(seed=0, n_hospitals=1)
        return fed.X_test, fed.y_test
    raise ConfigurationError(f"eval-data must be 'pima-test' or 'none', got {settings.eval_data!r}")


def _write_json(path: str, data: Mapping[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, target)  # atomic: a watcher never reads half a file


class ServerRun:
    """The state of one deployed run on the server: model, strategy, generator, summary.

    Channel drivers call :meth:`finish_round` with each round's :class:`ChannelResult`;
    it applies the strategy's server phases and records the round, exactly as the engine.
    """

    def __init__(self, grid: Any, run_config: Mapping[str, Any],
                 log: Callable[[str], None]) -> None:
        self.grid = grid
        self.run_config = dict(run_config)
        self.log = log
        self.settings = DeploymentSettings.from_run_config(run_config)
        self.strategy = build_strategy(run_config)
        self.spec = build_model(run_config)
        streams = seed_streams(self.settings.seed, self.settings.num_clients)
        self.rng = streams.server_rng()
        self.net = self.spec.build(seed=streams.init_seed)
        self.params = get_flat_params(self.net)
        self.test = _test_data(self.settings)
        self.clients_per_round = self.run_config.get("clients-per-round", 0) or None
        self.strategy.start_run(self._facts())
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.total_rounds = self.settings.num_rounds
        self.offset = 0  # rounds completed before this run started (resumed from a checkpoint)
        self.offline: dict[int, str] = {}  # client id -> why it was left out of the next round
        # round attempts whose noisy data may have left the hospitals and whose charge is not
        # in the last checkpoint (local/distributed DP; see securefed.flower.checkpoint)
        self._in_flight: dict[int, dict[str, Any]] = {}  # this run's, absolute round -> entry
        self._carried: list[dict[str, Any]] = []  # earlier runs', charged when this one resumed
        self._last_finish = time.perf_counter()
        self.summary: dict[str, Any] = {
            "status": "running", "strategy": self.strategy.describe(),
            "channel": self.settings.channel, "seed": self.settings.seed,
            "num_clients": self.settings.num_clients, "rounds": [],
            "final_params": [float(x) for x in self.params],
        }

    def _facts(self, *, ledger: Any = None) -> FederationFacts:
        # the federation is num-clients hospitals (connect() requires every id); the sample
        # is drawn from the seeded generator and recorded, so no amplification by sampling
        return FederationFacts(
            num_clients=self.settings.num_clients, clients_per_round=self.clients_per_round,
            sampling="fixed", sample_secret=False, sample_published=True,
            continuing=ledger is not None, privacy_ledger=ledger)

    # -------------------------------------------------------------- checkpoints
    def checkpoint(self) -> Any:
        from securefed.flower.checkpoint import Checkpoint, config_digest, export_strategy_state

        return Checkpoint(
            completed=int(self.summary["rounds"][-1]["round"]) + 1 if self.summary["rounds"] else 0,
            params=np.asarray(self.params, dtype=np.float64).copy(),
            server_rng=generator_to_json(self.rng),
            strategy_state=export_strategy_state(self.strategy),
            ledger=self.strategy.privacy_ledger(), summary=dict(self.summary),
            digest=config_digest(self.run_config))

    def resume_from(self, path: str) -> None:
        """Continue the run saved in ``path`` (see the module docstring)."""
        from securefed.flower.checkpoint import (
            config_digest,
            load_checkpoint,
            restore_strategy_state,
        )

        saved = load_checkpoint(path)
        if saved.digest != config_digest(self.run_config):
            raise ConfigurationError(
                f"checkpoint {path} was written by a run with other settings; continue it with "
                "the same run config (only paths, timeouts and resume may differ)")
        if saved.params.shape != np.asarray(self.params).shape:
            raise ConfigurationError(f"checkpoint {path} holds {saved.params.shape[0]} parameters, "
                                     f"the model has {np.asarray(self.params).shape[0]}")
        restore_strategy_state(self.strategy, saved.strategy_state)
        if (saved.ledger is None) != (self.strategy.privacy_ledger() is None):
            raise ConfigurationError(f"checkpoint {path} and this run disagree on DP (one has a "
                                     "privacy ledger, the other not); expected the same wrappers")
        self.summary = dict(saved.summary)
        self.summary["status"] = "running"
        self.summary.setdefault("resumed_at", []).append(saved.completed)
        ledger = self._with_unfinished(path, completed=saved.completed, ledger=saved.ledger)
        if ledger is not None:  # the model's ledger continues: epsilon never restarts
            self.strategy.start_run(self._facts(ledger=ledger))
        self.rng = generator_from_json(saved.server_rng)
        self.params = saved.params
        self.offset = saved.completed
        self.settings = dataclasses.replace(self.settings,
                                            num_rounds=max(self.total_rounds - saved.completed, 0))
        self.log(f"securefed: resumed from {path} after round {saved.completed}/{self.total_rounds}")

    def start_fresh_after(self, path: str) -> None:
        """``resume = true`` but no checkpoint: the run stopped in its first round and starts
        again from round 0, charging any attempt recorded in flight."""
        self.log(f"securefed: no checkpoint at {path}; the run starts from round 0")
        ledger = self._with_unfinished(path, completed=0, ledger=self.strategy.privacy_ledger())
        if self._carried and ledger is not None:
            self.strategy.start_run(self._facts(ledger=ledger))

    def _with_unfinished(self, path: str, *, completed: int,
                         ledger: dict[str, Any] | None) -> dict[str, Any] | None:
        """``ledger`` with the attempts recorded in flight that never completed (charged:
        their data may have left the hospitals), which stay carried until the next
        checkpoint holds them.  An attempt of a round the checkpoint completed is in its
        ledger already (a crash between writing the checkpoint and the record leaves it
        listed)."""
        from securefed.dp.ledger import PrivacyLedger
        from securefed.flower.checkpoint import load_in_flight

        self._carried = [a for a in load_in_flight(path) if int(a["round"]) >= completed]
        if not self._carried or ledger is None:
            return ledger
        rounds = [int(a["round"]) for a in self._carried]
        self.summary.setdefault("charged_unfinished_attempts", []).extend(rounds)
        self.log(f"securefed: charged the unfinished attempts of rounds {rounds} (their noisy "
                 "data may have reached the server before the run stopped)")
        return PrivacyLedger.append_rounds(ledger, (a["entry"] for a in self._carried))

    def mark_in_flight(self, absolute_round: int) -> None:
        """Called before round ``absolute_round``'s model goes out: under local or
        distributed DP, record beside the checkpoint what the round will be charged, so that
        a run resumed after a crash charges it even though it never completed."""
        entry = release_charge(self.strategy)
        if entry is None or not self.settings.checkpoint_path:
            return
        self._in_flight[int(absolute_round)] = entry
        self._save_in_flight()

    def _save_in_flight(self) -> None:
        from securefed.flower.checkpoint import save_in_flight

        attempts = [*self._carried,
                    *({"round": r, "entry": e} for r, e in sorted(self._in_flight.items()))]
        save_in_flight(self.settings.checkpoint_path, attempts)

    # -------------------------------------------------------------- membership
    def refresh_nodes(self) -> set[int]:
        """Online node ids; new nodes are asked who they are and mapped to their client id."""
        online = {int(n) for n in self.grid.get_node_ids()}
        unknown = online - set(self.nodes.values())
        if unknown and self.nodes:
            replies, _ = exchange(self.grid, {n: {"hello": 1} for n in sorted(unknown)},
                                  message_type="query.hello", group_id="rejoin",
                                  timeout=min(self.settings.round_timeout, 30.0))
            for node_id, reply in sorted(replies.items()):
                if not reply.ok or "client" not in (reply.fields or {}):
                    continue
                cid = int(reply.fields["client"])
                old = self.nodes.get(cid)
                if cid not in range(self.settings.num_clients):
                    continue
                if old is not None and old in online and old != node_id:
                    self.log(f"securefed: node {node_id} claims client {cid}, which node {old} "
                             "holds and is online; ignored")
                    continue
                self.nodes[cid] = node_id
                self.log(f"securefed: client {cid} rejoined as node {node_id}")
        return online

    def sample(self) -> tuple[int, ...]:
        """The clients of the next round, drawn as the engine draws them, without those
        whose node is offline (after waiting up to ``rejoin-wait`` seconds for them)."""
        selected = sample_clients(self.settings.num_clients, self.clients_per_round, self.rng)
        if not self.nodes:  # before the hello: nothing is mapped yet
            return selected
        deadline = time.monotonic() + self.settings.rejoin_wait
        while True:
            online = self.refresh_nodes()
            away = [c for c in selected if self.nodes.get(c) not in online]
            if not away or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        for cid in away:
            self.offline[cid] = "offline at the start of the round (its SuperNode is not connected)"
        if away:
            self.log(f"securefed: clients {away} are offline; the round goes on without them")
        return tuple(c for c in selected if c not in away)

    def plan(self, round_index: int, selected: tuple[int, ...]) -> RoundPlan:
        """Start round ``round_index`` (counted in this run): the strategy's ``before_round``
        and ``configure`` of the absolute round ``round_index + offset``."""
        absolute = round_index + self.offset
        self.strategy.before_round(absolute)
        config = self.strategy.configure(absolute)
        plan = RoundPlan(grid=self.grid, round_index=round_index, params=self.params,
                         config=config, selected=selected, nodes=self.nodes,
                         settings=self.settings, strategy=self.strategy, rng=self.rng,
                         log=self.log, run_config=self.run_config)
        plan.absolute_round = absolute
        plan.failures.update(self.offline)
        self.offline = {}
        return plan

    def finish_round(self, plan: RoundPlan, result: ChannelResult) -> None:
        """``server_aggregate`` -> ``server_update``, then evaluate and record the round.

        A round's ``seconds`` run from the end of the previous round (or from the start of
        the run), so they add up to the run's time even when rounds overlap.
        """
        r = plan.round_index + self.offset
        now = time.perf_counter()
        seconds, self._last_finish = now - self._last_finish, now
        try:
            mean_update = self.strategy.server_aggregate(result, rng=self.rng)
            self.params = self.strategy.server_update(self.params, mean_update, round_index=r)
        except BaseException:
            self.strategy.end_round(r, completed=False)
            raise
        self.strategy.end_round(r, completed=True)
        ledger = self.strategy.privacy_ledger()
        if ledger is not None:  # every epsilon, described (unit, relation, trust, warning)
            self.summary["privacy_ledger"] = ledger
            self.summary["privacy"] = ledger.get("report")
        record: dict[str, Any] = {
            "round": r, "selected": list(plan.selected), "contributors": list(result.contributors),
            "failures": {str(k): v for k, v in sorted(plan.failures.items())},
            "train_loss": float(np.mean(plan.train_losses)) if plan.train_losses else None,
            "bytes_up": int(sum(result.bytes_up.values())),
            "bytes_down": int(sum(result.bytes_down.values())),
            "seconds": seconds,
            **{k: float(v) for k, v in self.strategy.round_metrics(r).items()},
        }
        if result.revealed:  # what the secure channel revealed besides the sum
            record["revealed"] = {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in result.revealed.items()
                if k != "weighted_sum"
            }
        if self.test is not None:
            set_flat_params(self.net, self.params)
            loss, acc, auc = evaluate(self.net, self.test[0], self.test[1])
            record.update(test_loss=loss, test_accuracy=acc, test_auc=auc)
        self.summary["rounds"].append(record)
        self.summary["final_params"] = [float(x) for x in self.params]
        if self.settings.checkpoint_path:
            from securefed.flower.checkpoint import save_checkpoint

            save_checkpoint(self.settings.checkpoint_path, self.checkpoint())
            # this round's charge, and those carried from earlier runs, are in it now
            if self._in_flight.pop(r, None) is not None or self._carried:
                self._carried = []
                self._save_in_flight()
        self.log(f"securefed: round {r + 1}/{self.total_rounds} done in {seconds:.1f} s; "
                 f"contributors {list(result.contributors)}"
                 + (f"; failed {record['failures']}" if plan.failures else "")
                 + (f"; test accuracy {record['test_accuracy']:.3f}" if self.test is not None else ""))

    def connect(self, node_ids: list[int], replies: Mapping[int, Any]) -> None:
        """Map client ids to node ids from the nodes' hello replies (checks the contract)."""
        mapping: dict[int, int] = {}
        for node_id, reply in sorted(replies.items()):
            if node_id not in node_ids or not reply.ok or "num_features" not in (reply.fields or {}):
                continue
            cid = int(reply.fields["client"])
            if cid in mapping:
                raise ConfigurationError(f"two SuperNodes claim client id {cid}; each needs its own")
            nf = int(reply.fields["num_features"])
            if nf != self.spec.n_features:
                raise ConfigurationError(
                    f"client {cid} has {nf} features, the model expects {self.spec.n_features}")
            mapping[cid] = node_id
        missing = sorted(set(range(self.settings.num_clients)) - set(mapping))
        if missing:
            raise ProtocolAbort(f"no SuperNode answered for client ids {missing}; "
                                f"connected clients: {sorted(mapping)}")
        self.nodes.update({cid: mapping[cid] for cid in range(self.settings.num_clients)})
        self.log(f"securefed: {len(self.nodes)} hospitals connected: "
                 + ", ".join(f"client {c} = node {n}" for c, n in self.nodes.items()))

    def wanted(self) -> Callable[[Mapping[int, Any]], bool]:
        """A stop rule for the hello exchange: every client id has answered."""
        want = set(range(self.settings.num_clients))

        def enough(replies: Mapping[int, Any]) -> bool:
            return want <= {int(r.fields["client"]) for r in replies.values()
                            if r.ok and "client" in (r.fields or {})}

        return enough


def run_plain(run: ServerRun, node_ids: list[int]) -> None:
    """Plain channel: a hello round trip, then one round trip per round."""
    replies, _ = exchange(run.grid, {n: {"hello": 1} for n in node_ids},
                          message_type="query.hello", group_id="hello",
                          timeout=run.settings.round_timeout, enough=run.wanted())
    run.connect(node_ids, replies)
    for r in range(run.settings.num_rounds):
        plan = run.plan(r, run.sample())
        run.mark_in_flight(plan.absolute_round)  # before the model (and the request) goes out
        run.finish_round(plan, plain_round(plan))


def run_server(grid: Any, run_config: Mapping[str, Any],
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every round and return the JSON-ready summary (also written to ``result-path``)."""
    run = ServerRun(grid, run_config, log)
    settings = run.settings
    if settings.resume and Path(settings.checkpoint_path).exists():
        run.resume_from(settings.checkpoint_path)
    elif settings.resume:  # stopped before its first checkpoint: nothing to continue, but an
        run.start_fresh_after(settings.checkpoint_path)  # attempt may need its charge
        if run.settings.num_rounds == 0:  # every round was already complete
            run.summary["status"] = "completed"
            if settings.result_path:
                _write_json(settings.result_path, run.summary)
            return run.summary
    try:
        node_ids = _wait_for_nodes(grid, settings.num_clients, settings.node_wait_timeout)
        if settings.channel == "secagg":
            from securefed.flower.secagg_stages import run_secagg

            run_secagg(run, node_ids)
        else:
            run_plain(run, node_ids)
    except Exception as exc:
        # "aborted": the protocol or the settings ended the run (a resume would end the same
        # way); anything else (the SuperLink gone, a transport give-up, memory) "interrupted",
        # which a supervisor resumes from the checkpoint
        stopped = isinstance(exc, (ProtocolAbort, PrivacyBudgetExceeded, ConfigurationError,
                                   InvalidDataError))
        run.summary["status"] = "aborted" if stopped else "interrupted"
        run.summary["abort_reason"] = f"{type(exc).__name__}: {exc}"
        if settings.result_path:
            _write_json(settings.result_path, run.summary)
        raise
    run.summary["status"] = "completed"
    if settings.result_path:
        _write_json(settings.result_path, run.summary)
    return run.summary


def _build_app() -> Any:
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        import flwr.superlink.grid.http_grid as http_grid

        from securefed.flower.transport import fast_object_pulls

        # replies are handed out before all their objects have arrived: ask again after
        # 50 ms, not Flower's 1 s (see fast_object_pulls)
        fast_object_pulls(http_grid)
        run_server(grid, dict(context.run_config))

    return server_app


app = _build_app()
