"""An in-process stand-in for Flower's ``Grid``: dry-run the apps without starting processes.

:class:`InProcessGrid` hands each message to the ClientApp of its destination node, in the
same process, with that node's own ``context.state`` kept between messages (as a SuperNode
keeps it) and a ClientApp exception turned into an error reply (as Flower does).  A
``silent`` rule makes chosen nodes stop answering from a chosen message on, which is how a
crashed hospital looks to the ServerApp.

It exercises everything the deployment does except the network and the processes: the
message contents, the per-node state, the stage order and the dropout handling.  The
real-process tests in ``tests/test_flower_deploy.py`` cover the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["InProcessGrid", "plain_round_reference"]


class InProcessGrid:
    """Delivers messages to in-process ClientApps, one per node config.

    ``silent(node_index, message_type, fields)`` returns true for a message the node must
    never answer (and every later one: a crashed node stays down).
    """

    def __init__(
        self,
        client_app: Any,
        node_configs: Sequence[Mapping[str, Any]],
        run_config: Mapping[str, Any],
        *,
        silent: Callable[[int, str, Mapping[str, Any]], bool] | None = None,
    ) -> None:
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        # Inside a real ServerApp process Flower sets these before main() runs; messages
        # take their run and sender ids from them.
        for attr, value in (("run_id", 1), ("node_id", 0), ("task_id", 0)):
            try:
                getattr(TaskIdentity, attr)
            except RuntimeError:
                setattr(TaskIdentity, attr, value)

        self._app = client_app
        self._ids = [1000 + 17 * i for i in range(len(node_configs))]
        self._contexts = {
            nid: Context(run_id=1, node_id=nid, node_config=dict(cfg), state=RecordDict(),
                         run_config=dict(run_config))
            for nid, cfg in zip(self._ids, node_configs, strict=True)
        }
        self._silent = silent
        self._down: set[int] = set()
        self._counter = itertools.count()
        self._replies: dict[str, Any] = {}
        self.delivered: list[tuple[int, str]] = []  # (node index, message type), for tests

    def get_node_ids(self) -> list[int]:
        return list(self._ids)

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        from flwr.app import Error, Message

        from securefed.flower.transport import read_content

        ids = []
        for msg in messages:
            mid = f"msg-{next(self._counter)}"
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            node = msg.metadata.dst_node_id
            index = self._ids.index(node)
            fields, _ = read_content(msg.content)
            if node in self._down or (self._silent is not None and
                                      self._silent(index, msg.metadata.message_type, fields)):
                self._down.add(node)
                continue
            self.delivered.append((index, msg.metadata.message_type))
            try:
                reply = self._app(msg, self._contexts[node])
            except Exception as exc:  # noqa: BLE001 - Flower turns any exception into an error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self._replies[mid] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]


def plain_round_reference(run_config: Mapping[str, Any], survivors: Sequence[int], *,
                          num_clients: int = 3) -> Any:
    """The model after round 0 if exactly ``survivors`` contribute, computed in the clear.

    Uses the engine's seeds and the strategy's phases, on the bundled Pima partitions: the
    value a secure round that lost the other clients must reveal (up to quantisation).
    """
    import numpy as np

    from securefed.data import pima_federation
    from securefed.federated.round import client_step, seed_streams
    from securefed.flower.settings import build_model, build_strategy
    from securefed.models import get_flat_params

    fed = pima_federation(seed=0, n_hospitals=num_clients)
    strategy, spec = build_strategy(run_config), build_model(run_config)
    streams = seed_streams(int(run_config["seed"]), num_clients)
    p0 = get_flat_params(spec.build(seed=streams.init_seed))
    total, weights = np.zeros_like(p0), 0.0
    for cid in survivors:
        step = client_step(strategy, spec.build(), fed.clients[cid], p0, strategy.configure(0),
                           rng=streams.client_rng(cid), client_state={})
        total += step.upload.vector
        weights += step.upload.weight
    return strategy.server_update(p0, total / weights, round_index=0)
