"""The verdict matrix: for every (threat, defense, algorithm), does the attack beat its
baseline, and what does the defense cost?

Each threat cell is one replicate (seed) of a scenario: a fresh draw of the targets (the
clinic's patients, the member half of the pool, the imprint direction, the hospitals of
the peer scenario) and fresh training randomness.  Over the replicates of a combination:

* ``attack`` and ``baseline``: mean scores; ``gain_raw``: mean of the per-replicate gains;
* ``ci_low``, ``ci_high``: the two-sided 95% Student-t interval of the mean gain over the
  replicates (``n - 1`` degrees of freedom);
* ``leaks``: **true when the interval's lower end is above 0**, i.e. the attack beat its
  no-observation baseline at the 2.5% one-sided level;
* ``inconclusive``: not ``leaks``, but the mean gain exceeds 0.02: the attack may leak and
  the seeds run cannot tell; the report marks it instead of calling it safe;
* ``gain``: the mean gain floored at 0 (``floored`` says when the raw mean was below 0:
  an attack that does worse than its baseline learned nothing, and a negative number would
  read as protection the defense does not give).  The interval is of the raw mean.
* ``accuracy``: the held-out accuracy of the algorithm under the defense in the audit's
  utility cells (cross-validated), where the audit trained that pair; otherwise the
  accuracy of the scenario's own model (``accuracy_source`` says which); with the cost
  columns (bytes per run, training seconds, epsilon) beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from evaluation.summary import AuditSummary

__all__ = ["threat_verdicts", "VERDICT_RULE"]

#: a mean gain above this whose interval still reaches 0 is flagged as inconclusive
INCONCLUSIVE = 0.02

VERDICT_RULE = ("leaks = the lower end of the 95% Student-t interval of the mean gain over the "
                "replicates is above 0; gain is the mean floored at 0; a row that does not leak "
                f"but whose mean gain exceeds {INCONCLUSIVE} is marked inconclusive (more seeds "
                "would decide it)")


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else float("nan")


def _ci(gains: np.ndarray) -> tuple[float, float]:
    n = len(gains)
    if n < 2:
        return float("nan"), float("nan")
    m = float(gains.mean())
    se = float(gains.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        return m, m
    h = float(stats.t.ppf(0.975, n - 1)) * se
    return m - h, m + h


def threat_verdicts(threat_cells: Sequence[dict[str, Any]],
                    summary: AuditSummary | None = None) -> list[dict[str, Any]]:
    """One verdict row per (threat, defense, algorithm), in the order the cells ran."""
    order: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    failed: dict[tuple[str, str, str], list[str]] = {}
    for c in threat_cells:
        key = (c["threat"], c["defense"], c["algorithm"])
        if c.get("error"):
            failed.setdefault(key, []).append(c["error"])
            order.setdefault(key, [])
            continue
        order.setdefault(key, []).append(c)
    rows = []
    for (threat, defense, algorithm), cells in order.items():
        if not cells:
            rows.append({"threat": threat, "defense": defense, "algorithm": algorithm,
                         "metric": None, "attack": float("nan"), "baseline": float("nan"),
                         "gain": float("nan"), "gain_raw": float("nan"), "ci_low": float("nan"),
                         "ci_high": float("nan"), "leaks": False, "replicates": 0,
                         "accuracy": float("nan"), "accuracy_source": None,
                         "errors": failed.get((threat, defense, algorithm), [])})
            continue
        gains = np.array([_num(c["value"]) - _num(c["baseline"]) for c in cells])
        lo, hi = _ci(gains)
        raw = float(gains.mean())
        row: dict[str, Any] = {
            "threat": threat, "defense": defense, "algorithm": algorithm,
            "metric": cells[0]["metric"],
            "attack": float(np.mean([_num(c["value"]) for c in cells])),
            "baseline": float(np.mean([_num(c["baseline"]) for c in cells])),
            "gain": max(raw, 0.0), "gain_raw": raw, "floored": raw < 0,
            "ci_low": lo, "ci_high": hi,
            "leaks": bool(not math.isnan(lo) and lo > 0),
            "inconclusive": bool(not (not math.isnan(lo) and lo > 0) and raw > INCONCLUSIVE),
            "replicates": len(cells),
            "per_replicate_gain": gains.tolist(),
        }
        eps = [_num(c.get("epsilon")) for c in cells]
        row["epsilon"] = float(np.nanmax(eps)) if any(not math.isnan(e) for e in eps) else None
        row.update(_cost(summary, algorithm, defense, cells))
        row.update(_extras(threat, cells))
        if failed.get((threat, defense, algorithm)):
            row["errors"] = failed[(threat, defense, algorithm)]
        rows.append(row)
    return rows


def _cost(summary: AuditSummary | None, algorithm: str, defense: str,
          cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    g = summary.group(algorithm, defense) if summary is not None else None
    if g is not None:
        return {"accuracy": g["accuracy"]["mean"], "accuracy_source": "utility cells (cross-validated)",
                "bytes_per_run": g["bytes_total"]["mean"], "train_time": g["train_time"]["mean"]}
    acc = [_num(c.get("accuracy")) for c in cells]
    ok = [a for a in acc if not math.isnan(a)]
    return {"accuracy": float(np.mean(ok)) if ok else float("nan"),
            "accuracy_source": "the scenario's own model" if ok else None,
            "bytes_per_run": float("nan"), "train_time": float("nan")}


def _extras(threat: str, cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Scenario-specific columns: low-FPR rates and DP bounds, the peer's series."""
    out: dict[str, Any] = {}
    d0 = cells[0].get("details") or {}
    if threat == "outsider-membership":
        scores = np.concatenate([np.asarray(c["details"]["scores"], float) for c in cells])
        member = np.concatenate([np.asarray(c["details"]["is_member"], bool) for c in cells])
        from evaluation.scoring import tpr_at_fpr

        n_non = int((~member).sum())
        out.update({
            # pooled over replicates: LiRA scores are log-likelihood ratios, comparable
            "tpr_at_0.1%_fpr": tpr_at_fpr(scores, member, 0.001),
            "tpr_at_1%_fpr": tpr_at_fpr(scores, member, 0.01),
            "members": int(member.sum()), "non_members": n_non,
            "fpr_resolution": 1.0 / max(n_non, 1),
            "saturated_fraction": float(np.mean([c["details"]["saturated_fraction"] for c in cells])),
            "advantage": float(np.mean([c["details"]["advantage"] for c in cells])),
        })
    for k in ("dp_advantage_bound", "dp_advantage_bound_hospital", "noise_multiplier",
              "epsilon_label", "record_epsilon", "record_epsilon_label"):
        if k in d0:
            out[k] = d0[k]
    if threat == "curious-peer":
        series: dict[str, list[dict[str, float]]] = {}
        for c in cells:
            for k, v in (c["details"].get("series") or {}).items():
                series.setdefault(k, []).append(v)
        out["series"] = {}
        for k, vs in sorted(series.items(), key=lambda kv: int(kv[0])):
            g = np.asarray([float(v["gain"]) for v in vs])
            lo, hi = _ci(g)
            out["series"][k] = {
                "cosine": float(np.mean([v["value"] for v in vs])),
                "relative_error": float(np.mean([v["relative_error"] for v in vs])),
                "gain": max(float(g.mean()), 0.0), "ci_low": lo, "ci_high": hi,
                "leaks": bool(not math.isnan(lo) and lo > 0), "replicates": len(vs)}
        out["participants"] = d0.get("participants")
    if threat == "curious-server":
        out["clinic_patients"] = d0.get("clinic_patients")
        out["fell_back"] = int(sum(bool(c["details"].get("fell_back")) for c in cells))
    if threat == "malicious-server":
        out["bins"] = d0.get("bins")
        out["patients"] = d0.get("patients")
    if threat == "outsider-attribute":
        out["feature"] = d0.get("feature")
    return out
