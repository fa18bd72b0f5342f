"""What a hospital's node does with a round's message, apart from Flower's plumbing.

The ClientApp (:mod:`securefed.flower.clientapp`) and the secure-aggregation stages
(:mod:`securefed.flower.secagg_stages`) both call these: the local round (the same
:func:`~securefed.federated.round.client_step` the simulation runs), the replay check, and
the JSON form of the public round configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from securefed.arrays import ClientArrays
from securefed.errors import ConfigurationError, MessageRejected
from securefed.federated.round import client_step
from securefed.federated.types import LocalConfig
from securefed.flower.settings import (
    build_model,
    build_strategy,
    client_generator,
    generator_from_json,
    generator_to_json,
)
from securefed.flower.transport import load_blob, pack_state, save_blob, unpack_state

__all__ = ["local_round", "check_round", "check_node_privacy", "check_plain_channel",
           "config_to_json", "config_from_json"]

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


def check_plain_channel(node_config: Mapping[str, Any]) -> None:
    """The hospital's own choice of whether it answers plain-channel rounds.

    The channel is chosen by whoever submits the run (``channel`` in the run config, which
    the app signature does not cover).  Under ``channel = "plain"`` a node's update reaches
    the server in the clear, so a hospital set up for secure aggregation (its node config
    names an ``identity-key``) refuses plain rounds with
    :class:`~securefed.errors.MessageRejected` unless its node config says
    ``allow-plain-channel = true``; a node without an identity key accepts them unless it
    says ``allow-plain-channel = false``.
    """
    allowed = node_config.get("allow-plain-channel", "")
    if allowed in ("", None):
        allowed = not node_config.get("identity-key")
    if not isinstance(allowed, bool):
        raise ConfigurationError(
            f"node config allow-plain-channel must be true or false, got {allowed!r}")
    if not allowed:
        raise MessageRejected(
            "this hospital answers secure-aggregation rounds only (its node config names an "
            "identity key and does not set allow-plain-channel = true); the run asks for "
            "channel = 'plain', which would send its update to the server in the clear")


def check_node_privacy(node_config: Mapping[str, Any], strategy: Any) -> None:
    """The hospital's own floor on the noise it adds, from its node config.

    The noise level of a run (``dp``, ``dp-noise-multiplier``, ``dp-target-epsilon``) is
    chosen by the coordinator in the run config.  A hospital that does not trust the
    coordinator with it sets ``dp-min-noise-multiplier`` in its node config: the node then
    trains only in a run whose noise is added at the hospitals (``dp = "local"`` or
    ``"distributed"``), drawn from the OS (not reproducible), with a noise multiplier ``z``
    of at least that value, and answers any other training message with
    :class:`~securefed.errors.MessageRejected`.  ``z`` alone fixes the per-round guarantee
    (the node clips to the run's ``C`` itself and the noise is ``z`` times it), so the floor
    holds whatever else the run config says.  Central DP does not meet it: its noise is the
    coordinator's to add.
    """
    floor = node_config.get("dp-min-noise-multiplier", "")
    if floor in ("", None):
        return
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor > 0:
        raise ConfigurationError(
            f"node config dp-min-noise-multiplier must be a number > 0, got {floor!r}")
    mechanism = getattr(strategy, "mechanism", None)
    if mechanism not in ("local", "distributed"):
        raise MessageRejected(
            f"this hospital adds at least noise multiplier {floor} itself (node config "
            f"dp-min-noise-multiplier); the run asks for dp = {mechanism or 'none'!r}, expected "
            "'local' or 'distributed'")
    if getattr(strategy, "reproducible", False):
        raise MessageRejected(
            "this hospital requires noise from the OS (node config dp-min-noise-multiplier); "
            "the run asks for dp-reproducible-noise = true, which is not private")
    z = float(strategy.noise_multiplier)
    if z < float(floor):
        raise MessageRejected(
            f"the run asks for noise multiplier {z:.4g}, below this hospital's floor {floor} "
            "(node config dp-min-noise-multiplier)")


def local_round(
    run_config: dict[str, Any],
    client: ClientArrays,
    fields: dict[str, Any],
    state: Any,
    node_config: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, float, dict[str, Any], dict[str, float]]:
    """One round of local work, exactly as the simulation's engine does it for one client.

    Returns ``(vector, weight, payload, stats)`` where ``vector`` is the weighted update as
    the server will decode it and ``payload`` its encoded form.  The node's generator and
    client state are restored from and saved to ``state``.  ``node_config`` holds the
    hospital's own settings; its DP floor is checked before any training
    (:func:`check_node_privacy`).
    """
    seed = int(fields["seed"])
    num_clients = int(fields["num_clients"])
    if client.client_id >= num_clients:
        raise ConfigurationError(
            f"this node is client {client.client_id} but the run has {num_clients} clients"
        )
    strategy = build_strategy(run_config)
    check_node_privacy(node_config or {}, strategy)
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
    step = client_step(strategy, spec.build(), client, params, config, rng=rng,
                       client_state=client_state)
    save_blob(state, _RNG_KEY, generator_to_json(rng).encode("utf-8"))
    save_blob(state, _CLIENT_STATE_KEY, pack_state(client_state))
    stats = {"train_loss": float(step.local.train_loss),
             "num_examples": float(step.local.num_examples)}
    up = step.upload
    return np.asarray(up.vector, dtype=np.float64), float(up.weight), dict(up.payload), stats


def check_round(fields: dict[str, Any], state: Any, *, kind: str) -> None:
    """Refuse a message for a round this node has already answered (replay)."""
    key = f"securefed-last-{kind}"
    last = load_blob(state, key)
    r = int(fields["round"])
    if last is not None and r <= int(last.decode("ascii")):
        raise MessageRejected(f"{kind} message for round {r}, expected a round after {last.decode()}")
    save_blob(state, key, str(r).encode("ascii"))
