"""Secure aggregation over Flower: each protocol stage is one Flower message round trip.

The protocol is :mod:`securefed.secagg.protocol` (Bonawitz et al., CCS 2017, double
masking with Shamir-shared keys), whose client and server state machines exchange typed
messages serialised to bytes.  Here those bytes travel between the ServerApp and the
ClientApps instead of inside one process, in the same mode and with the same checks as the
simulation: by default the malicious-server mode (signed advertisements, the consistency
round with the digest of the model each node trained on, every check a client makes of the
server's messages, minimum contributors); ``secagg-mode = "honest-but-curious"`` in the run
config selects the faster mode, and a node accepts it only if its own node config says so.

What each hospital decides for itself, in its node config (the server cannot change it):

``identity-key``        path of the hospital's identity file (``securefed keys identity``);
``roster``              path of the pinned roster (its SHA-256 fingerprint checked out of band);
``secagg-mode``         ``"malicious"`` (default) or ``"honest-but-curious"``;
``secagg-min-clients``  the fewest contributors whose sum it helps to reveal (default 3);
``dp-min-noise-multiplier``  optional: the least noise it adds itself (local or distributed
                        DP, from the OS); it trains in no run that asks for less.

The server reads its own copy of the roster from the run config (``secagg-roster``) and
checks every signature with it, so an impostor node is refused.

A Flower ClientApp is a fresh process per message, so round trips dominate the time.  Two
things keep them few.  Local training is done in the ``masked_input`` stage, the first
that needs the model.  And consecutive rounds overlap: round r+1's keys are advertised
with round r's masked input, and shared with round r's next message.  Each round still
runs its stages in order, with its own fresh keys and session:

====  ===========================================  ==========================================
trip  server sends                                 node replies
====  ===========================================  ==========================================
1     hello, session of round 0                    client id, features, public keys (round 0)
2     key directory (round 0)                      encrypted key shares (round 0)
3     share ciphertexts + model + config (round    masked input of its weighted update
      r), session of round r+1                     (round r), public keys (round r+1)
4     survivor set to sign (round r), key          consistency signature (round r), encrypted
      directory (round r+1)                        key shares (round r+1)
5     unmask request with t signatures (round r)   revealed shares (round r)
====  ===========================================  ==========================================

Trips 3-5 repeat for every round: ``3 R + 2`` trips for ``R`` rounds.  In
honest-but-curious mode there is no trip 5: trip 4 carries the unmask request (``2 R + 2``
trips).  The server state machines run in the ServerApp, the client state machines at the
nodes; between trips a node's protocol state (private keys, the shares it holds) is saved in
its ``context.state``, in the SuperNode's memory on the hospital machine.  The node's plain
encoded update exists only while it computes its masked input.

The channel's parameters (``clip_range``, ``max_weight``, ``bits``, ``scale``, threshold,
mode, minimum) come from the run config through :func:`build_secagg_channel`, and the
fixed-point scale and threshold are chosen by :class:`securefed.secagg.SecAggChannel`
itself, so a deployment and a simulation with the same settings encode identically.  They
differ only in the stochastic rounding: in deployment each node rounds with its own
generator seeded from the OS, so results agree within the quantisation tolerance
(``n / scale`` per coordinate of the weighted sum), not bit for bit.  With
``dp-reproducible-noise = true`` (not private) a node instead draws its rounding and noise
share from its per-round stream derived from the run's seed
(:meth:`securefed.federated.round.SeedStreams.channel_rng`), the stream the simulation's
channel uses for that client, so the two agree on the noise too.

**Distributed DP** (``dp = "distributed"``).  Each node clips and bounds its update
(:class:`securefed.dp.DistributedDP`, built from the run config as in the simulation), rounds
it to the fixed-point grid and adds its share of a discrete Gaussian
(:class:`securefed.dp.DiscreteGaussianNoise`: by default the exact sampler on the OS CSPRNG)
to the integers before masking, exactly where the simulation's channel adds it; only the
sum, carrying every contributor's share, is ever unmasked.  A node sizes its share for the
clients whose key shares it received in this round (each one opened and, in malicious mode,
bound to a signed advertisement), so a server cannot make it add less noise by claiming
more participants.  The server draws no noise: it records what the nodes were asked to add
(:meth:`~securefed.dp.DiscreteGaussianNoise.record_shares`) and the mechanism accounts for
the shares that reached the sum (the round's contributors).  Threat model: the hospitals
follow the protocol and keep their shares to themselves; a server colluding with ``k``
hospitals learns their shares and removes them, leaving ``n - k`` shares in the sum, and
the ledger states the epsilon for every ``k`` (``privacy_ledger`` in the summary).  The noise
level (``dp-noise-multiplier``, ``dp-clip-norm``) is read from the run config, which the
coordinator submits; a hospital that does not trust the coordinator with it sets its own
floor, ``dp-min-noise-multiplier`` in its node config
(:func:`securefed.flower.node.check_node_privacy`), and its node trains in no run that asks
for less.

A node that stops answering (crash, network) is dropped at the stage where it fell silent;
the round completes with the survivors' sum while at least ``max(t, min_clients)`` remain
and aborts with :class:`~securefed.errors.ProtocolAbort` otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from securefed.channel import ChannelResult
from securefed.errors import ConfigurationError, InvalidDataError, MessageRejected, ProtocolAbort
from securefed.flower.transport import exchange, load_blob, save_blob

__all__ = [
    "build_secagg_channel",
    "run_secagg",
    "client_stage",
    "client_to_bytes",
    "client_from_bytes",
    "node_secagg_settings",
]

_CLIENT_KEY = "securefed-secagg-client-{}"
_LOG = logging.getLogger(__name__)
_DEFAULT_CLIP_RANGE = 100.0
_DEFAULT_MAX_WEIGHT = 10_000.0


def build_secagg_channel(run_config: Mapping[str, Any], *, strategy: Any = None) -> Any:
    """The :class:`~securefed.secagg.SecAggChannel` a run config describes.

    Keys: ``secagg-clip-range``, ``secagg-max-weight``, ``secagg-bits``, ``secagg-scale``
    (0: chosen per round), ``secagg-threshold`` (0: the channel's default, a majority),
    ``secagg-mode`` and ``secagg-min-clients``.

    With ``dp = "distributed"`` the channel is the one the mechanism needs
    (:func:`securefed.secagg.secagg_channel_for`: its range widened for the noise, uniform
    weights) and carries the mechanism's integer noise; ``strategy`` is the
    :class:`~securefed.dp.DistributedDP` of the simulation the channel serves (built from
    the run config when omitted), whose ledger accounts for the noise the channel adds.
    ``secagg-clip-range`` and ``secagg-max-weight`` are then set by the mechanism, and a
    value other than their defaults is refused.
    """
    from securefed.flower.settings import build_strategy, dp_mode
    from securefed.secagg import SecAggChannel, secagg_channel_for

    scale = float(run_config.get("secagg-scale", 0.0))
    threshold = int(run_config.get("secagg-threshold", 0))
    common = dict(
        scale=scale if scale > 0 else None,
        threshold=threshold if threshold > 0 else None,
        mode=str(run_config.get("secagg-mode", "malicious")),
        min_clients=int(run_config.get("secagg-min-clients", 3)),
    )
    bits = int(run_config.get("secagg-bits", 32))
    clip_range = float(run_config.get("secagg-clip-range", _DEFAULT_CLIP_RANGE))
    max_weight = float(run_config.get("secagg-max-weight", _DEFAULT_MAX_WEIGHT))
    if dp_mode(run_config) == "distributed":
        if (clip_range, max_weight) != (_DEFAULT_CLIP_RANGE, _DEFAULT_MAX_WEIGHT):
            raise ConfigurationError(
                "with dp = 'distributed' the fixed-point range comes from dp-clip-norm and the "
                "noise (uniform weights); expected secagg-clip-range and secagg-max-weight at "
                f"their defaults, got {clip_range} and {max_weight}")
        dp = strategy if strategy is not None else build_strategy(run_config)
        if getattr(dp, "integer_noise", None) is None:
            raise ConfigurationError(
                f"dp = 'distributed' needs the DistributedDP strategy the run config builds, "
                f"got {type(dp).__name__}")
        return secagg_channel_for(dp, bits=bits, **common)
    return SecAggChannel(clip_range=clip_range, max_weight=max_weight, bits=bits, **common)


# ---------------------------------------------------------------------------- node state
def node_secagg_settings(node_config: Mapping[str, Any], client_id: int) -> dict[str, Any]:
    """The hospital's own secure-aggregation settings, from its node config (see the module
    docstring): mode, minimum number of contributors, identity key and roster."""
    from securefed.identity import IdentityKey, Roster
    from securefed.secagg import DEFAULT_MIN_CLIENTS, MALICIOUS, MODES

    mode = str(node_config.get("secagg-mode", MALICIOUS))
    if mode not in MODES:
        raise ConfigurationError(f"node config secagg-mode must be one of {MODES}, got {mode!r}")
    minimum = node_config.get("secagg-min-clients", DEFAULT_MIN_CLIENTS)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ConfigurationError(f"node config secagg-min-clients must be an integer >= 1, got {minimum!r}")
    out: dict[str, Any] = {"mode": mode, "min_clients": minimum}
    if mode == MALICIOUS:
        missing = [k for k in ("identity-key", "roster") if not node_config.get(k)]
        if missing:
            raise ConfigurationError(
                f"secure aggregation in malicious mode needs the node config keys {missing} (the "
                "hospital's identity file and the pinned roster, from 'securefed keys identity'); "
                "set secagg-mode = \"honest-but-curious\" in the node config to run without them")
        identity = IdentityKey.load(str(node_config["identity-key"]))
        if identity.client_id != client_id:
            raise ConfigurationError(
                f"identity file is for client {identity.client_id}, this node is client {client_id}")
        roster = Roster.load(str(node_config["roster"]))
        identity.check_in(roster)
        out.update(identity=identity, roster=roster)
    return out


def client_to_bytes(client: Any) -> bytes:
    """Serialise a :class:`~securefed.secagg.SecAggClient` between two messages.

    The blob holds the node's private keys and the shares it holds: it is written only to
    the node's own ``context.state`` and never sent.
    """
    return client.export_state()


def client_from_bytes(blob: bytes, *, identity: Any = None, roster: Any = None) -> Any:
    """Inverse of :func:`client_to_bytes` (with the node's identity and roster)."""
    from securefed.secagg import SecAggClient

    return SecAggClient.restore_state(blob, identity=identity, roster=roster)


# ---------------------------------------------------------------------------- node side
def _encoder(fields: Mapping[str, Any]) -> Any:
    from securefed.secagg import FixedPointEncoder

    return FixedPointEncoder(clip_range=float(fields["clip_range"]),
                             max_weight=float(fields["max_weight"]),
                             scale=float(fields["scale"]), bits=int(fields["bits"]))


class _NodeRounds:
    """A node's protocol clients, kept in ``context.state`` between messages."""

    def __init__(self, state: Any, settings: Mapping[str, Any]) -> None:
        self.state = state
        self.identity = settings.get("identity")
        self.roster = settings.get("roster")

    def load(self, round_index: int, stage: str) -> Any:
        blob = load_blob(self.state, _CLIENT_KEY.format(round_index))
        if blob is None:
            raise MessageRejected(f"{stage} message for round {round_index}, but this node holds no "
                                  "protocol state for that round (it never advertised keys for it)")
        return client_from_bytes(blob, identity=self.identity, roster=self.roster)

    def save(self, client: Any) -> None:
        save_blob(self.state, _CLIENT_KEY.format(client.round_index), client_to_bytes(client))

    def forget(self, round_index: int) -> None:
        key = _CLIENT_KEY.format(round_index)
        if key in self.state.config_records:
            del self.state[key]  # keys and shares of a finished round are no longer needed


def _node_stream(strategy: Any, fields: Mapping[str, Any], client_id: int) -> np.random.Generator:
    """The generator a node rounds (and draws a reproducible noise share) with.

    By default seeded from the OS, never from the (public) run seed, so the server cannot
    predict it.  Only with ``dp-reproducible-noise = true`` (not private) is it the client's
    per-round stream derived from the seed, the one the simulation's channel uses for it.
    """
    if bool(getattr(strategy, "reproducible", False)):
        from securefed.federated.round import seed_streams

        streams = seed_streams(int(fields["seed"]), int(fields["num_clients"]))
        return streams.channel_rng(client_id, int(fields.get("absolute_round", fields["round"])))
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(os.urandom(32), "big")))


def _noise_share(strategy: Any, fields: Mapping[str, Any], dim: int, scale: float,
                 rng: np.random.Generator) -> np.ndarray | None:
    """This node's distributed-DP share (``None`` without distributed DP), sized for the
    clients whose key shares this node received in the round (see the module docstring)."""
    noise = getattr(strategy, "integer_noise", None)
    if noise is None:
        return None
    from securefed.secagg.messages import ShareDelivery

    holders = len(ShareDelivery.from_bytes(fields["masked"]).senders) + 1
    share = np.asarray(noise.sample(dim, scale=scale, num_clients=holders, rng=rng))
    return share.astype(np.int64)


def _node_masked(run_config: dict[str, Any], fields: dict[str, Any], rounds: _NodeRounds,
                 load_data: Callable[[], Any], node_config: Mapping[str, Any]) -> bytes:
    """Train on the model just received and answer with the masked input of round r."""
    from securefed.flower.node import local_round
    from securefed.flower.settings import build_strategy
    from securefed.secagg import model_digest

    r = int(fields["round"])
    sa = rounds.load(r, "masked_input")
    vector, weight, _payload, _stats = local_round(run_config, load_data(), fields, rounds.state,
                                                   node_config)
    encoder = _encoder(fields)
    strategy = build_strategy(run_config)
    own = _node_stream(strategy, fields, sa.client_id)
    ints, w = encoder.encode_signed(vector, weight, rng=own)  # rounding first, then the noise
    share = _noise_share(strategy, fields, int(vector.shape[0]), encoder.scale, own)
    if share is not None:
        ints = ints + share
    encoded = encoder.wrap(np.append(ints, w))  # the plain input: never stored, never sent
    digest = model_digest(np.asarray(fields["params"], dtype=np.float64))
    blob = sa.masked_input(fields["masked"], encoded, model_digest=digest)
    # Nothing else about this hospital goes with the masked input: no loss, no count of
    # examples, no count of clipped values (they would be per-hospital figures in the
    # clear).  Clipping is reported in the node's own log.
    clipped = int(np.count_nonzero(np.abs(vector) > encoder.clip_range))
    if clipped:
        _LOG.warning("round %d: %d update coordinates clipped to +-%s; ask the coordinator to "
                     "raise secagg-clip-range", r, clipped, encoder.clip_range)
    rounds.save(sa)
    return blob


def client_stage(run_config: dict[str, Any], client_id: int, load_data: Any,
                 fields: dict[str, Any], state: Any,
                 node_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Answer one message of the secure-aggregation pipeline at a node.

    A message holds up to two parts, for two consecutive rounds (see the module
    docstring): ``masked`` (round r, with the model: the node trains now) with
    ``advertise`` (round r+1); ``consistency`` or ``unmask`` (round r) with ``share``
    (round r+1); ``unmask`` alone; the first message of a run also holds ``hello``.
    ``load_data()`` returns the node's data; it is called only when the node trains or says
    hello.  ``node_config`` holds the hospital's own settings (:func:`node_secagg_settings`).
    Any failure fails the whole message, so the server drops the node from both rounds at
    once.
    """
    from securefed.secagg import SecAggClient

    settings = node_secagg_settings(node_config or {}, client_id)
    rounds = _NodeRounds(state, settings)
    reply: dict[str, Any] = {"client": client_id}
    if "hello" in fields:
        data = load_data()
        reply["num_features"] = int(data.X.shape[1])
    if "consistency" in fields:
        r = int(fields["consistency_round"])
        sa = rounds.load(r, "consistency")
        reply["consistency"] = sa.consistency(fields["consistency"])
        rounds.save(sa)
    if "unmask" in fields:
        r = int(fields["unmask_round"])
        sa = rounds.load(r, "unmask")
        reply["unmask"] = sa.unmask(fields["unmask"])
        rounds.forget(r)
    if "masked" in fields:
        reply["masked"] = _node_masked(run_config, fields, rounds, load_data, node_config or {})
    if "advertise" in fields:
        from securefed.flower.node import check_round

        r = int(fields["advertise_round"])
        check_round({"round": r}, state, kind="secagg")
        sa = SecAggClient(client_id, session=fields["advertise"], round_index=r,
                          bits=int(fields["bits"]), length=int(fields["length"]),
                          mode=settings["mode"], min_clients=settings["min_clients"],
                          identity=settings.get("identity"), roster=settings.get("roster"))
        reply["advertise"] = sa.advertise_keys()
        rounds.save(sa)
    if "share" in fields:
        r = int(fields["share_round"])
        sa = rounds.load(r, "share_keys")
        reply["share"] = sa.share_keys(fields["share"])
        rounds.save(sa)
    return reply


# ---------------------------------------------------------------------------- server side
class _Round:
    """The server's side of one secure round while it is in flight."""

    def __init__(self, run: Any, round_index: int, selected: tuple[int, ...]) -> None:
        from securefed.secagg import MALICIOUS, SecAggServer
        from securefed.secagg.crypto import new_session_id

        channel = build_secagg_channel(run.run_config)
        self.index = round_index
        self.selected = selected
        self.dim = int(run.params.shape[0])
        self.mode = channel.mode
        self.encoder = channel.encoder_for(len(selected))
        self.graph, self.degree, self.threshold = channel.graph_for(list(selected))
        self.session = new_session_id()
        roster = _server_roster(run) if self.mode == MALICIOUS else None
        self.server = SecAggServer(list(selected), round_index=round_index,
                                   threshold=self.threshold, bits=channel.bits,
                                   length=self.dim + 1, graph=self.graph, session=self.session,
                                   mode=self.mode, min_clients=channel.min_clients, roster=roster)
        self.min_clients = channel.min_clients
        self.bytes_up = dict.fromkeys(selected, 0)
        self.bytes_down = dict.fromkeys(selected, 0)
        self.failures: dict[int, str] = {}
        self.plan: Any = None  # the RoundPlan, made when the round trains

    def start_training(self, run: Any) -> None:
        """``before_round`` / ``configure`` of this round; binds the model's digest, which the
        survivors sign in the consistency round."""
        from securefed.secagg import model_digest

        self.plan = run.plan(self.index, self.selected)
        self.server.model_digest = model_digest(np.asarray(self.plan.params, dtype=np.float64))

    def advertise_fields(self) -> dict[str, Any]:
        return {"advertise": self.session, "advertise_round": self.index,
                "bits": self.encoder.bits, "length": self.dim + 1}

    def train_fields(self) -> dict[str, Any]:
        # the absolute round keys a node's reproducible stream (a resumed run numbers its
        # protocol rounds from 0 again)
        return {**self.plan.train_fields(), "absolute_round": self.plan.absolute_round,
                "clip_range": self.encoder.clip_range, "max_weight": self.encoder.max_weight,
                "scale": self.encoder.scale, "bits": self.encoder.bits}

    def feed(self, stage: str, cid: int, blob: bytes) -> None:
        try:
            self.server.receive(cid, blob)
        except (MessageRejected, InvalidDataError) as exc:
            self.failures.setdefault(cid, f"{stage}: rejected: {exc}")
            return
        self.bytes_up[cid] += len(blob)

    def feed_replies(self, stage: str, field: str, replies: Mapping[int, Any], cids: Any) -> None:
        """Record who failed to answer ``stage`` and feed the answers of the others."""
        for cid in cids:
            reply = replies.get(cid)
            if reply is None or not reply.ok:
                self.failures.setdefault(cid, f"{stage}: {getattr(reply, 'error', 'no reply')}")
            elif field in reply.fields:
                self.feed(stage, cid, reply.fields[field])

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
                      "scale": self.encoder.scale, "bits": self.encoder.bits,
                      "mode": self.mode, "min_clients": self.min_clients},
        )


def _server_roster(run: Any) -> Any:
    from securefed.identity import Roster

    path = str(run.run_config.get("secagg-roster", ""))
    if not path:
        raise ConfigurationError(
            "secure aggregation in malicious mode needs the roster on the server too "
            "(run config secagg-roster = path of roster.json from 'securefed keys identity'), "
            "or secagg-mode = \"honest-but-curious\"")
    return Roster.load(path)


class _Pipeline:
    """All rounds of secure aggregation, one method per trip (see the module docstring)."""

    def __init__(self, run: Any, node_ids: list[int]) -> None:
        self.run = run
        self.node_ids = node_ids
        self.settings = run.settings
        self.rounds: dict[int, _Round] = {}

    # ------------------------------------------------------------ transport
    def trip(self, parts: Mapping[int, Mapping[str, Any]], label: str, *,
             nodes: Mapping[int, int] | None = None, enough: Any = None) -> dict[int, Any]:
        """Send ``parts[key]`` to ``nodes[key]`` (client ids by default); replies by key."""
        targets = self.run.nodes if nodes is None else nodes
        msgs = {targets[k]: dict(v) for k, v in parts.items()}
        replies, _ = exchange(self.run.grid, msgs, message_type="train.secagg", group_id=label,
                              timeout=self.settings.round_timeout,
                              straggler_timeout=None if enough else self.settings.straggler_timeout,
                              enough=enough)
        back = {node: key for key, node in targets.items()}
        for key, fields in parts.items():  # bytes each part put on the wire, per round
            for rnd, stage in _parts_rounds(fields):
                if rnd in self.rounds and key in self.rounds[rnd].bytes_down:
                    self.rounds[rnd].bytes_down[key] += len(fields[stage])
        return {back[node]: reply for node, reply in replies.items()}

    def new_round(self, index: int) -> _Round | None:
        if index >= self.settings.num_rounds:
            return None
        rnd = self.rounds[index] = _Round(self.run, index, self.run.sample())
        return rnd

    # ------------------------------------------------------------ trips
    def hello(self) -> dict[int, bytes]:
        """Trip 1: hello + advertise(0), to every connected node; returns round 0's directories."""
        first = self.new_round(0)
        assert first is not None
        hello = {n: {"hello": 1, **first.advertise_fields()} for n in self.node_ids}
        replies = self.trip(hello, "0.advertise_keys", nodes={n: n for n in self.node_ids},
                            enough=self.run.wanted())
        self.run.connect(self.node_ids, replies)
        for cid in first.selected:
            first.bytes_down[cid] += len(first.session)
        by_node = {node: cid for cid, node in self.run.nodes.items()}
        replies = {by_node[n]: rep for n, rep in replies.items() if n in by_node}
        first.feed_replies("advertise_keys", "advertise", replies, first.selected)
        return first.server.close_advertise_keys()

    def share(self, directories: Mapping[int, bytes]) -> dict[int, bytes]:
        """Trip 2: share(0); returns round 0's share deliveries."""
        first = self.rounds[0]
        replies = self.trip({cid: {"share": blob, "share_round": 0}
                             for cid, blob in directories.items()}, "0.share_keys")
        first.feed_replies("share_keys", "share", replies, directories)
        return first.server.close_share_keys()

    def masked(self, cur: _Round, nxt: _Round | None,
               deliveries: Mapping[int, bytes]) -> tuple[dict[int, bytes], dict[int, bytes], Exception | None]:
        """Trip 3: masked(r) with the model (nodes train now) [+ advertise(r+1)].  Returns
        round r's next requests, round r+1's directories and, if round r+1 cannot start, why."""
        cur.start_training(self.run)
        train = cur.train_fields()
        parts: dict[int, dict[str, Any]] = {cid: {**train, "masked": blob}
                                            for cid, blob in deliveries.items()}
        if nxt is not None:
            for cid in nxt.selected:
                parts.setdefault(cid, {}).update(nxt.advertise_fields())
        # from here on the nodes may release noise (distributed or local DP) for this round
        self.run.mark_in_flight(cur.plan.absolute_round)
        replies = self.trip(parts, f"{cur.index}.masked_input")
        cur.feed_replies("masked_input", "masked", replies, deliveries)
        requests = cur.server.close_masked_input()
        directories: dict[int, bytes] = {}
        pending: Exception | None = None
        if nxt is not None:
            nxt.feed_replies("advertise_keys", "advertise", replies, nxt.selected)
            try:
                directories = nxt.server.close_advertise_keys()
            except ProtocolAbort as exc:  # round r+1 cannot start; finish round r first
                pending = exc
        return requests, directories, pending

    def after_masked(self, cur: _Round, nxt: _Round | None, requests: Mapping[int, bytes],
                     directories: Mapping[int, bytes]) -> dict[int, Any]:
        """Trip 4: consistency(r) (malicious mode) or unmask(r), with share(r+1)."""
        field = "consistency" if cur.mode == "malicious" else "unmask"
        parts = {cid: {field: blob, f"{field}_round": cur.index} for cid, blob in requests.items()}
        for cid, blob in directories.items():
            parts.setdefault(cid, {}).update({"share": blob, "share_round": cur.index + 1})
        replies = self.trip(parts, f"{cur.index}.{field}")
        cur.feed_replies(field, field, replies, requests)
        return replies

    def unmask(self, cur: _Round) -> None:
        """Trip 5 (malicious mode): the unmask request with t signatures."""
        requests = cur.server.close_consistency()
        replies = self.trip({cid: {"unmask": blob, "unmask_round": cur.index}
                             for cid, blob in requests.items()}, f"{cur.index}.unmask")
        cur.feed_replies("unmask", "unmask", replies, requests)

    def finish(self, cur: _Round) -> None:
        result = cur.result()
        cur.plan.failures.update(cur.failures)
        noise = getattr(self.run.strategy, "integer_noise", None)
        if noise is not None:
            # distributed DP: every node that received key shares added one noise share,
            # sized for that many holders; the mechanism charges for those that reached the sum
            holders = len(cur.server.u2)
            noise.record_shares(cur.dim, scale=cur.encoder.scale, num_clients=holders,
                                shares=holders)
        self.run.finish_round(cur.plan, result)
        del self.rounds[cur.index]

    # ------------------------------------------------------------ driver
    def run_all(self) -> None:
        deliveries = self.share(self.hello())
        r = 0
        while True:
            cur = self.rounds[r]
            nxt = self.new_round(r + 1)
            requests, directories, pending = self.masked(cur, nxt, deliveries)
            replies = self.after_masked(cur, nxt, requests, directories)
            if cur.mode == "malicious":
                self.unmask(cur)
            self.finish(cur)
            if nxt is None:
                return
            if pending is not None:
                raise pending
            nxt.feed_replies("share_keys", "share", replies, directories)
            deliveries = nxt.server.close_share_keys()
            r += 1


def run_secagg(run: Any, node_ids: list[int]) -> None:
    """All rounds of secure aggregation, pipelined two rounds at a time.

    Each round runs the stages of the protocol in order with its own fresh keys and
    session; the next round's keys are only exchanged earlier.  ``before_round`` /
    ``configure`` of round r+1 still come after ``server_update`` of round r.  See
    :class:`_Pipeline` for one method per trip.
    """
    _Pipeline(run, node_ids).run_all()


def _parts_rounds(fields: Mapping[str, Any]) -> list[tuple[int, str]]:
    """``(round, field)`` of each protocol part in one node message."""
    out = []
    for stage, key in (("unmask", "unmask_round"), ("consistency", "consistency_round"),
                       ("share", "share_round"), ("masked", "round"),
                       ("advertise", "advertise_round")):
        if stage in fields:
            out.append((int(fields[key]), stage))
    return out
