"""From cell records to tables: mean ± std over folds of every metric, comparisons, targets.

Everything the report, the figures and the claims table show is computed here from the
stored cells, so a report can be rebuilt from ``cells.jsonl`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evaluation.cv import mean_std
from evaluation.stats import Comparison, compare

__all__ = ["AuditSummary", "summarize", "cell_frame", "rounds_to_target", "REFERENCE",
           "HOSPITAL_FAMILIES", "MODEL_NAMES", "hospital_block"]

#: The algorithm every other is compared with (the seed's baseline).
REFERENCE = "fedavg"

#: Utility and cost columns summarised for every (algorithm, defense) group.
METRICS = (
    "accuracy", "auc", "f1", "loss",
    "external_accuracy", "external_auc", "external_f1",
    "bytes_up", "bytes_down", "bytes_total", "train_time", "time_per_round", "attack_time",
    "rounds_to_target", "bytes_to_target", "epsilon", "delta",
    "hospital_mean", "global_hospital_mean", "own_mean", "global_own_mean",
)

#: Per-hospital column families: (prefix of the cell frame's columns, the record's key).
#: ``hospital.``: the model each hospital uses (personalised where the algorithm keeps one)
#: on its held-out rows of the fold; ``global_hospital.``: the global model on the same rows
#: (only where the first is not the global model); ``own.``/``global_own.``: the same on each
#: hospital's own test file (federation files with test CSVs).
HOSPITAL_FAMILIES = (
    ("hospital", "per_hospital_accuracy"),
    ("global_hospital", "global_per_hospital_accuracy"),
    ("own", "own_test_accuracy"),
    ("global_own", "global_own_test_accuracy"),
)


def rounds_to_target(accuracy: Sequence[float], target: float) -> float:
    """First round (1-based) whose test accuracy reaches ``target``; NaN if never.

    >>> rounds_to_target([0.5, 0.7, 0.8], 0.7)
    2.0
    """
    for i, a in enumerate(accuracy):
        if a >= target:
            return float(i + 1)
    return float("nan")


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None else float("nan")


def cell_frame(cells: Sequence[dict[str, Any]], target: float | None = None) -> pd.DataFrame:
    """One row per successful cell with its flat metrics (attack metrics as extra columns)."""
    rows = []
    for c in cells:
        if c.get("error"):
            continue
        m, ext = c.get("metrics", {}), c.get("external", {}) or {}
        hist = c.get("history", {})
        row: dict[str, Any] = {
            "algorithm": c["algorithm"], "defense": c["defense"], "fold": c["fold"],
            "kind": c.get("kind"),
            "accuracy": _num(m.get("accuracy")), "auc": _num(m.get("auc")),
            "f1": _num(m.get("f1")), "loss": _num(m.get("loss")),
            "external_accuracy": _num(ext.get("accuracy")), "external_auc": _num(ext.get("auc")),
            "external_f1": _num(ext.get("f1")),
            "bytes_up": _num(c.get("bytes_up")), "bytes_down": _num(c.get("bytes_down")),
            "train_time": _num(c.get("train_time")), "attack_time": _num(c.get("attack_time")),
            "time_per_round": _num(c.get("time_per_round")),
            "epsilon": _num(c.get("epsilon")),
            "delta": _num(((c.get("defense_info") or {}).get("params") or {}).get("delta")),
        }
        row["bytes_total"] = row["bytes_up"] + row["bytes_down"]
        for phase, t in (c.get("times") or {}).items():
            row[f"time.{phase}"] = _num(t)
        for prefix, key in HOSPITAL_FAMILIES:
            values = {h: _num(a) for h, a in (c.get(key) or {}).items()}
            for h, a in values.items():
                row[f"{prefix}.{h}"] = a
            if values:  # each hospital counts once, whatever its size
                row[f"{prefix}_mean"] = float(np.mean(list(values.values())))
        row["hospital_model"] = _model_label(c.get("per_hospital_model") or {})
        row["own_model"] = _model_label(c.get("own_test_model") or {})
        if target is not None and hist.get("test_accuracy"):
            r = rounds_to_target(hist["test_accuracy"], target)
            row["rounds_to_target"] = r
            if not math.isnan(r):
                per_round = np.add(hist["bytes_up"], hist["bytes_down"])
                row["bytes_to_target"] = float(np.sum(per_round[: int(r)]))
            else:
                row["bytes_to_target"] = float("nan")
        for s in c.get("attacks", []):
            if "skipped" in s or "error" in s:
                continue
            key = f"attack.{s['attack']}.{s['party']}.{s['metric']}"
            row[key] = _num(s.get("value"))
            row[key + ".baseline"] = _num(s.get("baseline"))
            row[key + ".gain"] = _num(s.get("gain"))
            for dk, dv in (s.get("details") or {}).items():
                if isinstance(dv, (int, float)) and not isinstance(dv, bool):
                    row[f"detail.{s['attack']}.{s['party']}.{dk}"] = float(dv)
        rows.append(row)
    return pd.DataFrame(rows)


def _model_label(which: dict[str, str]) -> str | None:
    """``"personalised"``, ``"local"`` or ``"global"`` when every hospital used that kind of
    model; ``"mixed"`` otherwise; ``None`` without per-hospital figures."""
    kinds = set(which.values())
    if not kinds:
        return None
    return kinds.pop() if len(kinds) == 1 else "mixed"


#: How the report names the model behind a group's per-hospital figures.
MODEL_NAMES = {"personalised": "each hospital's personalised model",
               "local": "each hospital's own model (trained alone)",
               "global": "the global model", "mixed": "personalised at some hospitals only"}


def hospital_block(g: dict[str, Any], prefix: str, model: str | None) -> dict[str, Any] | None:
    """One family of a group's per-hospital figures: the model behind them, the mean over
    hospitals (mean ± std over folds of the per-fold mean), the worst hospital (the one
    with the lowest accuracy over the folds) and every hospital's mean ± std over folds."""
    hosp = {k.split(".", 1)[1]: v for k, v in g.items()
            if k.startswith(prefix + ".") and not math.isnan(v["mean"])}
    if not hosp:
        return None
    worst = min(hosp, key=lambda h: (np.nan_to_num(hosp[h]["mean"], nan=np.inf), h))
    return {"model": model, "mean": g.get(f"{prefix}_mean"),
            "worst": {"hospital": worst, **hosp[worst]}, "accuracy": hosp}


@dataclass(frozen=True)
class AuditSummary:
    """Tables derived from an audit's cells."""

    frame: pd.DataFrame
    groups: list[dict[str, Any]]
    comparisons: list[Comparison]
    target_accuracy: float | None
    target_source: str
    failed: list[dict[str, Any]]
    attack_columns: list[str] = field(default_factory=list)
    skipped_attacks: list[dict[str, Any]] = field(default_factory=list)

    def group(self, algorithm: str, defense: str) -> dict[str, Any] | None:
        for g in self.groups:
            if g["algorithm"] == algorithm and g["defense"] == defense:
                return g
        return None

    def mean(self, algorithm: str, defense: str, metric: str) -> float:
        g = self.group(algorithm, defense)
        if g is None or metric not in g:
            return float("nan")
        return float(g[metric]["mean"])


def _target(frame: pd.DataFrame, fraction: float) -> tuple[float | None, str]:
    if frame.empty:
        return None, "no successful cell"
    cen = frame[(frame.algorithm == "centralized") & (frame.defense == "none")]
    if not cen.empty:
        return fraction * float(cen.accuracy.mean()), (
            f"{fraction:.0%} of the centralised model's mean accuracy")
    best = frame.groupby(["algorithm", "defense"]).accuracy.mean().max()
    return fraction * float(best), f"{fraction:.0%} of the best mean accuracy in the audit"


def _common(sub: pd.DataFrame, col: str) -> str | None:
    if col not in sub:
        return None
    return _model_label({str(i): v for i, v in enumerate(sub[col]) if isinstance(v, str)})


def summarize(cells: Sequence[dict[str, Any]], *, target_fraction: float = 0.95) -> AuditSummary:
    """Mean ± std over folds per (algorithm, defense), and comparisons with FedAvg."""
    failed = [c for c in cells if c.get("error")]
    frame0 = cell_frame(cells)
    target, source = _target(frame0, target_fraction)
    frame = cell_frame(cells, target)
    groups: list[dict[str, Any]] = []
    attack_cols = sorted(c for c in frame.columns if c.startswith("attack."))
    extra_cols = sorted(c for c in frame.columns if c.startswith(
        ("time.", "detail.", *(f"{p}." for p, _ in HOSPITAL_FAMILIES))))
    if not frame.empty:
        order = list(dict.fromkeys(zip(frame.algorithm, frame.defense, strict=True)))
        for algo, dfn in order:
            sub = frame[(frame.algorithm == algo) & (frame.defense == dfn)]
            g: dict[str, Any] = {"algorithm": algo, "defense": dfn, "n": int(len(sub)),
                                 "kind": sub.kind.iloc[0]}
            for col in (*METRICS, *extra_cols, *attack_cols):
                if col in sub:
                    m, s = mean_std(sub[col].to_numpy(np.float64))
                    g[col] = {"mean": m, "std": s}
            if "rounds_to_target" in sub:
                g["reached_target"] = int(sub.rounds_to_target.notna().sum())
            models = {"hospital": _common(sub, "hospital_model"), "own": _common(sub, "own_model")}
            per = {}
            for prefix, _ in HOSPITAL_FAMILIES:
                model = "global" if prefix.startswith("global_") else models[prefix.split("_")[-1]]
                block = hospital_block(g, prefix, model)
                if block is not None:
                    per[{"hospital": "held_out_folds", "global_hospital": "held_out_folds_global",
                         "own": "own_test", "global_own": "own_test_global"}[prefix]] = block
            g["per_hospital"] = per
            groups.append(g)
    comparisons: list[Comparison] = []
    if not frame.empty:
        for dfn in dict.fromkeys(frame.defense):
            ref = frame[(frame.algorithm == REFERENCE) & (frame.defense == dfn)]
            if len(ref) < 2:
                continue
            for algo in dict.fromkeys(frame.algorithm):
                if algo == REFERENCE:
                    continue
                other = frame[(frame.algorithm == algo) & (frame.defense == dfn)]
                if len(other) < 2:
                    continue
                for metric in ("accuracy", "auc", "f1", "hospital_mean"):
                    if metric not in other or (other[metric].notna().sum() < 2
                                               or ref[metric].notna().sum() < 2):
                        continue
                    comparisons.append(compare(
                        dict(zip(other.fold, other[metric], strict=True)),
                        dict(zip(ref.fold, ref[metric], strict=True)),
                        metric=metric, names=(f"{algo}/{dfn}", f"{REFERENCE}/{dfn}"),
                    ))
    skipped: dict[tuple[str, str, str, str], int] = {}
    for c in cells:
        for s in c.get("attacks", []):
            if "skipped" in s:
                key = (c["algorithm"], c["defense"], s["attack"], s["skipped"])
                skipped[key] = skipped.get(key, 0) + 1
    skipped_rows = [{"algorithm": a, "defense": d, "attack": k, "reason": r, "cells": n}
                    for (a, d, k, r), n in skipped.items()]
    return AuditSummary(frame=frame, groups=groups, comparisons=comparisons,
                        target_accuracy=target, target_source=source, failed=failed,
                        attack_columns=attack_cols, skipped_attacks=skipped_rows)
