"""The audit runner: every meaningful (algorithm, defense, fold) cell, results kept as they come.

Each finished cell is appended to ``cells.jsonl`` in the output directory as one JSON line
and flushed to disk, so an interrupted audit loses at most the cell in progress; running the
same audit again skips the cells already there.  ``manifest.json`` records the settings every
cell shares; an output directory that holds an audit with different settings (or unrelated
files) is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import securefed
from defenses import get_defense
from evaluation.algorithms import PersonalParamsRecorder, get_algorithm
from evaluation.config import AuditConfig
from evaluation.cv import Fold, held_out_by_hospital, stratified_hospital_folds
from evaluation.metrics import model_metrics, per_hospital_accuracy
from evaluation.privacy import AttackContext, get_audit_attack
from securefed.errors import ConfigurationError, PrivacyBudgetExceeded, SecurefedError
from securefed.federated import FederatedArrays, RunResult, evaluate
from securefed.models import ModelSpec, set_flat_params

__all__ = [
    "Cell",
    "ThreatCell",
    "AuditResults",
    "plan_threat_cells",
    "code_fingerprint",
    "plan_cells",
    "audit_dataset",
    "audit_hospitals",
    "run_audit",
    "load_results",
    "MANIFEST",
    "CELLS",
]

MANIFEST = "manifest.json"
CELLS = "cells.jsonl"
FORMAT = "securefed-audit/2"
#: Files and folders an audit writes; ``overwrite`` removes only these.
OWNED = (MANIFEST, CELLS, "report.html", "report.md", "summary.json", "summary.csv",
         "cells.csv", "figures")


#: Phases paid once per deployment, not per round (left out of ``time_per_round``).
ONE_OFF_PHASES = ("key_generation_and_transfer",)


@dataclass(frozen=True)
class Cell:
    """One unit of audit work: train ``algorithm`` under ``defense`` on fold ``fold``, then attack."""

    algorithm: str
    defense: str
    fold: int
    attacks: tuple[str, ...]
    cell_id: str

    @property
    def label(self) -> str:
        return f"{self.algorithm} / {self.defense} / fold {self.fold + 1}"


@dataclass(frozen=True)
class AuditResults:
    """The cells of one audit (as JSON-ready dicts, in plan order) and its configuration."""

    config: AuditConfig
    cells: tuple[dict[str, Any], ...]
    out_dir: Path
    resumed: int = 0
    elapsed: float = 0.0
    threat_cells: tuple[dict[str, Any], ...] = ()
    cpu_time: float = 0.0
    dp_audit_cells: tuple[dict[str, Any], ...] = ()


#: Modules that only present stored cells: editing them does not invalidate results.
_PRESENTATION = ("report.py", "figures.py", "claims.py", "summary.py", "render_check.py", "cli.py",
                 "verdicts.py")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the code that produces cells: every Python file of ``securefed``, ``attacks``,
    ``defenses`` and ``evaluation`` (the report's presentation modules left out), with the
    versions of numpy and torch.

    Stored cells are keyed by it as well as by the configuration, so after an upgrade (or any
    edit of the code that trains, attacks or scores) the audit runs the cells again instead of
    reusing results of other code.
    """
    import importlib

    h = hashlib.sha256()
    for pkg in ("securefed", "attacks", "defenses", "evaluation"):
        root = Path(importlib.import_module(pkg).__file__).parent
        for f in sorted(root.rglob("*.py")):
            if pkg == "evaluation" and f.name in _PRESENTATION:
                continue
            h.update(f"{pkg}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
    import torch

    h.update(f"numpy {np.__version__} torch {torch.__version__}".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ThreatCell:
    """One replicate of one threat scenario under one (algorithm, defense)."""

    threat: str
    algorithm: str
    defense: str
    replicate: int
    cell_id: str

    @property
    def label(self) -> str:
        return f"{self.threat} / {self.algorithm} / {self.defense} / seed {self.replicate + 1}"


def plan_threat_cells(config: AuditConfig) -> list[ThreatCell]:
    """Every (threat, algorithm, defense, replicate) cell, in a stable order."""
    from evaluation.threats import get_threat

    out: list[ThreatCell] = []
    for t in config.threats:
        scen = get_threat(t)
        raw = dict(config.threat_params.get(t, {}))
        params = scen.check_params(raw)
        for a in config.threat_algorithms:
            for d in scen.defenses_for(raw):
                dparams = scen.defense_settings(d, config.defense_params, raw)
                for r in range(config.replicates_for(t)):
                    spec = {"base": config.base_fingerprint(), "code": code_fingerprint(),
                            "threat": t, "params": params, "algorithm": a, "defense": d,
                            "defense_params": dparams, "replicate": r}
                    cid = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str)
                                         .encode()).hexdigest()[:16]
                    out.append(ThreatCell(t, a, d, r, cid))
    return out


def _cell_id(config: AuditConfig, algorithm: str, defense: str, fold: int,
             attacks: tuple[str, ...]) -> str:
    spec = {
        "base": config.base_fingerprint(), "code": code_fingerprint(),
        "algorithm": algorithm, "algorithm_params": dict(config.algorithm_params.get(algorithm, {})),
        "defense": defense, "defense_params": dict(config.defense_params.get(defense, {})),
        "attacks": {a: dict(config.attack_params.get(a, {})) for a in attacks},
        "fold": fold,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_cells(config: AuditConfig) -> list[Cell]:
    """Every meaningful cell, in a stable order (algorithm, defense, fold).

    A centralised algorithm runs only under the defense that selects its centralised
    variant; an attack runs only where it applies.
    """
    cells: list[Cell] = []
    model = ModelSpec(config.model, n_features=1, hidden=config.hidden)
    for a in config.algorithms:
        algo = get_algorithm(a)
        for d in config.defenses:
            defense = get_defense(d, **dict(config.defense_params.get(d, {})))
            if not algo.supports(defense, model) or config.excluded(a, d):
                continue
            attacks = tuple(k for k in config.attacks if get_audit_attack(k).applies(algo.kind, defense))
            for f in range(config.folds):
                fold_attacks = attacks if (config.attack_folds is None
                                           or f < config.attack_folds) else ()
                cells.append(Cell(a, d, f, fold_attacks, _cell_id(config, a, d, f, fold_attacks)))
    if not cells:
        raise ConfigurationError(
            f"no meaningful cell in algorithms {list(config.algorithms)} x defenses "
            f"{list(config.defenses)} for model {config.model!r}"
        )
    return cells


def audit_hospitals(config: AuditConfig) -> Any:
    """The audit's hospitals as a ``FederatedDataset``: those of the federation file
    ``config.data`` (:func:`securefed.data.load_federation`), or the bundled Pima split."""
    if config.data is not None:
        from securefed.data import load_federation

        return load_federation(config.data)
    from securefed.data import pima_hospitals

    return pima_hospitals(n_hospitals=config.n_hospitals,
                          heterogeneity=config.heterogeneity_setting(), seed=config.seed)


def audit_dataset(config: AuditConfig) -> FederatedArrays:
    """The audit's hospitals, harmonised and standardised, with the external test set: Pima.te
    for the bundled data, the union of the hospitals' test files for a federation file."""
    return audit_hospitals(config).prepare()


# ----------------------------------------------------------------------------- storage
def _read_cells(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``; a torn last line (interrupted write) is cut off."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    good_end = raw.rfind(b"\n") + 1
    if good_end < len(raw):
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    out = []
    for line in raw[:good_end].splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def _prepare_out_dir(out: Path, config: AuditConfig, *, overwrite: bool) -> None:
    manifest_path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"output path {str(out)!r} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
            except json.JSONDecodeError:
                manifest = {}
            same = (manifest.get("format") == FORMAT
                    and manifest.get("base_fingerprint") == config.base_fingerprint())
            if not same and not overwrite:
                old = manifest.get("config", {})
                new = config.to_dict()
                differ = sorted(k for k in new if k in old and old[k] != new[k]
                                and k not in ("profile", "algorithms", "defenses", "attacks",
                                              "algorithm_params", "defense_params",
                                              "attack_params", "target_fraction", "exclude",
                                              "attack_folds", "threats", "threat_algorithms",
                                              "replicates", "threat_params"))
                raise ConfigurationError(
                    f"{str(out)!r} holds the results of another audit (created "
                    f"{manifest.get('created', '?')}; settings that differ: "
                    f"{', '.join(differ) or 'format/version'}); choose another output "
                    "directory or pass --overwrite to replace them"
                )
            if not same and overwrite:
                _remove_owned(out)
        elif not overwrite:
            raise ConfigurationError(
                f"{str(out)!r} is not empty and holds no audit manifest; choose an empty or "
                "new output directory, or pass --overwrite to write into it anyway"
            )
        else:
            _remove_owned(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = {}
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
    manifest = {
        "format": FORMAT,
        "securefed_version": securefed.__version__,
        "base_fingerprint": config.base_fingerprint(),
        "code_fingerprint": code_fingerprint(),
        "created": previous.get("created", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
    }
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, manifest_path)


def _remove_owned(out: Path) -> None:
    for name in OWNED:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _append(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, default=_json_default, allow_nan=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


# ----------------------------------------------------------------------------- one cell
def _history(run: RunResult) -> dict[str, list[float]]:
    hist: dict[str, list[float]] = {
        "train_loss": [], "test_loss": [], "test_accuracy": [], "test_auc": [],
        "bytes_up": [], "bytes_down": [],
    }
    extra_keys = sorted({k for r in run.history for k in r.extra})
    for k in extra_keys:
        hist[k] = []
    for r in run.history:
        hist["train_loss"].append(r.train_loss)
        hist["test_loss"].append(r.test_loss)
        hist["test_accuracy"].append(r.test_accuracy)
        hist["test_auc"].append(r.test_auc)
        hist["bytes_up"].append(r.bytes_up)
        hist["bytes_down"].append(r.bytes_down)
        for k in extra_keys:
            hist[k].append(float(r.extra.get(k, float("nan"))))
    return hist


def _phase_times(run: RunResult) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in run.history:
        for k, v in r.times.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def run_cell(cell: Cell, config: AuditConfig, fold: Fold, *, model: ModelSpec) -> dict[str, Any]:
    """Train, evaluate and attack one cell; returns its JSON-ready record."""
    algo = get_algorithm(cell.algorithm)
    defense = get_defense(cell.defense, **dict(config.defense_params.get(cell.defense, {})))
    attacks = [get_audit_attack(a) for a in cell.attacks]
    seed = config.seed * 1000 + cell.fold
    record: dict[str, Any] = {
        "cell_id": cell.cell_id, "algorithm": cell.algorithm, "kind": algo.kind,
        "defense": cell.defense, "fold": cell.fold, "seed": seed, "error": None, "note": None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    t0, c0 = time.perf_counter(), time.process_time()
    # each hospital is evaluated, at home, on its own held-out patients of the fold
    view = held_out_by_hospital(fold)
    recorder: list[PersonalParamsRecorder] = []

    def wrap(strategy: Any) -> PersonalParamsRecorder:
        recorder.append(PersonalParamsRecorder(strategy, final_round=config.rounds - 1))
        return recorder[-1]

    def train(data: FederatedArrays, **kw: Any) -> RunResult:
        return algo.train(data, model=model, rounds=config.rounds, seed=seed, defense=defense,
                          hyper=config.hyper(),
                          params=dict(config.algorithm_params.get(cell.algorithm, {})), **kw)

    try:
        run = train(view, record_transcript=any(a.needs_transcript for a in attacks), wrap=wrap)
    except PrivacyBudgetExceeded as exc:
        if not isinstance(exc.partial, RunResult) or not exc.partial.history:
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["wall_time"] = time.perf_counter() - t0
            return record
        run = exc.partial
        record["note"] = f"stopped after {len(run.history)} rounds: {exc}"
    except SecurefedError as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["wall_time"] = time.perf_counter() - t0
        return record
    train_time = time.perf_counter() - t0
    data = fold.data
    if run.final_params.size:
        record["metrics"] = model_metrics(model, run.final_params, data.X_test, data.y_test)
        if fold.external is not None:
            record["external"] = model_metrics(model, run.final_params, *fold.external)
    else:  # no global model (local-only): the runner's own pooled figures, see its summary
        f = run.final
        record["metrics"] = {"loss": f.test_loss, "accuracy": f.test_accuracy,
                             "auc": f.test_auc, "f1": float("nan")}
    record.update(_hospital_records(algo.kind, run, fold, model,
                                    recorder[0].last if recorder else None, train))
    record["history"] = _history(run)
    record["times"] = _phase_times(run)
    record["train_time"] = train_time
    one_off = sum(record["times"].get(k, 0.0) for k in ONE_OFF_PHASES)
    record["time_per_round"] = (train_time - one_off) / max(1, len(run.history))
    record["bytes_up"] = int(sum(r.bytes_up for r in run.history))
    record["bytes_down"] = int(sum(r.bytes_down for r in run.history))
    record["rounds_run"] = len(run.history)
    eps = record["history"].get("epsilon")
    record["epsilon"] = eps[-1] if eps else None
    record["defense_info"] = defense.describe()
    record["settings"] = dict(run.settings)
    scores = []
    t1 = time.perf_counter()
    root = np.random.SeedSequence([config.seed, cell.fold, 7])
    for attack, seq in zip(attacks, root.spawn(len(attacks)), strict=True):
        ctx = AttackContext(run=run, fold=fold, defense=defense, model=model,
                            algorithm=cell.algorithm, rng=np.random.default_rng(seq),
                            params=dict(config.attack_params.get(attack.name, {})))
        try:
            scores.extend(s.to_dict() for s in attack.run(ctx))
        except SecurefedError as exc:  # the attack does not apply to this run: say why
            scores.append({"attack": attack.name, "skipped": f"{type(exc).__name__}: {exc}"})
    record["attack_time"] = time.perf_counter() - t1
    record["attacks"] = scores
    record["wall_time"] = time.perf_counter() - t0
    record["cpu_time"] = time.process_time() - c0
    return record


def _hospital_records(kind: str, run: RunResult, fold: Fold, model: ModelSpec,
                      personal: dict[int, np.ndarray | None] | None,
                      train: Callable[[FederatedArrays], RunResult]) -> dict[str, Any]:
    """Per-hospital accuracy of the model each hospital uses, on its own patients.

    ``per_hospital_accuracy``: on the hospital's held-out rows of the fold, as the run's
    last round measured it at the hospital (personalised model where the strategy keeps one;
    each hospital's own model for local-only training; the global model otherwise);
    ``per_hospital_model`` says which.  Where any hospital used a model other than the global
    one and a global model exists, ``global_per_hospital_accuracy`` is the global model on the
    same rows.  With a federation file whose hospitals hold test files, ``own_test_accuracy``
    (and ``global_own_test_accuracy``) do the same on each hospital's own test file, with the
    parameters each hospital used in the last round (``personal``, recorded as it evaluated);
    ``train`` reruns the cell's training on other data (local-only training, see below).
    """
    data = fold.data
    names = tuple(c.name for c in data.clients)
    per = run.final.per_hospital or {}
    label = "local" if kind == "local" else "personalised"
    out: dict[str, Any] = {}
    if per:
        out["per_hospital_accuracy"] = {h: float(per[h]["accuracy"]) for h in names if h in per}
        out["per_hospital_model"] = {h: label if per[h].get("personal") else "global"
                                     for h in names if h in per}
    else:  # a trainer that does not evaluate per hospital (encrypted-centralised)
        out["per_hospital_accuracy"] = per_hospital_accuracy(
            model, run.final_params, data.X_test, data.y_test, fold.test_hospital, names)
        out["per_hospital_model"] = {h: "global" for h in names}
    has_global = run.final_params.size > 0
    own_model = any(m != "global" for m in out["per_hospital_model"].values())
    if own_model and has_global:
        out["global_per_hospital_accuracy"] = per_hospital_accuracy(
            model, run.final_params, data.X_test, data.y_test, fold.test_hospital, names)
    own_tests = [c for c in data.clients if c.X_test is not None and c.y_test is not None
                 and len(c.y_test)]
    if not own_tests:
        return out
    net = model.build(seed=0)
    if kind == "local":
        # local-only training keeps no parameters in its result, and its models do not depend
        # on what it is evaluated on: the same run again, evaluated on the test files
        again = train(data)
        own_per = again.final.per_hospital or {}
        out["own_test_accuracy"] = {c.name: float(own_per[c.name]["accuracy"]) for c in own_tests}
        out["own_test_model"] = {c.name: "local" for c in own_tests}
        return out
    acc, which, glob = {}, {}, {}
    for c in own_tests:
        own = None if personal is None else personal.get(c.client_id)
        if has_global:
            set_flat_params(net, run.final_params)
            glob[c.name] = float(evaluate(net, c.X_test, c.y_test)[1])
        if own is None:
            acc[c.name], which[c.name] = glob[c.name], "global"
        else:
            set_flat_params(net, own)
            acc[c.name], which[c.name] = float(evaluate(net, c.X_test, c.y_test)[1]), label
    out["own_test_accuracy"] = acc
    out["own_test_model"] = which
    if any(m != "global" for m in which.values()) and glob:
        out["global_own_test_accuracy"] = glob
    return out


def run_threat_cell(cell: ThreatCell, config: AuditConfig, data: FederatedArrays, *,
                    schema: Any = None, cache: dict[Any, Any] | None = None) -> dict[str, Any]:
    """Run one replicate of a threat scenario; returns its JSON-ready record."""
    from evaluation.threats import ThreatContext, get_threat

    scen = get_threat(cell.threat)
    raw = dict(config.threat_params.get(cell.threat, {}))
    ctx = ThreatContext(
        data=data, public_X=data.X_test, public_y=data.y_test, schema=schema,
        algorithm=cell.algorithm, defense=cell.defense,
        defense_params=scen.defense_settings(cell.defense, config.defense_params, raw),
        replicate=cell.replicate, seed=config.seed, params=scen.check_params(raw),
        cache=cache if cache is not None else {})
    record: dict[str, Any] = {
        "kind": "threat", "cell_id": cell.cell_id, "threat": cell.threat,
        "algorithm": cell.algorithm, "defense": cell.defense, "replicate": cell.replicate,
        "defense_params": dict(ctx.defense_params), "error": None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        out = scen.run(ctx)
    except SecurefedError as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    else:
        record.update({"metric": out.metric, "value": out.value, "baseline": out.baseline,
                       "gain": out.gain, "details": dict(out.details), "accuracy": out.accuracy,
                       "epsilon": out.epsilon})
    record["wall_time"] = time.perf_counter() - t0
    record["cpu_time"] = time.process_time() - c0
    return record


def _warm_up(data: FederatedArrays, model: ModelSpec) -> None:
    """One untimed round, so the first cell's times do not include torch's lazy start-up."""
    from securefed.federated import FedAvg, run_federated

    run_federated(data, strategy=FedAvg(), model=model, rounds=1, seed=0, record_transcript=False)
    model_metrics(model, np.zeros(model.num_params()), data.X_test, data.y_test)


# ----------------------------------------------------------------------------- the audit
def run_audit(
    config: AuditConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_cell: Callable[[Any, dict[str, Any]], None] | None = None,
    threads: int | None = 1,
    workers: int | None = None,
) -> AuditResults:
    """Run (or resume) every cell of ``config``, appending each result to ``out_dir``.

    Returns all of this audit's cells, those found from an earlier run included.
    ``threads`` caps torch's intra-op threads while the audit runs (restored afterwards):
    the audit's models are tiny, and on a shared machine extra threads only contend (one
    thread measured about 10x faster than two on a loaded 2-core machine).  ``workers``
    runs independent cells in that many processes (default: ``min(2, CPUs)``; 1 runs them in
    this process); each finished cell is appended as it arrives, so resuming works the same.
    The results do not depend on it: every cell draws its randomness from its own seeds.
    """
    import torch

    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not (isinstance(workers, int) and workers >= 1):
        raise ConfigurationError(f"workers must be an integer >= 1, got {workers!r}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_audit(config, out_dir, overwrite=overwrite, progress=progress, on_cell=on_cell,
                          workers=workers, threads=threads)
    finally:
        torch.set_num_threads(previous_threads)


_PROCESS_CACHE: dict[str, Any] = {}


def _folds_for(config: AuditConfig) -> tuple[list[Fold], ModelSpec]:
    key = "folds:" + config.base_fingerprint()
    if key not in _PROCESS_CACHE:
        data = audit_dataset(config)
        folds = stratified_hospital_folds(data, n_folds=config.folds, seed=config.seed)
        model = ModelSpec(config.model, n_features=data.num_features, hidden=config.hidden)
        _warm_up(folds[0].data, model)
        _PROCESS_CACHE[key] = (folds, model)
    return _PROCESS_CACHE[key]


def _threat_data(config: AuditConfig) -> tuple[FederatedArrays, Any]:
    key = "threat-data:" + config.base_fingerprint()
    if key not in _PROCESS_CACHE:
        ds = audit_hospitals(config)
        _PROCESS_CACHE[key] = (ds.prepare(), getattr(ds, "schema", None))
    return _PROCESS_CACHE[key]


def _do_task(config: AuditConfig, task: tuple[str, Any], threads: int | None = 1
             ) -> list[tuple[Any, dict[str, Any]]]:
    """One unit of work: a utility cell, or threat cells that share one trained model."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    kind, payload = task
    if kind == "cell":
        folds, model = _folds_for(config)
        return [(payload, run_cell(payload, config, folds[payload.fold], model=model))]
    if kind == "dp-audit":
        from evaluation.dp_audit import run_dp_audit_cell

        folds, _ = _folds_for(config)
        return [(payload, run_dp_audit_cell(payload, config,
                                            num_clients=len(folds[0].data.clients)))]
    data, schema = _threat_data(config)
    cache: dict[Any, Any] = {}
    return [(c, run_threat_cell(c, config, data, schema=schema, cache=cache)) for c in payload]


def plan_dp_audits(config: AuditConfig, cells: list[Cell] | None = None) -> list[Any]:
    """The DP audit cells (:mod:`evaluation.dp_audit`) of ``config``'s DP defenses."""
    from evaluation.dp_audit import plan_dp_audit_cells

    cells = plan_cells(config) if cells is None else cells
    return plan_dp_audit_cells(config, code=code_fingerprint(),
                               utility_defenses={c.defense for c in cells})


def _tasks(todo: list[Cell], ttodo: list[ThreatCell], dtodo: list[Any] | None = None
           ) -> list[tuple[str, Any]]:
    """Utility cells one by one; threat cells grouped by the trained model they share, the
    most expensive groups first (so that two workers finish together)."""
    from evaluation.threats import get_threat

    groups: dict[Any, list[ThreatCell]] = {}
    for c in ttodo:
        shared = get_threat(c.threat).shared_run
        key = (shared, c.algorithm, c.defense, c.replicate) if shared else (c.cell_id,)
        groups.setdefault(key, []).append(c)
    threat_tasks = [("threats", g) for g in groups.values()]
    return [*threat_tasks, *(("dp-audit", c) for c in dtodo or ()), *(("cell", c) for c in todo)]


def _run_audit(
    config: AuditConfig,
    out_dir: str | Path,
    *,
    overwrite: bool,
    progress: bool,
    on_cell: Callable[[Any, dict[str, Any]], None] | None,
    workers: int = 1,
    threads: int | None = 1,
) -> AuditResults:
    started, cpu0 = time.perf_counter(), time.process_time()
    out = Path(out_dir)
    cells = plan_cells(config)
    tcells = plan_threat_cells(config)
    dcells = plan_dp_audits(config, cells)
    if config.data is not None:
        audit_hospitals(config)  # every file read and checked before anything is written
    _prepare_out_dir(out, config, overwrite=overwrite)
    store = out / CELLS
    done = {r["cell_id"]: r for r in _read_cells(store)}
    todo = [c for c in cells if c.cell_id not in done]
    ttodo = [c for c in tcells if c.cell_id not in done]
    dtodo = [c for c in dcells if c.cell_id not in done]
    total = len(cells) + len(tcells) + len(dcells)
    resumed = total - len(todo) - len(ttodo) - len(dtodo)
    tasks = _tasks(todo, ttodo, dtodo)
    if tasks:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=resumed, desc="audit", unit="cell")
        worker_cpu: list[float] = []

        def finished(results: list[tuple[Any, dict[str, Any]]]) -> None:
            for cell, record in results:
                if workers > 1:
                    worker_cpu.append(float(record.get("cpu_time") or 0.0))
                _append(store, record)
                done[cell.cell_id] = record
                if on_cell is not None:
                    on_cell(cell, record)
                if bar is not None:
                    bar.set_postfix_str(cell.label)
                    bar.update(1)

        try:
            if workers <= 1 or len(tasks) == 1:
                for task in tasks:
                    finished(_do_task(config, task, threads))
            else:
                import concurrent.futures as cf
                import multiprocessing as mp

                with cf.ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(mp)) as pool:
                    futures = [pool.submit(_do_task, config, t, threads) for t in tasks]
                    try:
                        for fut in cf.as_completed(futures):
                            finished(fut.result())
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
        finally:
            if bar is not None:
                bar.close()
    else:
        worker_cpu = []
    ordered = tuple(done[c.cell_id] for c in cells)
    threats = tuple(done[c.cell_id] for c in tcells)
    dp_audits = tuple(done[c.cell_id] for c in dcells)
    # this process, plus what the cells measured in the workers (their start-up is not counted)
    return AuditResults(config=config, cells=ordered, out_dir=out, resumed=resumed,
                        elapsed=time.perf_counter() - started, threat_cells=threats,
                        cpu_time=time.process_time() - cpu0 + sum(worker_cpu),
                        dp_audit_cells=dp_audits)


def _mp_context(mp: Any) -> Any:
    """Workers forked from a clean server process that imported the audit once ("forkserver"),
    so that each worker does not pay the imports again; "spawn" where it is not available.
    Never plain "fork": the parent may already run torch's thread pool."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["evaluation.runner", "evaluation.threats"])
        return ctx
    return mp.get_context("spawn")


def load_results(out_dir: str | Path, *, config: AuditConfig | None = None) -> AuditResults:
    """The cells stored in ``out_dir`` for ``config`` (default: the manifest's last config)."""
    from evaluation.config import from_mapping

    out = Path(out_dir)
    manifest_path = out / MANIFEST
    if not manifest_path.exists():
        raise ConfigurationError(f"{str(out)!r} holds no audit (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    if config is None:
        config = from_mapping(manifest["config"], source=str(manifest_path))
    cells = plan_cells(config)
    stored = {r["cell_id"]: r for r in _read_cells(out / CELLS)}
    return AuditResults(config=config, cells=tuple(stored[c.cell_id] for c in cells
                                                   if c.cell_id in stored), out_dir=out,
                        threat_cells=tuple(stored[c.cell_id] for c in plan_threat_cells(config)
                                           if c.cell_id in stored),
                        dp_audit_cells=tuple(stored[c.cell_id] for c in plan_dp_audits(config, cells)
                                             if c.cell_id in stored))
