"""Secure aggregation over Flower: each protocol stage is one Flower message round trip.

The protocol is :mod:`securefed.secagg.protocol` (Bonawitz et al., CCS 2017, double
masking with Shamir-shared keys), whose client and server state machines exchange typed
messages serialised to bytes.  Here those bytes travel between the ServerApp and the
ClientApps instead of inside one process:

========  ==========================  =====================================================
trip      server sends                 node does, and replies
========  ==========================  =====================================================
1         model, config, session,     trains locally, encodes ``[weight * update, weight]``
          encoder, threshold           in fixed point (kept on the node), draws its key pairs;
                                       replies its two public keys (``advertise_keys``)
2         its key directory            Shamir-shares its keys, encrypted to each neighbour
                                       (``share_keys``)
3         its share ciphertexts        replies its double-masked input (``masked_input``)
4         unmask request               reveals the shares the server may see (``unmask``)
========  ==========================  =====================================================

Local training is folded into the first trip, so a secure round costs four round trips
(a Flower ClientApp is a fresh process per message, so trips dominate the time).  The
server state machine runs in the ServerApp, the client state machine at each node; between
trips the node's state (private keys, shares it holds, its encoded input) is saved in the
node's ``context.state``, in the SuperNode's memory on the hospital machine.

The channel's parameters (``clip_range``, ``max_weight``, ``bits``, ``scale``, threshold)
come from the run config through :func:`build_secagg_channel`, and the fixed-point scale
and threshold are chosen by :class:`securefed.secagg.SecAggChannel` itself, so a deployment
and a simulation with the same settings encode identically.  They differ only in the
stochastic rounding: in deployment each node rounds with its own generator seeded from the
OS, so results agree within the quantisation tolerance (``n / scale`` per coordinate of the
weighted sum), not bit for bit.

A node that stops answering (crash, network) is dropped at the stage where it fell silent;
the round completes with the survivors' sum while at least ``t`` remain and aborts with
:class:`~securefed.errors.ProtocolAbort` otherwise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from securefed.errors import InvalidDataError, MessageRejected, ProtocolAbort
from securefed.federated.types import ChannelResult
from securefed.federated.wire import pack, unpack
from securefed.flower.transport import exchange, load_blob, save_blob

__all__ = [
    "build_secagg_channel",
    "secagg_round",
    "client_stage",
    "client_to_bytes",
    "client_from_bytes",
]

_CLIENT_KEY = "securefed-secagg-client"
_INPUT_KEY = "securefed-secagg-input"
_STAGE_ORDER = ("advertise_keys", "share_keys", "masked_input", "unmask")


def build_secagg_channel(run_config: Mapping[str, Any]) -> Any:
    """The :class:`~securefed.secagg.SecAggChannel` a run config describes.

    Keys: ``secagg-clip-range``, ``secagg-max-weight``, ``secagg-bits``, ``secagg-scale``
    (0: chosen per round) and ``secagg-threshold`` (0: the channel's default, a majority).
    """
    from securefed.secagg import SecAggChannel

    scale = float(run_config.get("secagg-scale", 0.0))
    threshold = int(run_config.get("secagg-threshold", 0))
    return SecAggChannel(
        clip_range=float(run_config.get("secagg-clip-range", 100.0)),
        max_weight=float(run_config.get("secagg-max-weight", 10_000.0)),
        scale=scale if scale > 0 else None,
        bits=int(run_config.get("secagg-bits", 32)),
        threshold=threshold if threshold > 0 else None,
    )


# ---------------------------------------------------------------------------- node state
def client_to_bytes(client: Any) -> bytes:
    """Serialise a :class:`~securefed.secagg.SecAggClient` between two messages.

    The blob holds the node's private keys and the shares it holds: it is written only to
    the node's own ``context.state`` and never sent.
    """
    fields: dict[str, Any] = {
        "client_id": client.client_id, "session": client.session,
        "round_index": client.round_index, "bits": client.bits, "length": client.length,
        "stage": client.stage, "threshold": int(client._threshold),
    }
    if hasattr(client, "_c_sk"):
        fields["c_sk"] = client._c_sk.private_bytes_raw()
        fields["s_sk"] = client._s_sk_raw
    if hasattr(client, "_b"):
        fields["b"] = client._b
    held = sorted(client._held)
    fields["held_ids"] = np.asarray(held, dtype=np.int64)
    if held:
        fields["held"] = np.stack([np.asarray(client._held[v]) for v in held])
    enc = sorted(client._enc_keys)
    fields["enc_ids"] = np.asarray(enc, dtype=np.int64)
    fields["enc_keys"] = b"".join(client._enc_keys[v] for v in enc)
    peers = sorted(client._peers)
    fields["peer_ids"] = np.asarray(peers, dtype=np.int64)
    fields["peer_keys"] = b"".join(client._peers[v][0] + client._peers[v][1] for v in peers)
    fields["partners"] = np.asarray(sorted(client._partners), dtype=np.int64)
    return pack(fields)


def client_from_bytes(blob: bytes) -> Any:
    """Inverse of :func:`client_to_bytes`."""
    from securefed.secagg import SecAggClient, crypto

    f = unpack(blob)
    client = SecAggClient(int(f["client_id"]), session=f["session"], round_index=int(f["round_index"]),
                          bits=int(f["bits"]), length=int(f["length"]))
    client.stage = str(f["stage"])
    client._threshold = int(f["threshold"])
    if "c_sk" in f:
        client._c_sk = crypto.private_from_bytes(f["c_sk"])
        client._s_sk_raw = f["s_sk"]
        client._s_sk = crypto.private_from_bytes(f["s_sk"])
        client._c_pk = crypto.public_bytes(client._c_sk)
        client._s_pk = crypto.public_bytes(client._s_sk)
    if "b" in f:
        client._b = f["b"]
    held_ids = [int(v) for v in f["held_ids"]]
    client._held = {v: f["held"][i].copy() for i, v in enumerate(held_ids)}
    enc_ids = [int(v) for v in f["enc_ids"]]
    n_enc = len(f["enc_keys"]) // max(len(enc_ids), 1)
    client._enc_keys = {v: f["enc_keys"][i * n_enc:(i + 1) * n_enc] for i, v in enumerate(enc_ids)}
    peer_ids = [int(v) for v in f["peer_ids"]]
    raw = f["peer_keys"]
    client._peers = {v: (raw[64 * i:64 * i + 32], raw[64 * i + 32:64 * i + 64])
                     for i, v in enumerate(peer_ids)}
    client._partners = {int(v) for v in f["partners"]}
    return client


# ---------------------------------------------------------------------------- node side
def _encoder(fields: Mapping[str, Any]) -> Any:
    from securefed.secagg import FixedPointEncoder

    return FixedPointEncoder(clip_range=float(fields["clip_range"]),
                             max_weight=float(fields["max_weight"]),
                             scale=float(fields["scale"]), bits=int(fields["bits"]))


def client_stage(run_config: dict[str, Any], client_data_loader: Any, fields: dict[str, Any],
                 state: Any) -> dict[str, Any]:
    """Answer one secure-aggregation message at a node; returns the reply's fields.

    ``client_data_loader()`` returns the node's :class:`ClientArrays`; it is called only in
    the first stage (training), so later stages neither read the data nor import torch.
    """
    from securefed.secagg import SecAggClient

    stage = str(fields.get("stage"))
    if stage not in _STAGE_ORDER:
        raise MessageRejected(f"unknown secure-aggregation stage {stage!r}; expected one of {_STAGE_ORDER}")
    r = int(fields["round"])
    if stage == "advertise_keys":
        from securefed.flower.clientapp import check_round, local_round

        check_round(fields, state, kind="secagg")
        client = client_data_loader()
        vector, weight, _payload, stats = local_round(run_config, client, fields, state)
        encoder = _encoder(fields)
        # Stochastic rounding from a generator seeded by the OS: it is never derived from
        # the (public) simulation seed, so the server cannot predict the rounding.
        rounding = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        ints, w = encoder.encode_signed(vector, weight, rng=rounding)
        encoded = encoder.wrap(np.append(ints, w))
        if encoded.shape != (int(fields["length"]),):
            raise MessageRejected(f"encoded input has length {encoded.shape[0]}, the server "
                                  f"expects {int(fields['length'])}")
        sa = SecAggClient(client.client_id, session=fields["session"], round_index=r,
                          bits=int(fields["bits"]), length=int(fields["length"]))
        msg = sa.advertise_keys()
        save_blob(state, _INPUT_KEY, pack({"round": r, "x": encoded}))
        save_blob(state, _CLIENT_KEY, client_to_bytes(sa))
        clipped = int(np.count_nonzero(np.abs(vector) > encoder.clip_range))
        return {"stage": stage, "round": r, "client": client.client_id, "msg": msg,
                "clipped": clipped, **stats}
    blob = load_blob(state, _CLIENT_KEY)
    if blob is None:
        raise MessageRejected(f"stage {stage!r} of round {r} arrived before advertise_keys")
    sa = client_from_bytes(blob)
    if sa.round_index != r:
        raise MessageRejected(f"stage {stage!r} for round {r}, this node is in round {sa.round_index}")
    if stage == "share_keys":
        msg = sa.share_keys(fields["msg"])
    elif stage == "masked_input":
        saved = unpack(load_blob(state, _INPUT_KEY) or pack({"round": -1}))
        if int(saved["round"]) != r:
            raise MessageRejected(f"no encoded input for round {r} on this node")
        msg = sa.masked_input(fields["msg"], saved["x"])
        save_blob(state, _INPUT_KEY, pack({"round": -1}))  # the plain input is no longer needed
    else:
        msg = sa.unmask(fields["msg"])
    save_blob(state, _CLIENT_KEY, client_to_bytes(sa))
    return {"stage": stage, "round": r, "client": sa.client_id, "msg": msg}


# ---------------------------------------------------------------------------- server side
def secagg_round(plan: Any) -> ChannelResult:
    """One secure round with the SuperNodes of ``plan.selected``; see the module docstring."""
    from securefed.secagg import SecAggServer
    from securefed.secagg.crypto import new_session_id

    channel = build_secagg_channel(plan.run_config)
    ids = list(plan.selected)
    dim = int(plan.params.shape[0])
    encoder = channel.encoder_for(len(ids))
    graph, degree, t = channel.graph_for(ids)
    session = new_session_id()
    server = SecAggServer(ids, round_index=plan.round_index, threshold=t, bits=channel.bits,
                          length=dim + 1, graph=graph, session=session)
    by_node = {node: cid for cid, node in plan.nodes.items()}
    bytes_up = dict.fromkeys(ids, 0)
    bytes_down = dict.fromkeys(ids, 0)
    timings: dict[str, float] = {}
    clipped = 0

    def trip(stage: str, outgoing: Mapping[int, Mapping[str, Any]]) -> None:
        nonlocal clipped
        t0 = time.perf_counter()
        msgs = {plan.nodes[cid]: {"stage": stage, "round": plan.round_index, **fields}
                for cid, fields in outgoing.items()}
        replies, sent = exchange(plan.grid, msgs, message_type="train.secagg",
                                 group_id=f"{plan.round_index}.{stage}",
                                 timeout=plan.settings.round_timeout,
                                 straggler_timeout=plan.settings.straggler_timeout)
        for node_id, n in sent.items():
            bytes_down[by_node[node_id]] += n
        for node_id, reply in sorted(replies.items()):
            cid = by_node[node_id]
            if not reply.ok:
                plan.failures[cid] = f"{stage}: {reply.error}"
                continue
            got = reply.fields or {}
            if got.get("stage") != stage or int(got.get("client", -1)) != cid \
                    or int(got.get("round", -1)) != plan.round_index:
                plan.failures[cid] = (f"{stage}: reply for stage {got.get('stage')!r} round "
                                      f"{got.get('round')} from client {got.get('client')}")
                continue
            try:
                server.receive(cid, got["msg"])
            except (MessageRejected, InvalidDataError) as exc:
                plan.failures[cid] = f"{stage}: rejected: {exc}"
                continue
            bytes_up[cid] += len(got["msg"])
            if stage == "advertise_keys":
                plan.train_losses.append(float(got["train_loss"]))
                clipped += int(got.get("clipped", 0))
        timings[f"trip.{stage}"] = time.perf_counter() - t0

    first = {**plan.train_fields(), "session": session, "clip_range": encoder.clip_range,
             "max_weight": encoder.max_weight, "scale": encoder.scale, "bits": encoder.bits,
             "length": dim + 1}
    trip("advertise_keys", dict.fromkeys(ids, first))
    directories = server.close_advertise_keys()
    trip("share_keys", {cid: {"msg": blob} for cid, blob in directories.items()})
    deliveries = server.close_share_keys()
    trip("masked_input", {cid: {"msg": blob} for cid, blob in deliveries.items()})
    requests = server.close_masked_input()
    trip("unmask", {cid: {"msg": blob} for cid, blob in requests.items()})
    total = server.finish()
    decoded = encoder.decode(total)
    weighted_sum, weight_sum = decoded[:dim], float(decoded[dim])
    if not weight_sum > 0:
        raise ProtocolAbort(f"round {plan.round_index}: the aggregated weight is {weight_sum}, "
                            "expected > 0")
    if clipped:
        plan.log(f"securefed: round {plan.round_index}: {clipped} coordinates clipped to "
                 f"+-{encoder.clip_range}; raise secagg-clip-range if this is frequent")
    return ChannelResult(
        weighted_sum=weighted_sum, weight_sum=weight_sum, contributors=server.u3,
        bytes_up=bytes_up, bytes_down=bytes_down, received=(), timings=timings,
        revealed={"weighted_sum": weighted_sum, "weight_sum": weight_sum,
                  "survivors": server.u3,
                  "dropped_after_sharing": tuple(sorted(set(server.u2) - set(server.u3))),
                  "threshold": t, "degree": degree, "scale": encoder.scale,
                  "bits": encoder.bits},
    )
