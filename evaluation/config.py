"""Audit configuration: built-in profiles and TOML files, validated at the edge.

A configuration file is a flat TOML table whose keys are the fields of
:class:`AuditConfig`, plus three optional sub-tables of per-name parameters::

    algorithms = ["centralized", "fedavg", "fedprox"]
    defenses = ["none"]
    folds = 10
    rounds = 30

    [algorithm_params.fedprox]
    proximal_mu = 0.01

An unknown key is rejected with its name (a typo must not silently fall back to a
default), and unknown algorithm, defense or attack names list the valid ones.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defenses import defense_names, get_defense
from evaluation.algorithms import HyperParams, algorithm_names, get_algorithm
from evaluation.privacy import get_audit_attack
from securefed.errors import ConfigurationError
from securefed.models import ModelSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["AuditConfig", "PROFILES", "profile", "load_config"]


@dataclass(frozen=True)
class AuditConfig:
    """Everything that defines an audit.  Stored unchanged in the results' manifest."""

    profile: str = "custom"
    algorithms: tuple[str, ...] = ("centralized", "fedavg", "fedprox")
    defenses: tuple[str, ...] = ("none",)
    attacks: tuple[str, ...] = ()
    threats: tuple[str, ...] = ()
    threat_algorithms: tuple[str, ...] = ("fedavg",)
    replicates: int | None = None
    folds: int = 10
    rounds: int = 30
    seed: int = 0
    data: str | None = None
    n_hospitals: int = 3
    heterogeneity: str | Mapping[str, Any] = "default"
    model: str = "logreg"
    hidden: tuple[int, ...] = ()
    learning_rate: float = 0.1
    local_epochs: int = 1
    batch_size: int | str | None = 16
    clients_per_round: int | None = None
    dropout_rate: float = 0.0
    target_fraction: float = 0.95
    exclude: tuple[str, ...] = ()
    attack_folds: int | None = None
    dp_audit_canaries: int = 1000
    algorithm_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    defense_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    attack_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    threat_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size == "full":  # TOML has no null: "full" means full-batch training
            object.__setattr__(self, "batch_size", None)
        for name in ("algorithms", "defenses", "attacks", "hidden", "exclude", "threats",
                     "threat_algorithms"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ConfigurationError(f"{name} must be a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not self.algorithms:
            raise ConfigurationError("algorithms must name at least one algorithm, got []")
        if not self.defenses:
            raise ConfigurationError("defenses must name at least one defense, got []")
        for a in self.algorithms:
            get_algorithm(a)
        for d in self.defenses:
            get_defense(d, **dict(self.defense_params.get(d, {})))
        for k in self.attacks:
            get_audit_attack(k)
        from evaluation.threats import get_threat

        for t in self.threats:
            scen = get_threat(t)
            params = dict(self.threat_params.get(t, {}))
            scen.check_params(params)
            for d in scen.defenses_for(params):
                get_defense(d, **scen.defense_settings(d, self.defense_params, params))
            reps = params.get("replicates", self.replicates)
            if reps is not None and not (isinstance(reps, int) and reps >= 2):
                raise ConfigurationError(
                    f"replicates of threat {t!r} must be an integer >= 2 (a confidence interval "
                    f"needs two), got {reps!r}")
        for a in self.threat_algorithms:
            if get_algorithm(a).kind != "federated":
                raise ConfigurationError(
                    f"threat_algorithms must be federated algorithms, got {a!r} "
                    f"({get_algorithm(a).kind})")
        if self.threats and not self.threat_algorithms:
            raise ConfigurationError("threat_algorithms must name at least one algorithm, got []")
        for pattern in self.exclude:
            if not isinstance(pattern, str) or pattern.count("/") != 1:
                raise ConfigurationError(
                    f"exclude entries must look like 'ALGORITHM/DEFENSE' (wildcards allowed), "
                    f"got {pattern!r}"
                )
        for table, valid in (("algorithm_params", self.algorithms),
                             ("defense_params", tuple(self.defenses) + self._threat_defenses()),
                             ("attack_params", self.attacks), ("threat_params", self.threats)):
            for key in getattr(self, table):
                if key not in valid:
                    raise ConfigurationError(
                        f"{table} has an entry for {key!r}, which is not in this audit's list {list(valid)}"
                    )
        for name, low in (("folds", 2), ("rounds", 1), ("n_hospitals", 2), ("local_epochs", 1)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= low):
                raise ConfigurationError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.attack_folds is not None and not (
                isinstance(self.attack_folds, int) and 1 <= self.attack_folds):
            raise ConfigurationError(
                f"attack_folds must be None or an integer >= 1, got {self.attack_folds!r}"
            )
        if not (isinstance(self.dp_audit_canaries, int) and not isinstance(self.dp_audit_canaries, bool)
                and (self.dp_audit_canaries == 0 or self.dp_audit_canaries >= 10)):
            raise ConfigurationError(
                "dp_audit_canaries must be 0 (no DP audit) or an integer >= 10, got "
                f"{self.dp_audit_canaries!r}")
        if not 0 < self.target_fraction <= 1:
            raise ConfigurationError(f"target_fraction must be in (0, 1], got {self.target_fraction!r}")
        self.heterogeneity_setting()
        if self.data is not None:
            if not isinstance(self.data, str) or not self.data.lower().endswith(".toml"):
                raise ConfigurationError(
                    f"data must be the path of a federation file (FEDERATION.toml), got {self.data!r}")
            if not Path(self.data).is_file():
                raise ConfigurationError(f"federation file {self.data!r} does not exist")
            if self.n_hospitals != 3 or self.heterogeneity != "default":
                raise ConfigurationError(
                    "n_hospitals and heterogeneity shape the bundled Pima split; with data = "
                    f"{self.data!r} the hospitals are those of the federation file (got "
                    f"n_hospitals={self.n_hospitals!r}, heterogeneity={self.heterogeneity!r})")
        ModelSpec(self.model, n_features=1, hidden=self.hidden)
        hyper = HyperParams(**self.hyper_kwargs())
        for a in self.algorithms:
            get_algorithm(a).validate(dict(self.algorithm_params.get(a, {})), hyper)

    # ------------------------------------------------------------------ derived values
    def _threat_defenses(self) -> tuple[str, ...]:
        from evaluation.threats import get_threat

        out: list[str] = []
        for t in self.threats:
            out.extend(get_threat(t).defenses_for(dict(self.threat_params.get(t, {}))))
        return tuple(dict.fromkeys(out))

    def replicates_for(self, threat: str) -> int:
        """Replicates (seeds) of ``threat``: its own setting, else the audit's, else the
        scenario's default."""
        from evaluation.threats import get_threat

        own = dict(self.threat_params.get(threat, {})).get("replicates")
        if own is not None:
            return int(own)
        if self.replicates is not None:
            return int(self.replicates)
        return int(get_threat(threat).replicates)

    def hyper_kwargs(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "local_epochs": self.local_epochs,
                "batch_size": self.batch_size, "clients_per_round": self.clients_per_round,
                "dropout_rate": self.dropout_rate}

    def heterogeneity_setting(self) -> Any:
        """The :class:`securefed.data.Heterogeneity` this audit's ``heterogeneity`` names.

        ``"default"`` and ``"none"`` are the data module's presets; a table gives the knobs
        (``quantity_skew``, ``covariate_shift``, ``label_convention``, ``format_shift``, ...).
        """
        from securefed.data import Heterogeneity

        h = self.heterogeneity
        if h == "default":
            return Heterogeneity.default()
        if h == "none":
            return Heterogeneity.none()
        if isinstance(h, Mapping):
            try:
                return Heterogeneity(**dict(h))
            except TypeError as exc:
                raise ConfigurationError(f"heterogeneity: {exc}") from exc
        raise ConfigurationError(
            f"heterogeneity must be 'default', 'none' or a table of knobs, got {h!r}"
        )

    def excluded(self, algorithm: str, defense: str) -> bool:
        """True when ``algorithm/defense`` matches an ``exclude`` pattern (``*`` wildcards)."""
        from fnmatch import fnmatchcase

        return any(fnmatchcase(f"{algorithm}/{defense}", p) for p in self.exclude)

    def hyper(self) -> HyperParams:
        return HyperParams(**self.hyper_kwargs())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("algorithms", "defenses", "attacks", "hidden", "exclude", "threats",
                  "threat_algorithms"):
            d[k] = list(d[k])
        for k in ("algorithm_params", "defense_params", "attack_params", "threat_params"):
            d[k] = {n: dict(v) for n, v in d[k].items()}
        if isinstance(d["heterogeneity"], Mapping):
            d["heterogeneity"] = dict(d["heterogeneity"])
        return d

    def base_fingerprint(self) -> str:
        """Hash of the settings every cell shares (data, folds, rounds, model, training).

        Two audits with the same base fingerprint can share an output directory: cells of
        one are valid cells of the other.  The matrix (which algorithms, defenses and attacks)
        is not part of it, so an audit can be extended in place.
        """
        d = self.to_dict()
        for k in ("profile", "algorithms", "defenses", "attacks", "algorithm_params",
                  "defense_params", "attack_params", "target_fraction", "exclude",
                  "attack_folds", "threats", "threat_algorithms", "replicates", "threat_params"):
            d.pop(k)
        if d.get("data") is not None:
            # the data's content, not where it lies: moving the folder changes nothing, and
            # editing a CSV makes it another audit
            d["data"] = _data_fingerprint(str(Path(d["data"]).resolve()))
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _data_fingerprint(path: str) -> dict[str, str]:
    """SHA-256 of a federation file, its schema and every CSV it names (read once per process)."""
    from securefed.data import FederationFile

    return FederationFile.from_toml(path).fingerprint()


_FIELDS = {f.name for f in dataclasses.fields(AuditConfig)}


def profile(name: str) -> AuditConfig:
    """A built-in profile: ``"quick"`` (about 30 s, for tests) or ``"default"`` (<= 3 min).

    Both run every registered threat scenario (the verdict matrix the report leads with)
    and every registered algorithm and defense for utility and cost, with budget choices
    stated in the report's configuration: the defenses' utility runs use FedMedHeter (a
    defense's cost hardly depends on the local objective; the secure channels reproduce the
    plain model up to rounding), FedAvg keeps central DP for the "same privacy strength"
    comparison and, in the default profile, the defenses of the threat scenarios (so that
    their verdicts carry an accuracy and a cost), FedProx runs without defenses, and encrypted-centralised training runs 5
    epochs, since each costs about a second of homomorphic arithmetic.  The quick profile
    uses 3 folds of 8 rounds, runs the defenses with FedMedHeter only, leaves CKKS and
    encrypted-centralised training out, and runs the threats with FedAvg on 2 replicates
    (the curious peer, which costs little, on 6; LiRA with 8 shadow models); the default one uses 5 folds of 20 rounds
    and runs the threats with FedAvg and FedMedHeter on each scenario's own number of
    replicates.  The per-cell attacks of earlier versions (``attacks``) are not in the
    profiles: the threat scenarios replace them.  An algorithm is in a profile's utility runs
    only if its ``profiles`` name it: the personalisation baselines (``ditto``,
    ``local-only``) are in the default profile, without defenses (like FedProx), and not in
    the quick one (its time budget).
    """
    from evaluation.threats import threat_names

    if name not in PROFILES:
        raise ConfigurationError(f"unknown profile {name!r}; valid: {list(PROFILES)}")
    algos = tuple(a for a in algorithm_names() if name in get_algorithm(a).profiles)
    defs = defense_names()
    threats = threat_names()
    exclude = tuple(f"{a}/{d}" for a in ("fedprox", "ditto") if a in algos
                    for d in defs if d != "none")
    if name == "quick":
        defended = "fedmedheter" if "fedmedheter" in algos else "fedavg"
        quick_exclude = tuple(f"{a}/{d}" for a in algos for d in defs
                              if (d != "none" and a != defended) or d == "ckks")
        return AuditConfig(profile="quick", algorithms=algos, defenses=defs, threats=threats,
                           threat_algorithms=("fedavg",), replicates=2,
                           threat_params={k: v for k, v in {
                               "curious-peer": {"replicates": 6},
                               "outsider-membership": {"shadows": 8},
                           }.items() if k in threats},
                           folds=3, rounds=8, exclude=quick_exclude, dp_audit_canaries=0,
                           )
    if name == "default":
        if "fedmedheter" in algos:  # FedAvg keeps the DP-only comparison and the threats'
            # defenses, so that every verdict row has its accuracy and cost
            keep = ("none", "dp-central", "secagg", "dp-local", "secagg+dp")
            exclude += tuple(f"fedavg/{d}" for d in defs if d not in keep)
        threat_algos = tuple(a for a in ("fedavg", "fedmedheter") if a in algos)
        return AuditConfig(profile="default", algorithms=algos, defenses=defs, threats=threats,
                           threat_algorithms=threat_algos, folds=5, rounds=20, exclude=exclude,
                           algorithm_params=_enc_params(algos, epochs=5))
    raise ConfigurationError(f"unknown profile {name!r}; valid: {list(PROFILES)}")


def _enc_params(algorithms: tuple[str, ...], *, epochs: int) -> dict[str, dict[str, Any]]:
    return {"encrypted-centralized": {"epochs": epochs}} if "encrypted-centralized" in algorithms else {}


PROFILES = ("quick", "default")


def from_mapping(raw: Mapping[str, Any], *, source: str = "configuration") -> AuditConfig:
    """Build a config from a mapping, rejecting unknown keys by name."""
    unknown = [k for k in raw if k not in _FIELDS]
    if unknown:
        raise ConfigurationError(
            f"{source}: unknown key {unknown[0]!r}; valid keys: {sorted(_FIELDS)}"
        )
    for table in ("algorithm_params", "defense_params", "attack_params", "threat_params"):
        value = raw.get(table, {})
        if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
            raise ConfigurationError(
                f"{source}: {table} must be a table of tables ([{table}.NAME]), got {value!r}"
            )
    kwargs = dict(raw)
    kwargs.setdefault("profile", "custom")
    try:
        return AuditConfig(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the key check above
        raise ConfigurationError(f"{source}: {exc}") from exc


def load_config(path: str | Path) -> AuditConfig:
    """Read a TOML configuration file (see the module docstring for its keys)."""
    path = Path(path)
    if path.suffix.lower() not in (".toml",):
        raise ConfigurationError(f"configuration file must be .toml, got {path.name!r}")
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"configuration file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc
    return from_mapping(raw, source=str(path))
