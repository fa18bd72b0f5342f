"""The audit runner: every meaningful (algorithm, defense, fold) cell, results kept as they come.

Each finished cell is appended to ``cells.jsonl`` in the output directory as one JSON line
and flushed to disk, so an interrupted audit loses at most the cell in progress; running the
same audit again skips the cells already there.  ``manifest.json`` records the settings every
cell shares; an output directory that holds an audit with different settings (or unrelated
files) is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import securefed
from defenses import get_defense
from evaluation.algorithms import get_algorithm
from evaluation.config import AuditConfig
from evaluation.cv import Fold, stratified_hospital_folds
from evaluation.metrics import model_metrics, per_hospital_accuracy
from evaluation.privacy import AttackContext, get_audit_attack
from securefed.errors import ConfigurationError, PrivacyBudgetExceeded, SecurefedError
from securefed.federated import FederatedArrays, RunResult
from securefed.models import ModelSpec

__all__ = [
    "Cell",
    "AuditResults",
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
FORMAT = "securefed-audit/1"
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


def _cell_id(config: AuditConfig, algorithm: str, defense: str, fold: int,
             attacks: tuple[str, ...]) -> str:
    spec = {
        "base": config.base_fingerprint(),
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
    """The bundled Pima hospitals (a ``FederatedDataset`` with per-hospital notes)."""
    from securefed.data import pima_hospitals

    return pima_hospitals(n_hospitals=config.n_hospitals,
                          heterogeneity=config.heterogeneity_setting(), seed=config.seed)


def audit_dataset(config: AuditConfig) -> FederatedArrays:
    """The audit's hospitals, harmonised and standardised, with Pima.te as external test set."""
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
                                              "attack_folds"))
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
    t0 = time.perf_counter()
    try:
        run = algo.train(
            fold.data, model=model, rounds=config.rounds, seed=seed, defense=defense,
            hyper=config.hyper(), params=dict(config.algorithm_params.get(cell.algorithm, {})),
            record_transcript=any(a.needs_transcript for a in attacks),
        )
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
    record["metrics"] = model_metrics(model, run.final_params, data.X_test, data.y_test)
    record["per_hospital_accuracy"] = per_hospital_accuracy(
        model, run.final_params, data.X_test, data.y_test, fold.test_hospital,
        tuple(c.name for c in data.clients),
    )
    if fold.external is not None:
        record["external"] = model_metrics(model, run.final_params, *fold.external)
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
    on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
    threads: int | None = 1,
) -> AuditResults:
    """Run (or resume) every cell of ``config``, appending each result to ``out_dir``.

    Returns all of this audit's cells, those found from an earlier run included.
    ``threads`` caps torch's intra-op threads while the audit runs (restored afterwards):
    the audit's models are tiny, and on a shared machine extra threads only contend (one
    thread measured about 10x faster than two on a loaded 2-core machine).
    """
    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_audit(config, out_dir, overwrite=overwrite, progress=progress, on_cell=on_cell)
    finally:
        torch.set_num_threads(previous_threads)


def _run_audit(
    config: AuditConfig,
    out_dir: str | Path,
    *,
    overwrite: bool,
    progress: bool,
    on_cell: Callable[[Cell, dict[str, Any]], None] | None,
) -> AuditResults:
    started = time.perf_counter()
    out = Path(out_dir)
    cells = plan_cells(config)
    _prepare_out_dir(out, config, overwrite=overwrite)
    store = out / CELLS
    done = {r["cell_id"]: r for r in _read_cells(store)}
    todo = [c for c in cells if c.cell_id not in done]
    resumed = len(cells) - len(todo)
    if todo:
        data = audit_dataset(config)
        folds = stratified_hospital_folds(data, n_folds=config.folds, seed=config.seed)
        model = ModelSpec(config.model, n_features=data.num_features, hidden=config.hidden)
        _warm_up(folds[0].data, model)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cells), initial=resumed, desc="audit", unit="cell")
        try:
            for cell in todo:
                if bar is not None:
                    bar.set_postfix_str(cell.label)
                record = run_cell(cell, config, folds[cell.fold], model=model)
                _append(store, record)
                done[cell.cell_id] = record
                if on_cell is not None:
                    on_cell(cell, record)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    ordered = tuple(done[c.cell_id] for c in cells)
    return AuditResults(config=config, cells=ordered, out_dir=out, resumed=resumed,
                        elapsed=time.perf_counter() - started)


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
                                                   if c.cell_id in stored), out_dir=out)


def iter_metric(cells: Iterable[dict[str, Any]], key: str) -> list[float]:
    """One metric of each cell, e.g. ``"metrics.accuracy"`` (NaN where missing)."""
    out = []
    for c in cells:
        v: Any = c
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        out.append(float(v) if isinstance(v, (int, float)) else float("nan"))
    return out
