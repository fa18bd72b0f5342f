"""The audit report: one self-contained HTML page, plus Markdown, JSON and CSV.

The HTML embeds its figures (PNG as base64), so the single file can be mailed to a privacy
officer.  The Markdown links the figure files; the JSON holds every number of the report;
the CSVs hold the per-group summary and the per-cell rows.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import securefed
from defenses import get_defense
from evaluation.algorithms import get_algorithm
from evaluation.claims import ClaimResult, evaluate_claims
from evaluation.dp_audit import dp_audit_rows
from evaluation.figures import FigureFile, make_figures, verdict_heatmap
from evaluation.privacy import get_audit_attack
from evaluation.runner import AuditResults, audit_hospitals
from evaluation.summary import MODEL_NAMES, REFERENCE, AuditSummary, summarize
from evaluation.threats import get_threat
from evaluation.verdicts import VERDICT_RULE, threat_verdicts

__all__ = ["ReportFiles", "write_report", "summary_rows", "per_hospital_rows"]


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    json: Path
    csv: Path
    cells_csv: Path
    figures: tuple[FigureFile, ...]
    summary: AuditSummary
    claims: tuple[ClaimResult, ...]
    threats: tuple[dict[str, Any], ...] = ()


# ------------------------------------------------------------------------------ helpers
def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _ms(g: dict[str, Any], key: str, digits: int = 3) -> str:
    if key not in g or math.isnan(g[key]["mean"]):
        return "n/a"
    return f"{g[key]['mean']:.{digits}f} ± {g[key]['std']:.{digits}f}"


def _bytes(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(x) < 1024 or unit == "GiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} GiB"  # pragma: no cover


def epsilon_text(epsilon: float | None, delta: float | None = None, *,
                 label: str | None = None) -> str:
    """How the report writes a DP epsilon: the one place to change it (every table, finding
    and the verdict matrix call this).  ``label`` is the DP mechanism's own description of
    the guarantee (``securefed.dp``'s ``EpsilonStatement.label()``: unit, neighbouring
    relation, accountant, rounds), shown when known.  ``None`` / NaN: no DP."""
    if epsilon is None or (isinstance(epsilon, float) and math.isnan(epsilon)):
        return "-"
    if label:
        return label
    text = f"{epsilon:.2f}"
    if delta is not None and not (isinstance(delta, float) and math.isnan(delta)):
        text += f" (delta {delta:g})"
    return text


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


Table = tuple[list[str], list[list[str]]]


def summary_rows(summary: AuditSummary) -> Table:
    """The headline table (also printed by the CLI)."""
    head = ["algorithm", "defense", "folds", "accuracy", "AUC", "F1", "bytes/run",
            "train s", "epsilon", "per-hospital mean (model)", "worst hospital"]
    rows = []
    for g in summary.groups:
        eps = g.get("epsilon", {"mean": float("nan")})["mean"]
        block = (g.get("per_hospital") or {}).get("held_out_folds")
        rows.append([g["algorithm"], g["defense"], str(g["n"]), _ms(g, "accuracy"),
                     _ms(g, "auc"), _ms(g, "f1"), _bytes(g["bytes_total"]["mean"]),
                     _f(g["train_time"]["mean"], 2), epsilon_text(eps),
                     "n/a" if block is None else f"{_ms(g, 'hospital_mean')} ({block['model']})",
                     "n/a" if block is None else
                     f"{block['worst']['hospital']} {_f(block['worst']['mean'])}"])
    return head, rows


def _utility_table(summary: AuditSummary) -> Table:
    """Pooled metrics: the global model (where the algorithm has one) on every held-out
    patient of the fold, and on the external test set; per-hospital means beside them."""
    head = ["algorithm", "defense", "accuracy", "AUC", "F1", "log loss", "external accuracy",
            "external AUC", "per-hospital mean (model each hospital uses)", "worst hospital"]
    rows = []
    for g in summary.groups:
        block = (g.get("per_hospital") or {}).get("held_out_folds")
        worst = "n/a" if block is None else (
            f"{block['worst']['hospital']} {_f(block['worst']['mean'])}")
        model = "" if block is None else f" ({block['model']})"
        rows.append([g["algorithm"], g["defense"], _ms(g, "accuracy"), _ms(g, "auc"),
                     _ms(g, "f1"), _ms(g, "loss"), _ms(g, "external_accuracy"),
                     _ms(g, "external_auc"), _ms(g, "hospital_mean") + model, worst])
    return head, rows


#: The per-hospital families as the report names them.
_FAMILIES = (("held_out_folds", "held-out folds"), ("held_out_folds_global", "held-out folds"),
             ("own_test", "own test file"), ("own_test_global", "own test file"))


def per_hospital_rows(summary: AuditSummary) -> list[dict[str, Any]]:
    """One row per (algorithm, defense, patients, model): each hospital's accuracy on its own
    patients (mean ± std over folds), the mean over hospitals and the worst hospital.

    A personalised algorithm (FedMedHeter, Ditto) has a row for each hospital's personalised
    model and one for its global model on the same patients; ``summary.json`` carries these
    rows under ``per_hospital``."""
    out = []
    for g in summary.groups:
        for key, patients in _FAMILIES:
            block = (g.get("per_hospital") or {}).get(key)
            if block is None:
                continue
            out.append({"algorithm": g["algorithm"], "defense": g["defense"],
                        "patients": patients, "model": block["model"],
                        "model_description": MODEL_NAMES.get(block["model"], block["model"]),
                        "mean": block["mean"], "worst": block["worst"],
                        "accuracy": block["accuracy"]})
    return out


def _per_hospital_table(summary: AuditSummary) -> Table:
    rows = per_hospital_rows(summary)
    hosp = list(dict.fromkeys(h for r in rows for h in r["accuracy"]))
    head = ["algorithm", "defense", "patients", "model each hospital uses",
            "mean over hospitals", "worst hospital", *hosp]
    out = []
    for r in rows:
        acc = r["accuracy"]
        out.append([r["algorithm"], r["defense"], r["patients"], r["model_description"],
                    _ms({"m": r["mean"]}, "m") if r["mean"] else "n/a",
                    f"{r['worst']['hospital']} {_f(r['worst']['mean'])}",
                    *[_ms({"m": acc[h]}, "m") if h in acc else "-" for h in hosp]])
    return head, out


def _cost_table(summary: AuditSummary) -> Table:
    head = ["algorithm", "defense", "bytes up", "bytes down", "train time (s)",
            "rounds to target", "reached", "bytes to target", "epsilon"]
    rows = []
    for g in summary.groups:
        rows.append([
            g["algorithm"], g["defense"], _bytes(g["bytes_up"]["mean"]),
            _bytes(g["bytes_down"]["mean"]), _ms(g, "train_time", 3),
            _ms(g, "rounds_to_target", 1), f"{g.get('reached_target', 0)}/{g['n']}",
            _bytes(g.get("bytes_to_target", {"mean": float("nan")})["mean"]),
            epsilon_text(g.get("epsilon", {"mean": float("nan")})["mean"]),
        ])
    return head, rows


#: Metric names as the significance table writes them.
_METRIC_NAMES = {"hospital_mean": "per-hospital mean accuracy (model each hospital uses)"}


def _stats_table(summary: AuditSummary) -> Table:
    head = ["comparison", "metric", "difference", "95% CI (independent)", "Student p",
            "Welch p", "paired p", "95% CI (paired)", "Wilcoxon p", "Cohen's d"]
    rows = []
    for c in summary.comparisons:
        rows.append([f"{c.a} vs {c.b}", _METRIC_NAMES.get(c.metric, c.metric), f"{c.diff:+.3f}",
                     f"[{c.student_ci[0]:+.3f}, {c.student_ci[1]:+.3f}]", _p(c.student_p),
                     _p(c.welch_p), _p(c.paired_p),
                     f"[{c.paired_ci[0]:+.3f}, {c.paired_ci[1]:+.3f}]", _p(c.wilcoxon_p),
                     _f(c.cohens_d, 2)])
    return head, rows


def _privacy_table(summary: AuditSummary) -> Table:
    head = ["algorithm", "defense", "attack", "attacker", "metric", "attack", "baseline", "gain",
            "details (means)"]
    rows = []
    cols = [c for c in summary.attack_columns if not c.endswith((".baseline", ".gain"))]
    for g in summary.groups:
        for col in cols:
            if col not in g or math.isnan(g[col]["mean"]):
                continue
            _, attack, party, metric = col.split(".", 3)
            prefix = f"detail.{attack}.{party}."
            details = ", ".join(f"{k[len(prefix):]} {_f(v['mean'])}" for k, v in sorted(g.items())
                                if k.startswith(prefix) and isinstance(v, dict)
                                and not math.isnan(v["mean"]))
            rows.append([g["algorithm"], g["defense"], attack, party, metric, _ms(g, col),
                         _ms(g, col + ".baseline"), _ms(g, col + ".gain"), details or "-"])
    return head, rows


def _dp_audit_table(rows: list[dict[str, Any]]) -> Table:
    head = ["defense", "mechanism", "clip norm", "noise multiplier", "rounds",
            "accountant's epsilon (upper bound)", "measured lower bound", "guesses (correct)",
            "consistent"]
    out = []
    for r in rows:
        if r.get("error"):
            out.append([r["defense"], r["mechanism"], "-", "-", "-", f"failed: {r['error']}",
                        "-", "-", "-"])
            continue
        out.append([r["defense"], r["mechanism"], _f(r["clip_norm"]), _f(r["noise_multiplier"], 2),
                    str(r["rounds"]), r["upper_label"],
                    f"{_f(r['epsilon_lower'], 2)} ({r['confidence']:.0%} confidence, "
                    f"{r['canaries']} canary hospitals)",
                    f"{r['guesses']} ({r['correct']})",
                    "yes" if r["consistent"] else "NO: the lower bound exceeds the claim"])
    return head, out


DP_AUDIT_TEXT = (
    "For each DP defense of the utility runs, one training run with canary hospitals (Steinke, "
    "Nasr and Jagielski 2023, one-run auditing) with the defense's own mechanism, clip norm, "
    "noise multiplier, delta and rounds. The lower bound is what that run proves about epsilon "
    "at the stated confidence; the accountant's epsilon is the upper bound the defense claims, "
    "with its unit, neighbouring relation and accountant. A lower bound above the upper bound "
    "would prove the implementation leaks more than it claims; one below it is consistent with "
    "the claim but does not show it is tight (one run of m canaries proves at most about log m). "
    "The canaries' updates are isolated from the hospitals' (the auditor's best case); who must "
    "be trusted for the upper bound is in 'Defenses and threat models'.")


def _gain_ci(r: dict[str, Any]) -> str:
    if r.get("metric") is None:
        return "failed"
    return f"{r['gain']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" + (
        " (raw mean below 0)" if r.get("floored") else "")


def _verdict_notes(r: dict[str, Any]) -> str:
    parts = []
    if "tpr_at_0.1%_fpr" in r:
        parts.append(f"TPR {r['tpr_at_0.1%_fpr']:.3f} at 0.1% FPR, {r['tpr_at_1%_fpr']:.3f} at 1% "
                     f"FPR ({r['members']} members, {r['non_members']} non-members pooled; "
                     f"smallest FPR step {r['fpr_resolution']:.4f})")
    if "dp_advantage_bound" in r:
        if r.get("record_epsilon_label"):
            parts.append(f"per patient: {r['record_epsilon_label']}")
        parts.append(f"DP bound on advantage {r['dp_advantage_bound']:.3f} (a patient in or out "
                     f"of a hospital; {r['dp_advantage_bound_hospital']:.3f} for a whole "
                     f"hospital), noise multiplier {r['noise_multiplier']:.2f}")
    if "advantage" in r:
        parts.append(f"measured advantage {r['advantage']:.3f}")
    if r.get("clinic_patients"):
        parts.append(f"clinic of {r['clinic_patients']}")
    if r.get("fell_back"):
        parts.append(f"fell back to the prior in {r['fell_back']} of {r['replicates']}")
    if r.get("bins"):
        parts.append(f"{r['bins']} imprint bins, {r['patients']} patients")
    if r.get("participants"):
        parts.append(f"{r['participants']} participants")
    if r.get("feature"):
        parts.append(f"attribute {r['feature']}")
    if r.get("errors"):
        parts.append(f"{len(r['errors'])} failed: {r['errors'][0]}")
    return "; ".join(parts) or "-"


def _verdict_table(rows: list[dict[str, Any]]) -> Table:
    head = ["threat", "defense", "algorithm", "leaks", "metric", "attack", "baseline",
            "gain [95% CI]", "seeds", "accuracy", "bytes/run", "train s", "epsilon", "notes"]
    out = []
    for r in rows:
        out.append([r["threat"], r["defense"], r["algorithm"],
                    "LEAKS" if r["leaks"] else ("inconclusive" if r.get("inconclusive") else "no"),
                    str(r.get("metric")), _f(r["attack"]),
                    _f(r["baseline"]), _gain_ci(r), str(r["replicates"]), _f(r["accuracy"]),
                    _bytes(r.get("bytes_per_run", float("nan"))), _f(r.get("train_time"), 2),
                    epsilon_text(r.get("epsilon"), label=r.get("epsilon_label")),
                    _verdict_notes(r)])
    return head, out


def _scenario_table(config: Any) -> Table:
    head = ["threat", "adversary", "observes", "knows", "setting (and its recipe)", "metric",
            "defenses", "seeds"]
    rows = []
    for t in config.threats:
        sc = get_threat(t)
        params = sc.check_params(dict(config.threat_params.get(t, {})))
        recipe = ", ".join(f"{k}={v}" for k, v in params.items())
        rows.append([t, sc.adversary, sc.observes, sc.knows, f"{sc.setting} ({recipe})", sc.metric,
                     ", ".join(sc.defenses_for(dict(config.threat_params.get(t, {})))),
                     str(config.replicates_for(t))])
    return head, rows


def _peer_series_table(rows: list[dict[str, Any]]) -> Table:
    head = ["algorithm", "defense", "participants", "cosine with the target's update",
            "relative error", "gain over the own-update guess [95% CI]", "leaks", "seeds"]
    out = []
    for r in rows:
        for k, v in (r.get("series") or {}).items():
            out.append([r["algorithm"], r["defense"], k, f"{v['cosine']:.3f}",
                        f"{v['relative_error']:.3g}",
                        f"{v['gain']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]",
                        "LEAKS" if v["leaks"] else "no", str(v["replicates"])])
    return head, out


def _claims_table(claims: list[ClaimResult]) -> Table:
    head = ["seed §", "claim", "measured here", "verdict", "how measured"]
    return head, [[c.section, c.claim, c.measured, c.verdict, c.method] for c in claims]


def _setup(results: AuditResults) -> dict[str, Any]:
    cfg = results.config
    ds = audit_hospitals(cfg)
    data = ds.prepare()
    hospitals = []
    for c, h in zip(data.clients, ds.hospitals, strict=True):
        notes = dict(getattr(h, "notes", {}) or {})
        fmt = getattr(h, "export_format", None)
        hospitals.append({
            "name": c.name, "patients": c.num_examples, "positive_rate": float(np.mean(c.y)),
            "export_format": getattr(fmt, "name", "agreed"),
            "population": str(notes.get("tilt", "none")),
            "label_rule": str(notes.get("label_rule", "reference")),
            "labels_changed": int(notes.get("labels_changed", 0)),
        })
    het = ds.heterogeneity.describe() if getattr(ds, "heterogeneity", None) is not None else "none"
    defenses = {d: get_defense(d, **dict(cfg.defense_params.get(d, {}))).describe()
                for d in cfg.defenses}
    attacks = {a: {"summary": get_audit_attack(a).summary, "threat_model": get_audit_attack(a).threat_model}
               for a in cfg.attacks}
    algorithms = {a: {"kind": get_algorithm(a).kind, "summary": get_algorithm(a).summary,
                      "params": {**get_algorithm(a).default_params,
                                 **dict(cfg.algorithm_params.get(a, {}))}}
                  for a in cfg.algorithms}
    return {
        "data": {
            "source": (f"federation file {cfg.data} (data set {getattr(ds, 'name', '') or 'unnamed'}; "
                       "external test set: the union of the hospitals' test files)"
                       if cfg.data is not None else
                       "Pima Indian diabetes records (bundled; Pima.tr split into hospitals, "
                       "Pima.te as an external test set)"),
            "description": data.description,
            "features": list(data.feature_names),
            "hospitals": hospitals,
            "external_test_patients": int(len(data.y_test)),
            "heterogeneity": het,
        },
        "protocol": {
            "folds": cfg.folds, "rounds": cfg.rounds, "seed": cfg.seed, "model": cfg.model,
            "hidden": list(cfg.hidden), **cfg.hyper_kwargs(),
        },
        "algorithms": algorithms,
        "defenses": defenses,
        "attacks": attacks,
    }


def _delta(g: dict[str, Any]) -> str:
    d = g.get("delta", {"mean": float("nan")})["mean"]
    return "as configured" if math.isnan(d) else f"{d:g}"


def _findings(summary: AuditSummary, claims: list[ClaimResult], setup: dict[str, Any],
              cells: tuple[dict[str, Any], ...] = (),
              verdicts: list[dict[str, Any]] | None = None) -> list[str]:
    """Plain-language sentences, each computed from the tables above."""
    out: list[str] = []
    for algo in dict.fromkeys(r["algorithm"] for r in verdicts or []):
        rows = [r for r in verdicts or [] if r["algorithm"] == algo]
        leaks = [f"{r['threat']}/{r['defense']}" for r in rows if r["leaks"]]
        safe = [f"{r['threat']}/{r['defense']}" for r in rows if not r["leaks"] and r.get("metric")]
        out.append(f"With {algo}, the attack beats its baseline (95% interval above 0) in "
                   f"{len(leaks)} of {len(rows)} threat/defense settings"
                   + (f": {', '.join(leaks)}" if leaks else "")
                   + (f"; it does not in {', '.join(safe)}." if safe else "."))
    none = [g for g in summary.groups if g["defense"] == "none"]
    if none:
        best = max(none, key=lambda g: g["accuracy"]["mean"])
        worst = min(none, key=lambda g: g["accuracy"]["mean"])
        out.append(
            f"Without protection, on the pooled held-out patients (global models), "
            f"{best['algorithm']} was the most accurate "
            f"({_ms(best, 'accuracy')} over {best['n']} folds) and {worst['algorithm']} the "
            f"least ({_ms(worst, 'accuracy')})."
        )
    rows = [r for r in per_hospital_rows(summary)
            if r["defense"] == "none" and r["patients"] == "held-out folds" and r["mean"]]
    if rows:
        out.append(
            "Per hospital (each hospital's own held-out patients, mean over hospitals; worst "
            "hospital in brackets): " + "; ".join(
                f"{r['algorithm']} with {MODEL_NAMES.get(r['model'], r['model'])} "
                f"{_f(r['mean']['mean'])} ({r['worst']['hospital']} {_f(r['worst']['mean'])})"
                for r in rows) + ".")
    for c in summary.comparisons:
        if c.metric == "hospital_mean" and c.a.endswith("/none") and c.b.endswith("/none"):
            name = c.a.split("/")[0]
            out.append(
                f"{name} vs {REFERENCE}, per hospital (the model each hospital uses): mean "
                f"difference {c.diff:+.3f} (paired p {_p(c.paired_p)} over {c.n_pairs} folds).")
        if c.metric != "accuracy" or not c.b.endswith("/none") or not c.a.endswith("/none"):
            continue
        name = c.a.split("/")[0]
        sig = c.paired_p < 0.05 if not math.isnan(c.paired_p) else False
        out.append(
            f"{name} vs {REFERENCE}: accuracy difference {c.diff:+.3f} (paired 95% CI "
            f"[{c.paired_ci[0]:+.3f}, {c.paired_ci[1]:+.3f}], paired p {_p(c.paired_p)}): "
            + ("a statistically significant difference." if sig else
               "no statistically significant difference at the 5% level.")
        )
    for g in summary.groups:
        if g["defense"] == "none":
            continue
        base = summary.group(g["algorithm"], "none")
        if base is None:
            continue
        dacc = g["accuracy"]["mean"] - base["accuracy"]["mean"]
        tr = g["train_time"]["mean"] / base["train_time"]["mean"] if base["train_time"]["mean"] else float("nan")
        br = (g["bytes_total"]["mean"] / base["bytes_total"]["mean"]
              if base["bytes_total"]["mean"] else float("nan"))
        eps = g.get("epsilon", {"mean": float("nan")})["mean"]
        eps_text = "" if math.isnan(eps) else f"; it spent epsilon {epsilon_text(eps)} (delta {_delta(g)})"
        out.append(
            f"Defense '{g['defense']}' with {g['algorithm']}: accuracy {dacc:+.3f}, training "
            f"time x{tr:.2f}, bytes x{br:.2f} compared with no defense{eps_text}."
        )
    cols = [c for c in summary.attack_columns if c.endswith(".gain")]
    for col in cols:
        pts = [(g, g[col]["mean"]) for g in summary.groups
               if col in g and not math.isnan(g[col]["mean"])]
        if not pts:
            continue
        _, attack, party, metric = col[: -len(".gain")].split(".", 3)
        best = max(pts, key=lambda p: p[1])
        worst = min(pts, key=lambda p: p[1])
        beats = [f"{g['algorithm']}/{g['defense']}" for g, v in pts if v > 0.02]
        out.append(
            f"Attack '{attack}' by the {party} ({metric}): gain over its no-observation "
            f"baseline from {worst[1]:+.3f} ({worst[0]['algorithm']}/{worst[0]['defense']}) to "
            f"{best[1]:+.3f} ({best[0]['algorithm']}/{best[0]['defense']}); it beats the "
            f"baseline by more than 0.02 in {len(beats)} of {len(pts)} settings"
            + (f" ({', '.join(beats)})." if beats else ".")
        )
    if not summary.attack_columns and not verdicts:
        out.append("No privacy attack was run in this audit, so privacy risk is described by "
                   "the threat models only, not measured.")
    held = sum(c.verdict == "holds" for c in claims)
    failed = sum(c.verdict == "does not hold" for c in claims)
    unmeasured = sum(c.verdict == "not measured" for c in claims)
    out.append(f"Of the seed document's {len(claims)} testable claims, {held} hold, {failed} do "
               f"not hold and {unmeasured} could not be measured in this audit.")
    if summary.failed:
        out.append(f"{len(summary.failed)} cell(s) failed; see 'Failed cells'.")
    loads = [c.get("load_average") for c in cells if isinstance(c.get("load_average"), (int, float))]
    if loads:
        out.append(
            f"Times are wall-clock on the machine that ran the audit ({os.cpu_count()} CPUs, "
            f"1-minute load average {min(loads):.1f} to {max(loads):.1f} while cells ran); on a "
            "shared machine, time ratios near 1 are within noise."
        )
    n_test = sum(h["patients"] for h in setup["data"]["hospitals"]) / max(1, setup["protocol"]["folds"])
    out.append(
        f"Each held-out fold has about {n_test:.0f} patients, so one patient moves a fold's "
        f"accuracy by about {1 / max(n_test, 1):.3f}; fold-to-fold spread is large, and p-values "
        "from cross-validation folds are optimistic because training sets overlap "
        "(Nadeau and Bengio 2003)."
    )
    return out


# ------------------------------------------------------------------------------ renderers
def _html_table(t: Table) -> str:
    head, rows = t
    if not rows:
        return "<p><em>(nothing to show)</em></p>"
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(t: Table) -> str:
    head, rows = t
    if not rows:
        return "_(nothing to show)_\n"
    esc = [[str(v).replace("|", "\\|") for v in r] for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1150px;color:#1d2433;line-height:1.45;padding:0 1rem;background:#fff}
h1{color:#0b3d66;border-bottom:3px solid #1b6ca8;padding-bottom:.3rem}
h2{color:#0b3d66;margin-top:2.2rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.86rem;width:100%}
th,td{border:1px solid #d5d9e0;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef3f8}
tr:nth-child(even) td{background:#fafbfd}
.findings li{margin:.35rem 0}
.verdict-holds{color:#1a7f37;font-weight:600}.verdict-not{color:#b42318;font-weight:600}
.verdict-unmeasured{color:#6b7280}
figure{margin:1rem 0 2rem}figure img{max-width:100%;border:1px solid #e3e6ea}
figcaption{font-size:.85rem;color:#4b5563}
.meta{color:#4b5563;font-size:.9rem}
code,pre{background:#f3f4f6;padding:.1rem .3rem;border-radius:3px}
pre{padding:.6rem;overflow-x:auto;font-size:.8rem}
"""


def _claims_html(claims: list[ClaimResult]) -> str:
    head = ["seed §", "claim", "measured here", "verdict", "how measured"]
    th = "".join(f"<th>{h}</th>" for h in head)
    rows = []
    for c in claims:
        cls = {"holds": "verdict-holds", "does not hold": "verdict-not"}.get(c.verdict,
                                                                               "verdict-unmeasured")
        rows.append(f"<tr><td>{html.escape(c.section)}</td><td>{html.escape(c.claim)}</td>"
                    f"<td>{html.escape(c.measured)}</td><td class='{cls}'>{html.escape(c.verdict)}"
                    f"</td><td>{html.escape(c.method)}</td></tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _threat_table(setup: dict[str, Any]) -> Table:
    head = ["defense", "summary", "server observes", "a client observes", "an outsider observes"]
    rows = []
    for name, d in setup["defenses"].items():
        v = d["views"]
        rows.append([name, d["summary"], v.get("server", {}).get("observes", "-"),
                     v.get("client", {}).get("observes", "-"),
                     v.get("outsider", {}).get("observes", "-")])
    return head, rows


def _hospital_table(setup: dict[str, Any]) -> Table:
    return (["hospital", "patients", "positive rate", "export format (harmonised locally)",
             "population", "diagnosis rule", "labels changed by the rule"],
            [[h["name"], str(h["patients"]), f"{h['positive_rate']:.2f}", h["export_format"],
              h["population"], h["label_rule"], str(h["labels_changed"])]
             for h in setup["data"]["hospitals"]])


def _algorithms_table(setup: dict[str, Any]) -> Table:
    return (["algorithm", "kind", "what it is", "parameters"],
            [[n, a["kind"], a["summary"], json.dumps(a["params"]) if a["params"] else "-"]
             for n, a in setup["algorithms"].items()])


def _attacks_table(setup: dict[str, Any]) -> Table:
    return (["attack", "what it does", "threat model"],
            [[n, a["summary"], a["threat_model"]] for n, a in setup["attacks"].items()])


_UTILITY_TEXT = (
    "Two views of the same runs. Pooled: one model scored on every held-out patient of the "
    "fold (and on the external test set); that is the global model, which for FedMedHeter and "
    "Ditto is the shared model before any hospital adapts it (local-only training has no "
    "global model: its pooled figures are the mean over hospitals of each hospital's model on "
    "all held-out patients). Per hospital: each hospital scores, on its own held-out patients "
    "of the fold (and on its own test file where the federation file gives one), the model it "
    "uses: its personalised model for FedMedHeter (personalisation 'finetune', on by default: "
    "one epoch of fine-tuning of the final global model on the hospital's own training rows, "
    "at the hospital) and Ditto, its own model for local-only training, the global model for "
    "everything else; FedMedHeter's and Ditto's global models are shown per hospital too. "
    "The mean over hospitals counts each hospital once; the worst hospital is the one with the "
    "lowest accuracy over the folds.")


def _sections(results: AuditResults, summary: AuditSummary, claims: list[ClaimResult],
              setup: dict[str, Any], verdicts: list[dict[str, Any]] | None = None,
              heatmap: FigureFile | None = None) -> list[tuple[str, str, Any]]:
    """(title, kind, content) in report order; kind is 'table', 'list', 'text', 'figure' or
    'claims'.  The verdict matrix leads; everything else comes after."""
    verdicts = verdicts or []
    p = setup["protocol"]
    text = (
        f"{p['folds']}-fold stratified cross-validation over patients, stratified within each "
        f"hospital; {p['rounds']} rounds per training run; model: {p['model']}; local SGD with "
        f"learning rate {p['learning_rate']}, {p['local_epochs']} local epoch(s), batch size "
        f"{p['batch_size']}. Standardisation is refitted on each training fold from pooled "
        f"counts and sums. Heterogeneity: {setup['data']['heterogeneity']}. External test set: "
        f"{setup['data']['external_test_patients']} patients. Target accuracy for 'rounds to "
        f"target': {_f(summary.target_accuracy)} ({summary.target_source})."
    )
    secs: list[tuple[str, str, Any]] = []
    if verdicts:
        secs += [
            ("Verdicts: which defense stops which attack", "figure", heatmap),
            ("Verdict matrix", "table", _verdict_table(verdicts)),
            ("How to read the verdicts", "text", VERDICT_RULE + ". Each threat runs in its own "
             "setting, chosen so that its attack succeeds when nothing protects the data (see "
             "'Threat scenarios'); accuracy and costs are those of the algorithm under the "
             "defense in the cross-validated utility runs below, where the audit trained that "
             "pair. Every protection stated here holds only against the adversary named in its "
             "row, who observes and knows what 'Threat scenarios' says."),
            ("Threat scenarios", "table", _scenario_table(results.config)),
        ]
        peers = [r for r in verdicts if r["threat"] == "curious-peer" and r.get("series")]
        if peers:
            secs.append(("Curious peer: how the recovery degrades as hospitals join", "table",
                         _peer_series_table(peers)))
    dp_rows = dp_audit_rows(results.dp_audit_cells)
    if dp_rows:
        secs += [("Differential privacy: the accountant's epsilon beside a measured lower bound",
                  "table", _dp_audit_table(dp_rows)),
                 ("How the DP audit works", "text", DP_AUDIT_TEXT)]
    elif results.config.dp_audit_canaries == 0 and any(
            c.get("epsilon") is not None for c in results.cells):
        secs.append(("Differential privacy: measured lower bound", "text",
                     "Not measured in this audit (dp_audit_canaries = 0): the epsilons shown "
                     "are the accountant's upper bounds only. The default profile runs the "
                     "one-run audit beside every DP defense."))
    secs += [
        ("Findings", "list", _findings(summary, claims, setup, results.cells, verdicts)),
        ("Set-up", "text", text),
        ("Hospitals", "table", _hospital_table(setup)),
        ("Algorithms", "table", _algorithms_table(setup)),
        ("Defenses and threat models", "table", _threat_table(setup)),
    ]
    if setup["attacks"]:
        secs.append(("Attacks", "table", _attacks_table(setup)))
    secs += [
        ("Utility (mean ± std over folds)", "text", _UTILITY_TEXT),
        ("Utility: pooled held-out patients and external test set", "table",
         _utility_table(summary)),
        ("Utility per hospital: each hospital's own patients", "table",
         _per_hospital_table(summary)),
        ("Significance (each algorithm against FedAvg, same defense)", "table",
         _stats_table(summary)),
        ("Costs", "table", _cost_table(summary)),
        *([("Per-cell attacks on the utility runs", "table", _privacy_table(summary))]
          if summary.attack_columns else []),
        ("The seed document's claims beside the measured values", "claims", claims),
    ]
    if summary.skipped_attacks:
        secs.insert(-1, ("Attacks that did not apply", "table", (
            ["algorithm", "defense", "attack", "cells", "reason"],
            [[r["algorithm"], r["defense"], r["attack"], str(r["cells"]), r["reason"]]
             for r in summary.skipped_attacks])))
    if summary.failed:
        secs.append(("Failed cells", "table", (["algorithm", "defense", "fold", "error"], [
            [c["algorithm"], c["defense"], str(c["fold"] + 1), c["error"]] for c in summary.failed])))
    return secs


def write_report(results: AuditResults, *, command: str | None = None) -> ReportFiles:
    """Summarise ``results``, draw the figures and write every report file into its folder."""
    out = results.out_dir
    summary = summarize(results.cells, target_fraction=results.config.target_fraction)
    cfg = results.config
    claims = evaluate_claims(
        summary, results.threat_cells,
        setting=f"the cross-validated utility runs ({cfg.model}, {cfg.folds} folds x {cfg.rounds} "
                "rounds, FedMedHeter at its library defaults)")
    figs = make_figures(results.cells, summary, out / "figures")
    verdicts = threat_verdicts(results.threat_cells, summary)
    heat = verdict_heatmap(verdicts, out / "figures")
    if heat is not None:
        figs = [heat, *figs]
    setup = _setup(results)
    secs = _sections(results, summary, claims, setup, verdicts, heat)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = (f"securefed {securefed.__version__} · profile '{results.config.profile}' · "
            f"{len(results.cells)} cells · generated {generated}")
    reproduce = command or f"securefed audit --config {out / 'audit.toml'}"

    # config file that reproduces the run
    try:
        import tomli_w

        cfg = results.config.to_dict()
        if cfg["batch_size"] is None:
            cfg["batch_size"] = "full"
        (out / "audit.toml").write_text(tomli_w.dumps({k: v for k, v in cfg.items() if v is not None}))
    except ImportError:  # pragma: no cover - tomli-w is a dependency
        pass

    # ---- HTML
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>securefed audit report</title><style>{_CSS}</style></head><body>",
             "<h1>securefed privacy and utility audit</h1>",
             f"<p class='meta'>{html.escape(meta)}<br>Reproduce: <code>{html.escape(reproduce)}"
             "</code></p>"]
    for title, kind, content in secs:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if kind == "table":
            parts.append(_html_table(content))
        elif kind == "list":
            parts.append("<ul class='findings'>" + "".join(
                f"<li>{html.escape(s)}</li>" for s in content) + "</ul>")
        elif kind == "claims":
            parts.append(_claims_html(content))
        elif kind == "figure":
            if content is not None:
                b64 = base64.b64encode(content.png.read_bytes()).decode()
                parts.append(f"<figure><img alt='{html.escape(content.title)}' "
                             f"src='data:image/png;base64,{b64}'><figcaption>"
                             f"{html.escape(content.caption)}</figcaption></figure>")
        else:
            parts.append(f"<p>{html.escape(content)}</p>")
    parts.append("<h2>Figures</h2>")
    for f in figs[1:] if heat is not None else figs:
        b64 = base64.b64encode(f.png.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(f.title)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption><strong>{html.escape(f.title)}.</strong> "
                     f"{html.escape(f.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    html_path = out / "report.html"
    html_path.write_text("\n".join(parts), encoding="utf-8")

    # ---- Markdown
    md = ["# securefed privacy and utility audit", "", f"_{meta}_", "",
          f"Reproduce: `{reproduce}`", ""]
    for title, kind, content in secs:
        md += [f"## {title}", ""]
        if kind == "table":
            md.append(_md_table(content))
        elif kind == "list":
            md += [f"- {s}" for s in content] + [""]
        elif kind == "claims":
            md.append(_md_table(_claims_table(content)))
        elif kind == "figure":
            if content is not None:
                md += [f"![{content.title}](figures/{content.png.name})", "",
                       f"*{content.caption}*", ""]
        else:
            md += [content, ""]
    md += ["## Figures", ""]
    for f in figs[1:] if heat is not None else figs:
        md += [f"![{f.title}](figures/{f.png.name})", "", f"*{f.title}.* {f.caption}", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md), encoding="utf-8")

    # ---- JSON and CSV
    from evaluation.runner import code_fingerprint

    payload = {
        "meta": {"securefed_version": securefed.__version__, "generated": generated,
                 "profile": results.config.profile, "cells": len(results.cells),
                 "threat_cells": len(results.threat_cells), "code_fingerprint": code_fingerprint(),
                 "elapsed_seconds": results.elapsed, "cpu_seconds": results.cpu_time},
        "threats": [{k: v for k, v in r.items()} for r in verdicts],
        "dp_audit": dp_audit_rows(results.dp_audit_cells),
        "verdict_rule": VERDICT_RULE,
        "threat_scenarios": {t: get_threat(t).describe() for t in results.config.threats},
        "config": results.config.to_dict(),
        "setup": setup,
        "target_accuracy": summary.target_accuracy,
        "target_source": summary.target_source,
        "groups": summary.groups,
        "per_hospital": per_hospital_rows(summary),
        "comparisons": [c.to_dict() for c in summary.comparisons],
        "claims": [c.to_dict() for c in claims],
        "findings": _findings(summary, claims, setup, results.cells, verdicts),
        "failed": [{k: c.get(k) for k in ("algorithm", "defense", "fold", "error")}
                   for c in summary.failed],
        "skipped_attacks": summary.skipped_attacks,
        "figures": [{"name": f.name, "png": str(f.png.relative_to(out)),
                     "svg": str(f.svg.relative_to(out))} for f in figs],
    }
    json_path = out / "summary.json"
    json_path.write_text(json.dumps(payload, indent=2, default=_json_safe, allow_nan=True))
    flat = []
    for g in summary.groups:
        row: dict[str, Any] = {"algorithm": g["algorithm"], "defense": g["defense"], "n": g["n"]}
        for k, v in g.items():
            if isinstance(v, dict) and "mean" in v:
                row[f"{k}_mean"], row[f"{k}_std"] = v["mean"], v["std"]
        flat.append(row)
    import pandas as pd

    csv_path = out / "summary.csv"
    pd.DataFrame(flat).to_csv(csv_path, index=False)
    cells_csv = out / "cells.csv"
    summary.frame.to_csv(cells_csv, index=False)
    return ReportFiles(html=html_path, markdown=md_path, json=json_path, csv=csv_path,
                       cells_csv=cells_csv, figures=tuple(figs), summary=summary,
                       claims=tuple(claims), threats=tuple(verdicts))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
