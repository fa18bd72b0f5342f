"""Secure aggregation over Flower: each protocol stage is one Flower message round trip.

The protocol is :mod:`securefed.secagg.protocol` (Bonawitz et al., CCS 2017, double
masking with Shamir-shared keys), whose client and server state machines exchange typed
messages serialised to bytes.  Here those bytes travel between the ServerApp and the
ClientApps instead of inside one process.

A Flower ClientApp is a fresh process per message, so round trips dominate the time.  Two
things keep them few.  Local training is done in the ``masked_input`` stage, the first
that needs the model.  And consecutive rounds overlap: round r+1's keys are advertised
with round r's masked input, and shared with round r's unmask request.  Each round still
runs the four stages in order, with its own fresh keys and session:

====  ===========================================  ==========================================
trip  server sends                                 node replies
====  ===========================================  ==========================================
1     hello, session of round 0                    client id, features, public keys (round 0)
2     key directory (round 0)                      encrypted key shares (round 0)
3     share ciphertexts + model + config (round    masked input of its weighted update
      r), session of round r+1                     (round r), public keys (round r+1)
4     unmask request (round r), key directory      revealed shares (round r), encrypted key
      (round r+1)                                  shares (round r+1)
====  ===========================================  ==========================================

Trips 3 and 4 repeat for every round: ``2 R + 2`` trips for ``R`` rounds (instead of
``4 R + 1``).  The server state machines run in the ServerApp, the client state machines at
the nodes; between trips a node's protocol state (private keys, the shares it holds) is
saved in its ``context.state``, in the SuperNode's memory on the hospital machine.  The
node's plain encoded update exists only while it computes its masked input.

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
from collections.abc import Mapping
from typing import Any

import numpy as np

from securefed.channel import ChannelResult
from securefed.errors import InvalidDataError, MessageRejected, ProtocolAbort
from securefed.flower.transport import exchange, load_blob, save_blob

__all__ = [
    "build_secagg_channel",
    "run_secagg",
    "client_stage",
    "client_to_bytes",
    "client_from_bytes",
]

_CLIENT_KEY = "securefed-secagg-client-{}"


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
    return client.export_state()


def client_from_bytes(blob: bytes) -> Any:
    """Inverse of :func:`client_to_bytes`."""
    from securefed.secagg import SecAggClient

    return SecAggClient.restore_state(blob)


# ---------------------------------------------------------------------------- node side
def _encoder(fields: Mapping[str, Any]) -> Any:
    from securefed.secagg import FixedPointEncoder

    return FixedPointEncoder(clip_range=float(fields["clip_range"]),
                             max_weight=float(fields["max_weight"]),
                             scale=float(fields["scale"]), bits=int(fields["bits"]))


def _load_client(state: Any, round_index: int, stage: str) -> Any:
    blob = load_blob(state, _CLIENT_KEY.format(round_index))
    if blob is None:
        raise MessageRejected(f"{stage} message for round {round_index}, but this node holds no "
                              "protocol state for that round (it never advertised keys for it)")
    return client_from_bytes(blob)


def _save_client(state: Any, client: Any) -> None:
    save_blob(state, _CLIENT_KEY.format(client.round_index), client_to_bytes(client))


def _forget_client(state: Any, round_index: int) -> None:
    key = _CLIENT_KEY.format(round_index)
    if key in state.config_records:
        del state[key]  # keys and shares of a finished round are no longer needed


def client_stage(run_config: dict[str, Any], client_id: int, load_data: Any,
                 fields: dict[str, Any], state: Any) -> dict[str, Any]:
    """Answer one message of the secure-aggregation pipeline at a node.

    A message holds up to two parts, for two consecutive rounds (see the module
    docstring): ``unmask`` (round r) with ``share`` (round r+1), or ``masked`` (round r,
    with the model: the node trains now) with ``advertise`` (round r+1); the first message
    of a run also holds ``hello``.  ``load_data()`` returns the node's data; it is called
    only when the node trains or says hello.  Any failure fails the whole message, so the
    server drops the node from both rounds at once.
    """
    from securefed.secagg import SecAggClient

    reply: dict[str, Any] = {"client": client_id}
    if "hello" in fields:
        data = load_data()
        reply["num_features"] = int(data.X.shape[1])
    if "unmask" in fields:
        r = int(fields["unmask_round"])
        sa = _load_client(state, r, "unmask")
        reply["unmask"] = sa.unmask(fields["unmask"])
        _forget_client(state, r)
    if "masked" in fields:
        from securefed.flower.node import local_round

        r = int(fields["round"])
        sa = _load_client(state, r, "masked_input")
        vector, weight, _payload, _stats = local_round(run_config, load_data(), fields, state)
        encoder = _encoder(fields)
        # Stochastic rounding from a generator seeded by the OS: never derived from the
        # (public) simulation seed, so the server cannot predict the rounding.
        rounding = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        ints, w = encoder.encode_signed(vector, weight, rng=rounding)
        encoded = encoder.wrap(np.append(ints, w))  # the plain input: never stored, never sent
        reply["masked"] = sa.masked_input(fields["masked"], encoded)
        # Nothing else about this hospital goes with the masked input: no loss, no count of
        # examples, no count of clipped values (they would be per-hospital figures in the
        # clear).  Clipping is reported in the node's own log.
        clipped = int(np.count_nonzero(np.abs(vector) > encoder.clip_range))
        if clipped:
            print(f"securefed: round {r}: {clipped} update coordinates clipped to "
                  f"+-{encoder.clip_range}; ask the coordinator to raise secagg-clip-range",
                  flush=True)
        _save_client(state, sa)
    if "advertise" in fields:
        from securefed.flower.node import check_round

        r = int(fields["advertise_round"])
        check_round({"round": r}, state, kind="secagg")
        sa = SecAggClient(client_id, session=fields["advertise"], round_index=r,
                          bits=int(fields["bits"]), length=int(fields["length"]))
        reply["advertise"] = sa.advertise_keys()
        _save_client(state, sa)
    if "share" in fields:
        r = int(fields["share_round"])
        sa = _load_client(state, r, "share_keys")
        reply["share"] = sa.share_keys(fields["share"])
        _save_client(state, sa)
    return reply


# ---------------------------------------------------------------------------- server side
class _Round:
    """The server's side of one secure round while it is in flight."""

    def __init__(self, run: Any, round_index: int, selected: tuple[int, ...]) -> None:
        from securefed.secagg import SecAggServer
        from securefed.secagg.crypto import new_session_id

        channel = build_secagg_channel(run.run_config)
        self.index = round_index
        self.selected = selected
        self.dim = int(run.params.shape[0])
        self.encoder = channel.encoder_for(len(selected))
        self.graph, self.degree, self.threshold = channel.graph_for(list(selected))
        self.session = new_session_id()
        self.server = SecAggServer(list(selected), round_index=round_index,
                                   threshold=self.threshold, bits=channel.bits,
                                   length=self.dim + 1, graph=self.graph, session=self.session)
        self.bytes_up = dict.fromkeys(selected, 0)
        self.bytes_down = dict.fromkeys(selected, 0)
        self.failures: dict[int, str] = {}
        self.plan: Any = None  # the RoundPlan, made when the round trains

    def advertise_fields(self) -> dict[str, Any]:
        return {"advertise": self.session, "advertise_round": self.index,
                "bits": self.encoder.bits, "length": self.dim + 1}

    def feed(self, stage: str, cid: int, blob: bytes) -> None:
        try:
            self.server.receive(cid, blob)
        except (MessageRejected, InvalidDataError) as exc:
            self.failures.setdefault(cid, f"{stage}: rejected: {exc}")
            return
        self.bytes_up[cid] += len(blob)

    def result(self) -> ChannelResult:
        total = self.server.finish()
        decoded = self.encoder.decode(total)
        weighted_sum, weight_sum = decoded[: self.dim], float(decoded[self.dim])
        if not weight_sum > 0:
            raise ProtocolAbort(f"round {self.index}: the aggregated weight is {weight_sum}, "
                                "expected > 0")
        u2, u3 = self.server.u2, self.server.u3
        return ChannelResult(
            weighted_sum=weighted_sum, weight_sum=weight_sum, contributors=u3,
            bytes_up=self.bytes_up, bytes_down=self.bytes_down, received=(), timings={},
            revealed={"weighted_sum": weighted_sum, "weight_sum": weight_sum, "survivors": u3,
                      "dropped_after_sharing": tuple(sorted(set(u2) - set(u3))),
                      "threshold": self.threshold, "degree": self.degree,
                      "scale": self.encoder.scale, "bits": self.encoder.bits},
        )


def run_secagg(run: Any, node_ids: list[int]) -> None:
    """All rounds of secure aggregation, pipelined two rounds at a time.

    Trips (one Flower message out and one reply back per node): ``hello + advertise(0)``,
    ``share(0)``, then for each round r ``masked(r) [+ advertise(r+1)]`` and ``unmask(r)
    [+ share(r+1)]``: ``2 R + 2`` trips for ``R`` rounds instead of ``4 R + 1``.  Each
    round still runs the four stages of the protocol in order with its own fresh keys and
    session; the next round's keys are only exchanged earlier.  ``before_round`` /
    ``configure`` of round r+1 still come after ``server_update`` of round r.
    """
    settings = run.settings
    rounds: dict[int, _Round] = {}

    def trip(parts: Mapping[int, Mapping[str, Any]], label: str, *,
             nodes: Mapping[int, int] | None = None, enough: Any = None) -> dict[int, Any]:
        """Send ``parts[key]`` to ``nodes[key]`` (client ids by default); replies by key."""
        targets = run.nodes if nodes is None else nodes
        msgs = {targets[k]: dict(v) for k, v in parts.items()}
        replies, _ = exchange(run.grid, msgs, message_type="train.secagg", group_id=label,
                              timeout=settings.round_timeout,
                              straggler_timeout=None if enough else settings.straggler_timeout,
                              enough=enough)
        back = {node: key for key, node in targets.items()}
        for key, fields in parts.items():  # bytes each part put on the wire, per round
            for rnd, stage in _parts_rounds(fields):
                if rnd in rounds and key in rounds[rnd].bytes_down:
                    rounds[rnd].bytes_down[key] += len(fields[stage])
        return {back[node]: reply for node, reply in replies.items()}

    def fail_missing(rnd: _Round, stage: str, replies: Mapping[int, Any], cids: Any) -> None:
        for cid in cids:
            reply = replies.get(cid)
            if reply is None or not reply.ok:
                rnd.failures.setdefault(cid, f"{stage}: {getattr(reply, 'error', 'no reply')}")

    # Trip 1: hello + advertise(0), to every connected node (ids are learnt from the replies).
    first = _Round(run, 0, run.sample())
    rounds[0] = first
    hello = {n: {"hello": 1, **first.advertise_fields()} for n in node_ids}
    replies = trip(hello, "0.advertise_keys", nodes={n: n for n in node_ids}, enough=run.wanted())
    run.connect(node_ids, replies)
    for cid in first.selected:
        first.bytes_down[cid] += len(first.session)
    by_node = {node: cid for cid, node in run.nodes.items()}
    replies = {by_node[n]: rep for n, rep in replies.items() if n in by_node}
    fail_missing(first, "advertise_keys", replies, first.selected)
    for cid in first.selected:
        if cid in replies and replies[cid].ok:
            first.feed("advertise_keys", cid, replies[cid].fields["advertise"])
    directories = first.server.close_advertise_keys()
    # Trip 2: share(0)
    replies = trip({cid: {"share": blob, "share_round": 0} for cid, blob in directories.items()},
                   "0.share_keys")
    fail_missing(first, "share_keys", replies, directories)
    for cid, rep in replies.items():
        if rep.ok:
            first.feed("share_keys", cid, rep.fields["share"])
    deliveries = first.server.close_share_keys()

    r = 0
    while True:
        cur = rounds[r]
        cur.plan = run.plan(r, cur.selected)
        nxt = _Round(run, r + 1, run.sample()) if r + 1 < settings.num_rounds else None
        if nxt is not None:
            rounds[r + 1] = nxt
        # Trip: masked(r) with the model (nodes train now) [+ advertise(r+1)]
        train = {**cur.plan.train_fields(), "clip_range": cur.encoder.clip_range,
                 "max_weight": cur.encoder.max_weight, "scale": cur.encoder.scale,
                 "bits": cur.encoder.bits}
        parts: dict[int, dict[str, Any]] = {cid: {**train, "masked": blob}
                                            for cid, blob in deliveries.items()}
        if nxt is not None:
            for cid in nxt.selected:
                parts.setdefault(cid, {}).update(nxt.advertise_fields())
        replies = trip(parts, f"{r}.masked_input")
        fail_missing(cur, "masked_input", replies, deliveries)
        for cid, rep in replies.items():
            if not rep.ok:
                continue
            if "masked" in rep.fields:
                cur.feed("masked_input", cid, rep.fields["masked"])
        requests = cur.server.close_masked_input()
        pending: Exception | None = None
        directories = {}
        if nxt is not None:
            fail_missing(nxt, "advertise_keys", replies, nxt.selected)
            for cid in nxt.selected:
                rep = replies.get(cid)
                if rep is not None and rep.ok and "advertise" in rep.fields:
                    nxt.feed("advertise_keys", cid, rep.fields["advertise"])
            try:
                directories = nxt.server.close_advertise_keys()
            except ProtocolAbort as exc:  # round r+1 cannot start; finish round r first
                pending = exc
        # Trip: unmask(r) [+ share(r+1)]
        parts = {cid: {"unmask": blob, "unmask_round": r} for cid, blob in requests.items()}
        for cid, blob in directories.items():
            parts.setdefault(cid, {}).update({"share": blob, "share_round": r + 1})
        replies = trip(parts, f"{r}.unmask")
        fail_missing(cur, "unmask", replies, requests)
        for cid, rep in replies.items():
            if rep.ok and "unmask" in rep.fields:
                cur.feed("unmask", cid, rep.fields["unmask"])
        result = cur.result()
        cur.plan.failures.update(cur.failures)
        run.finish_round(cur.plan, result)
        del rounds[r]
        if nxt is None:
            return
        if pending is not None:
            raise pending
        fail_missing(nxt, "share_keys", replies, directories)
        for cid, rep in replies.items():
            if rep.ok and "share" in rep.fields:
                nxt.feed("share_keys", cid, rep.fields["share"])
        deliveries = nxt.server.close_share_keys()
        r += 1


def _parts_rounds(fields: Mapping[str, Any]) -> list[tuple[int, str]]:
    """``(round, field)`` of each protocol part in one node message."""
    out = []
    for stage, key in (("unmask", "unmask_round"), ("share", "share_round"),
                       ("masked", "round"), ("advertise", "advertise_round")):
        if stage in fields:
            out.append((int(fields[key]), stage))
    return out
