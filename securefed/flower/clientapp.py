"""The ClientApp: what runs at each hospital, inside its SuperNode.

It answers three kinds of message from the ServerApp:

``query.hello``   which client this node is and how many features its data has;
``train``         one round of the plain channel: local training with the strategy's
                  phases (``local_train``, ``client_weight``, ``client_process``) and the
                  encoded weighted update back;
``train.secagg``  the parts of the secure-aggregation pipeline addressed to this node
                  (see :mod:`securefed.flower.secagg_stages`), when that channel is chosen.

What stays on the node: the patient rows, the local model after training, the unmasked
update under secure aggregation, the node's random generator and any secret key.  Whatever
must outlive one message is kept in ``context.state``, which lives in the SuperNode's memory
on the hospital machine.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from securefed.arrays import ClientArrays
from securefed.errors import ConfigurationError, MessageRejected
from securefed.federated.types import LocalConfig
from securefed.flower.nodedata import load_node_data, node_client_id
from securefed.flower.settings import (
    build_model,
    build_strategy,
    client_generator,
    generator_from_json,
    generator_to_json,
)
from securefed.flower.transport import (
    load_blob,
    make_content,
    pack_state,
    read_content,
    save_blob,
    unpack_state,
)
from securefed.wire import pack

__all__ = ["app", "local_round", "check_round", "config_to_json", "config_from_json"]

_RNG_KEY = "securefed-rng"
_CLIENT_STATE_KEY = "securefed-client-state"


def config_to_json(config: LocalConfig) -> str:
    """A :class:`LocalConfig` as JSON (it is public: it travels with the model)."""
    try:
        return json.dumps({
            "learning_rate": config.learning_rate, "local_epochs": config.local_epochs,
            "batch_size": config.batch_size, "proximal_mu": config.proximal_mu,
            "optimizer": config.optimizer, "extra": dict(config.extra),
        })
    except TypeError as exc:
        raise ConfigurationError(f"LocalConfig.extra must hold JSON-able values: {exc}") from exc


def config_from_json(text: str) -> LocalConfig:
    data = json.loads(text)
    return LocalConfig(**data)


def local_round(
    run_config: dict[str, Any],
    client: ClientArrays,
    fields: dict[str, Any],
    state: Any,
) -> tuple[np.ndarray, float, dict[str, Any], dict[str, float]]:
    """One round of local work, exactly as the simulation's engine does it for one client.

    Returns ``(vector, weight, payload, stats)`` where ``vector`` is the weighted update as
    the server will decode it and ``payload`` its encoded form.  The node's generator and
    client state are restored from and saved to ``state``.
    """
    seed = int(fields["seed"])
    num_clients = int(fields["num_clients"])
    if client.client_id >= num_clients:
        raise ConfigurationError(
            f"this node is client {client.client_id} but the run has {num_clients} clients"
        )
    strategy = build_strategy(run_config)
    spec = build_model(run_config)
    if spec.n_features != client.X.shape[1]:
        raise ConfigurationError(
            f"the model expects {spec.n_features} features, this node's data has {client.X.shape[1]}"
        )
    saved = load_blob(state, _RNG_KEY)
    rng = (generator_from_json(saved.decode("utf-8")) if saved is not None
           else client_generator(seed, client.client_id, num_clients))
    client_state = unpack_state(load_blob(state, _CLIENT_STATE_KEY))
    config = config_from_json(str(fields["config"]))
    params = np.asarray(fields["params"], dtype=np.float64)
    net = spec.build()
    local = strategy.local_train(net, client, params, config, rng=rng, client_state=client_state)
    weight = strategy.client_weight(local, client_state=client_state)
    vector, payload = strategy.client_process(local.update, weight, client_state=client_state,
                                              rng=rng)
    save_blob(state, _RNG_KEY, generator_to_json(rng).encode("utf-8"))
    save_blob(state, _CLIENT_STATE_KEY, pack_state(client_state))
    stats = {"train_loss": float(local.train_loss), "num_examples": float(local.num_examples)}
    return np.asarray(vector, dtype=np.float64), float(weight), dict(payload), stats


def check_round(fields: dict[str, Any], state: Any, *, kind: str) -> None:
    """Refuse a message for a round this node has already answered (replay)."""
    key = f"securefed-last-{kind}"
    last = load_blob(state, key)
    r = int(fields["round"])
    if last is not None and r <= int(last.decode("ascii")):
        raise MessageRejected(f"{kind} message for round {r}, expected a round after {last.decode()}")
    save_blob(state, key, str(r).encode("ascii"))


def _build_app() -> Any:
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    client_app = ClientApp()

    @client_app.query("hello")
    def hello(msg: Message, context: Context) -> Message:
        client = load_node_data(context.node_config)
        return Message(make_content({"client": client.client_id,
                                     "num_features": int(client.X.shape[1])}), reply_to=msg)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        fields, _ = read_content(msg.content)
        check_round(fields, context.state, kind="train")
        client = load_node_data(context.node_config)
        vector, weight, payload, stats = local_round(dict(context.run_config), client, fields,
                                                     context.state)
        reply = {"round": int(fields["round"]), "client": client.client_id, "weight": weight,
                 "payload": pack(payload), **stats}
        return Message(make_content(reply), reply_to=msg)

    @client_app.train("secagg")
    def secagg(msg: Message, context: Context) -> Message:
        from securefed.flower.secagg_stages import client_stage

        fields, _ = read_content(msg.content)
        reply = client_stage(dict(context.run_config), node_client_id(context.node_config),
                             lambda: load_node_data(context.node_config), fields, context.state)
        return Message(make_content(reply), reply_to=msg)

    return client_app


app = _build_app()
