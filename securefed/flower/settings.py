"""Run settings of a Flower deployment, and the randomness they derive.

A Flower run is configured by its *run config* (``[tool.flwr.app.config]`` of the app's
``pyproject.toml``, overridable with ``flwr run --run-config``).  The ServerApp and every
ClientApp read the same run config, so both sides build the same :class:`Strategy` and
:class:`ModelSpec` from it with :func:`build_strategy` and :func:`build_model`; a test builds
the in-process simulation from the very same mapping, so deployment and simulation compute
the same thing.

Randomness follows :func:`securefed.federated.run_federated` exactly: one root
``numpy.random.SeedSequence(seed)`` spawns ``2 + num_clients`` children, in order the model
initialisation, the server's generator and one generator per client (client ``k`` gets child
``2 + k``).  A hospital node keeps its generator's state between messages (a new ClientApp
process serves each message), so the stream it draws over a run is the one the simulation
draws for that client.  Under secure aggregation a node rounds (and, with distributed DP,
draws its noise share) with a generator seeded from the OS; only with
``dp-reproducible-noise = true`` does it use its per-round channel stream
(:meth:`~securefed.federated.round.SeedStreams.channel_rng`), as the simulated client does.
Cryptographic secrets never come from these seeds.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefed.errors import ConfigurationError
from securefed.federated.registry import STRATEGIES
from securefed.federated.round import seed_streams
from securefed.federated.strategy import Strategy
from securefed.models import ModelSpec
from securefed.registry import accepted_parameters

__all__ = [
    "DeploymentSettings",
    "DP_MODES",
    "dp_mode",
    "app_run_config",
    "parse_codec",
    "build_strategy",
    "build_model",
    "client_generator",
    "generator_to_json",
    "generator_from_json",
]

#: Wrappers applied around the strategy, by run-config name (DP, compression ...): each is
#: called as ``wrapper(strategy, run_config)`` and returns the wrapped strategy.
WRAPPERS: dict[str, Callable[[Strategy, Mapping[str, Any]], Strategy]] = {}


def parse_codec(name: str) -> Any:
    """A compression codec from its name: ``quant8`` (8-bit stochastic quantisation),
    ``top0.1`` (top-10% sparsification) or ``top0.1-q8`` (both); ``""``/``none``: ``None``."""
    text = str(name).strip().lower()
    if text in ("", "none"):
        return None
    from securefed import compression  # lands with the compression codecs

    try:
        if text.startswith("quant"):
            return compression.StochasticQuantizer(bits=int(text[5:]))
        if text.startswith("top"):
            frac, _, q = text[3:].partition("-q")
            return compression.TopKSparsifier(k_fraction=float(frac),
                                              value_bits=int(q) if q else None)
    except ValueError as exc:
        raise ConfigurationError(f"cannot read compression {name!r}: {exc}") from exc
    raise ConfigurationError(f"compression must be 'none', 'quantB', 'topF' or 'topF-qB', got {name!r}")


def _none_if(text: Any) -> Any:
    return None if isinstance(text, str) and text.strip().lower() in ("", "none") else text


def _strategy_values(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run-config strings turned into what the strategy classes take (``None``, tuples, codecs)."""
    for key in ("adaptive_lr", "server_optimizer"):
        if key in kwargs:
            kwargs[key] = _none_if(kwargs[key])
    if isinstance(kwargs.get("weight_bounds"), str):
        try:
            lo, hi = (float(x) for x in kwargs["weight_bounds"].split(","))
        except ValueError as exc:
            raise ConfigurationError(
                f"weight-bounds must be 'low,high', got {kwargs['weight_bounds']!r}") from exc
        kwargs["weight_bounds"] = (lo, hi)
    if "compression" in kwargs:
        kwargs["compression"] = parse_codec(kwargs["compression"])
    return kwargs


#: DP mechanisms a deployment can use, by their run-config name (``dp = "central"``); the
#: classes come from :mod:`securefed.dp.registry`.  ``distributed`` needs ``channel =
#: "secagg"``: each node adds its discrete Gaussian share inside the secure-aggregation
#: stages (:mod:`securefed.flower.secagg_stages`).
DP_MODES = ("central", "local", "distributed")
_OLD_WRAPPER_NAMES = {"central-dp": "central", "local-dp": "local"}


def _dp_wrapper(kind: str) -> Callable[[Strategy, Mapping[str, Any]], Strategy]:
    """A DP wrapper (``central``, ``local`` or ``distributed``) from the run config's
    ``dp-*`` keys.

    Noise comes from the OS CSPRNG unless ``dp-reproducible-noise = true``: in a deployment
    the seed is written in the run config, so seeded noise could be recomputed and
    subtracted; the reproducible mode exists only to compare a deployment with a simulation
    bit for bit, and the run's summary then says it is not private.  The old key
    ``dp-secure`` is still read (``false`` = reproducible), with a warning.
    ``dp-dropout-tolerance`` (distributed only) is the fraction of a round's hospitals that
    may drop out after adding nothing while the noise still reaches its target.
    """

    def wrap(strategy: Strategy, cfg: Mapping[str, Any]) -> Strategy:
        from securefed.dp.registry import make_dp_strategy

        clip = cfg.get("dp-clip-norm", "")
        if clip == "":
            raise ConfigurationError(f"dp = {kind!r} needs dp-clip-norm (the L2 bound C), got none")
        z = _none_if(cfg.get("dp-noise-multiplier", ""))
        eps = _none_if(cfg.get("dp-target-epsilon", ""))
        cpr = cfg.get("clients-per-round", 0) or None
        reproducible = bool(cfg.get("dp-reproducible-noise", False))
        if "dp-secure" in cfg and cfg["dp-secure"] != "":
            warnings.warn("run-config key dp-secure is deprecated: noise is secure by default; "
                          "set dp-reproducible-noise = true for reproducible (not private) noise",
                          DeprecationWarning, stacklevel=3)
            reproducible = reproducible or not bool(cfg["dp-secure"])
        extra: dict[str, Any] = {}
        tolerance = _none_if(cfg.get("dp-dropout-tolerance", ""))
        if tolerance is not None:
            if kind != "distributed":
                raise ConfigurationError(
                    f"dp-dropout-tolerance applies to dp = 'distributed' only, got dp = {kind!r} "
                    f"with dp-dropout-tolerance = {tolerance!r}")
            extra["dropout_tolerance"] = float(tolerance)
        return make_dp_strategy(
            kind, strategy, clip_norm=float(clip),
            noise_multiplier=None if z is None else float(z),
            target_epsilon=None if eps is None else float(eps),
            delta=float(cfg.get("dp-delta", 1e-5) or 1e-5),
            num_clients=int(cfg.get("num-clients", 3)), clients_per_round=cpr,
            rounds=int(cfg.get("num-rounds", 1)), reproducible_noise=reproducible, **extra)

    return wrap


DP_WRAPPERS = {name: _dp_wrapper(name) for name in DP_MODES}


def dp_mode(run_config: Mapping[str, Any]) -> str | None:
    """The DP mechanism a run config asks for (``dp = "central" | "local" |
    "distributed"``), or ``None``.

    The old spelling ``wrappers = "central-dp"`` / ``"local-dp"`` still works, with a
    :class:`DeprecationWarning`; asking for two different mechanisms is an error.
    """
    mode = str(run_config.get("dp", "") or "").strip().lower()
    if mode in ("", "none"):
        mode = ""
    elif mode not in DP_MODES:
        raise ConfigurationError(f"dp must be one of {['none', *DP_MODES]}, got {mode!r}")
    old = [w.strip() for w in str(run_config.get("wrappers", "")).split(",")
           if w.strip() in _OLD_WRAPPER_NAMES]
    for w in old:
        warnings.warn(f"wrappers = {w!r} is deprecated; use dp = {_OLD_WRAPPER_NAMES[w]!r}",
                      DeprecationWarning, stacklevel=3)
        if mode and mode != _OLD_WRAPPER_NAMES[w]:
            raise ConfigurationError(
                f"dp = {mode!r} and wrappers = {w!r} ask for two DP mechanisms; keep one")
        mode = _OLD_WRAPPER_NAMES[w]
    return mode or None


def build_strategy(run_config: Mapping[str, Any]) -> Strategy:
    """The strategy named by ``run_config["strategy"]``, with its hyper-parameters.

    ``batch-size = 0`` means full batch (``None``).  Wrappers listed in
    ``run_config["wrappers"]`` (comma separated, applied in order) are added around it, then
    the DP mechanism named by ``run_config["dp"]`` (:func:`dp_mode`).
    """
    name = str(run_config.get("strategy", "fedavg")).lower()
    factory = STRATEGIES.get(name)
    accepted = accepted_parameters(factory)
    if accepted is None:
        raise ConfigurationError(
            f"strategy {name!r} takes arbitrary keyword arguments, so its run-config keys "
            "cannot be told apart from the others; give it an explicit signature")
    kwargs: dict[str, Any] = {}
    for key, value in run_config.items():
        arg = key.replace("-", "_")
        if value == "":  # "" in the app's config: keep the strategy's own default
            continue
        if arg in accepted:
            kwargs[arg] = value
    if "batch_size" in kwargs and kwargs["batch_size"] in (0, None):
        kwargs["batch_size"] = None
    strategy = factory(**_strategy_values(kwargs))
    for wrapper in [w.strip() for w in str(run_config.get("wrappers", "")).split(",") if w.strip()]:
        if wrapper in _OLD_WRAPPER_NAMES:
            continue  # the old spelling of dp; read by dp_mode below
        if wrapper not in WRAPPERS:
            raise ConfigurationError(f"unknown strategy wrapper {wrapper!r}; valid: "
                                     f"{sorted(WRAPPERS)} (DP: the dp key)")
        strategy = WRAPPERS[wrapper](strategy, run_config)
    mode = dp_mode(run_config)
    if mode is not None:
        strategy = DP_WRAPPERS[mode](strategy, run_config)
    return strategy


def app_run_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run config a deployed run sees: the app's defaults with ``overrides`` applied.

    Tests and scripts build the simulation from this same mapping to compare like with like.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    from securefed.flower import APP_DIR

    with open(APP_DIR / "pyproject.toml", "rb") as fh:
        defaults = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise ConfigurationError(f"unknown run-config keys {unknown}; valid: {sorted(defaults)}")
    return {**defaults, **(overrides or {})}


def build_model(run_config: Mapping[str, Any]) -> ModelSpec:
    """The shared architecture: ``model`` (logreg|mlp), ``num-features``, ``hidden`` ("16,8")."""
    hidden_raw = str(run_config.get("hidden", "")).strip()
    try:
        hidden = tuple(int(h) for h in hidden_raw.split(",") if h.strip()) if hidden_raw else ()
    except ValueError as exc:
        raise ConfigurationError(f"hidden must be comma-separated integers, got {hidden_raw!r}") from exc
    return ModelSpec(str(run_config.get("model", "logreg")), n_features=int(run_config.get("num-features", 7)),
                     hidden=hidden)


@dataclass(frozen=True)
class DeploymentSettings:
    """The run-config values the ServerApp itself uses (typed, validated)."""

    num_rounds: int
    num_clients: int
    seed: int
    channel: str
    round_timeout: float
    straggler_timeout: float
    node_wait_timeout: float
    eval_data: str
    result_path: str
    secagg_threshold: int
    secagg_mode: str = "malicious"
    secagg_min_clients: int = 3
    secagg_roster: str = ""
    checkpoint_path: str = ""
    resume: bool = False
    rejoin_wait: float = 0.0

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> DeploymentSettings:
        def _int(key: str, default: int, minimum: int) -> int:
            value = run_config.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigurationError(f"{key} must be an integer >= {minimum}, got {value!r}")
            return value

        def _float(key: str, default: float) -> float:
            value = run_config.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(f"{key} must be a number > 0, got {value!r}")
            return float(value)

        result_path = str(run_config.get("result-path", ""))
        if result_path and not Path(result_path).is_absolute():
            raise ConfigurationError(
                f"result-path must be an absolute path (the ServerApp runs in its own folder), "
                f"got {result_path!r}")
        checkpoint_path = str(run_config.get("checkpoint-path", ""))
        if checkpoint_path and not Path(checkpoint_path).is_absolute():
            raise ConfigurationError(
                f"checkpoint-path must be an absolute path (the ServerApp runs in its own folder), "
                f"got {checkpoint_path!r}")
        resume = run_config.get("resume", False)
        if not isinstance(resume, bool):
            raise ConfigurationError(f"resume must be true or false, got {resume!r}")
        if resume and not checkpoint_path:
            raise ConfigurationError("resume = true needs a checkpoint-path to continue from")
        rejoin_wait = run_config.get("rejoin-wait", 0.0)
        if isinstance(rejoin_wait, bool) or not isinstance(rejoin_wait, (int, float)) or rejoin_wait < 0:
            raise ConfigurationError(f"rejoin-wait must be a number >= 0, got {rejoin_wait!r}")
        channel = str(run_config.get("channel", "secagg"))
        if channel not in ("plain", "secagg"):
            raise ConfigurationError(f"channel must be 'plain' or 'secagg', got {channel!r}")
        if dp_mode(run_config) == "distributed" and channel != "secagg":
            raise ConfigurationError(
                f"dp = 'distributed' adds each hospital's noise share inside secure aggregation; "
                f"expected channel = 'secagg', got channel = {channel!r}")
        return cls(
            num_rounds=_int("num-rounds", 3, 1),
            num_clients=_int("num-clients", 3, 1),
            seed=_int("seed", 0, 0),
            channel=channel,
            round_timeout=_float("round-timeout", 120.0),
            straggler_timeout=_float("straggler-timeout", 30.0),
            node_wait_timeout=_float("node-wait-timeout", 60.0),
            eval_data=str(run_config.get("eval-data", "pima-test")),
            result_path=result_path,
            secagg_threshold=_int("secagg-threshold", 0, 0),
            secagg_mode=_secagg_mode(run_config, channel),
            secagg_min_clients=_int("secagg-min-clients", 3, 1),
            secagg_roster=str(run_config.get("secagg-roster", "")),
            checkpoint_path=checkpoint_path,
            resume=resume,
            rejoin_wait=float(rejoin_wait),
        )


def _secagg_mode(run_config: Mapping[str, Any], channel: str) -> str:
    """``secagg-mode``: ``malicious`` (default; needs ``secagg-roster``) or
    ``honest-but-curious`` (named explicitly)."""
    mode = str(run_config.get("secagg-mode", "malicious"))
    if mode not in ("malicious", "honest-but-curious"):
        raise ConfigurationError(
            f"secagg-mode must be 'malicious' or 'honest-but-curious', got {mode!r}")
    if channel == "secagg" and mode == "malicious" and not str(run_config.get("secagg-roster", "")):
        raise ConfigurationError(
            "secagg-mode 'malicious' (the default) needs secagg-roster: the path of the roster "
            "written by 'securefed keys identity' (or name secagg-mode = 'honest-but-curious')")
    return mode


def client_generator(seed: int, client_id: int, num_clients: int) -> np.random.Generator:
    """Client ``client_id``'s generator at the start of a run (child ``2 + client_id``)."""
    return seed_streams(seed, num_clients).client_rng(client_id)


def generator_to_json(rng: np.random.Generator) -> str:
    """The full state of ``rng`` (its bit generator's state) as JSON, to resume it later."""
    return json.dumps(rng.bit_generator.state)


def generator_from_json(text: str) -> np.random.Generator:
    """Inverse of :func:`generator_to_json`."""
    state = json.loads(text)
    name = state.get("bit_generator")
    bitgen_cls = getattr(np.random, str(name), None)
    if bitgen_cls is None or not isinstance(bitgen_cls, type):
        raise ConfigurationError(f"unknown bit generator {name!r} in saved state")
    bitgen = bitgen_cls()
    bitgen.state = state
    return np.random.Generator(bitgen)
