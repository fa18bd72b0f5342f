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

__all__ = ["AuditSummary", "summarize", "cell_frame", "rounds_to_target", "REFERENCE"]

#: The algorithm every other is compared with (the seed's baseline).
REFERENCE = "fedavg"

#: Utility and cost columns summarised for every (algorithm, defense) group.
METRICS = (
    "accuracy", "auc", "f1", "loss",
    "external_accuracy", "external_auc", "external_f1",
    "bytes_up", "bytes_down", "bytes_total", "train_time", "time_per_round", "attack_time",
    "rounds_to_target", "bytes_to_target", "epsilon", "delta",
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
        for h, a in (c.get("per_hospital_accuracy") or {}).items():
            row[f"hospital.{h}"] = _num(a)
        for h, a in (c.get("own_test_accuracy") or {}).items():
            row[f"own.{h}"] = _num(a)
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


def summarize(cells: Sequence[dict[str, Any]], *, target_fraction: float = 0.95) -> AuditSummary:
    """Mean ± std over folds per (algorithm, defense), and comparisons with FedAvg."""
    failed = [c for c in cells if c.get("error")]
    frame0 = cell_frame(cells)
    target, source = _target(frame0, target_fraction)
    frame = cell_frame(cells, target)
    groups: list[dict[str, Any]] = []
    attack_cols = sorted(c for c in frame.columns if c.startswith("attack."))
    extra_cols = sorted(c for c in frame.columns if c.startswith(("time.", "hospital.", "own.",
                                                                  "detail.")))
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
                for metric in ("accuracy", "auc", "f1"):
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
