"""The ClientApp: what runs at each hospital, inside its SuperNode.

It answers three kinds of message from the ServerApp:

``query.hello``   which client this node is and how many features its data has;
``train``         one round of the plain channel: local training with the strategy's
                  phases (``local_train``, ``client_weight``, ``client_process``) and the
                  encoded weighted update back, if the hospital's node config allows the
                  plain channel (:func:`securefed.flower.node.check_plain_channel`: by
                  default not once it names an identity key);
``train.secagg``  the parts of the secure-aggregation pipeline addressed to this node
                  (see :mod:`securefed.flower.secagg_stages`), when that channel is chosen.

What stays on the node: the patient rows, the local model after training, the unmasked
update under secure aggregation, the node's random generator and any secret key.  Whatever
must outlive one message is kept in ``context.state``, which lives in the SuperNode's memory
on the hospital machine.
"""

from __future__ import annotations

import logging
from typing import Any

from securefed.errors import ConfigurationError, InvalidDataError
from securefed.flower.node import check_plain_channel, check_round, local_round
from securefed.flower.nodedata import load_node_data, node_client_id
from securefed.flower.transport import (
    make_content,
    read_content,
)
from securefed.wire import pack

__all__ = ["app"]

_LOG = logging.getLogger(__name__)


def _own_data(node_config: Any) -> Any:
    """The node's data; a failure to load it is detailed in the node's own log only.

    Flower sends an exception's text to the coordinator as the reply's error reason, and a
    data error names the file, how many rows are bad and where: facts about the hospital's
    records that the coordinator does not need.  It gets a generic reason instead."""
    try:
        return load_node_data(node_config)
    except (InvalidDataError, ConfigurationError) as exc:
        _LOG.error("this node's data could not be loaded: %s", exc)
        raise type(exc)("this hospital's data could not be loaded; the reason is in the "
                        "node's own log") from None


def _build_app() -> Any:
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    client_app = ClientApp()

    @client_app.query("hello")
    def hello(msg: Message, context: Context) -> Message:
        client = _own_data(context.node_config)
        return Message(make_content({"client": client.client_id,
                                     "num_features": int(client.X.shape[1])}), reply_to=msg)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        fields, _ = read_content(msg.content)
        check_plain_channel(context.node_config)  # the hospital's choice, not the run's
        check_round(fields, context.state, kind="train")
        client = _own_data(context.node_config)
        vector, weight, payload, stats = local_round(dict(context.run_config), client, fields,
                                                     context.state, context.node_config)
        reply = {"round": int(fields["round"]), "client": client.client_id, "weight": weight,
                 "payload": pack(payload), **stats}
        return Message(make_content(reply), reply_to=msg)

    @client_app.train("secagg")
    def secagg(msg: Message, context: Context) -> Message:
        from securefed.flower.secagg_stages import client_stage

        fields, _ = read_content(msg.content)
        reply = client_stage(dict(context.run_config), node_client_id(context.node_config),
                             lambda: _own_data(context.node_config), fields, context.state,
                             node_config=context.node_config)
        return Message(make_content(reply), reply_to=msg)

    return client_app


app = _build_app()
