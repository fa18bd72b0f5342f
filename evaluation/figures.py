"""The audit's figures (matplotlib, Agg backend), each saved as PNG and SVG.

* convergence: training loss, test loss and test accuracy per round, one line per
  algorithm, shaded mean ± one standard deviation over folds (the seed's Figure 1);
* accuracy bars with error bars over folds (the seed's Figure 2);
* privacy-utility frontier: attack success against accuracy, one point per defense setting;
* communication per round and cumulative;
* training time per defense, split by phase;
* reconstruction examples: a reconstructed patient row beside the true one, or an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evaluation.summary import AuditSummary  # noqa: E402

__all__ = ["FigureFile", "make_figures", "verdict_heatmap"]

_PALETTE = ("#1b6ca8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#2e4057", "#c97b84")
_DASHES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
_PHASES = ("local_training", "client_processing", "channel", "server_update", "evaluation")


@dataclass(frozen=True)
class FigureFile:
    """One saved figure: ``png`` and ``svg`` paths, a title and a caption for the report."""

    name: str
    title: str
    caption: str
    png: Path
    svg: Path


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}


def _save(fig: Any, out: Path, name: str, title: str, caption: str) -> FigureFile:
    out.mkdir(parents=True, exist_ok=True)
    png, svg = out / f"{name}.png", out / f"{name}.svg"
    # the tight bounding box is measured once (each "tight" save would lay the figure out
    # again) and used for both files; 0.1 inch of padding as matplotlib's own default
    fig.canvas.draw()
    bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
    fig.savefig(png, dpi=110, bbox_inches=bbox)
    fig.savefig(svg, bbox_inches=bbox)
    plt.close(fig)
    return FigureFile(name, title, caption, png, svg)


def _curves(cells: Sequence[dict[str, Any]], algo: str, defense: str, key: str) -> np.ndarray:
    series = [c["history"][key] for c in cells
              if not c.get("error") and c["algorithm"] == algo and c["defense"] == defense
              and key in c.get("history", {})]
    if not series:
        return np.empty((0, 0))
    n = min(len(s) for s in series)
    return np.array([s[:n] for s in series], dtype=np.float64)


def convergence(cells: Sequence[dict[str, Any]], summary: AuditSummary, out: Path,
                defense: str = "none") -> FigureFile | None:
    algos = [g["algorithm"] for g in summary.groups if g["defense"] == defense]
    if not algos:
        return None
    colours = _colours(algos)
    dashes = {a: _DASHES[i % len(_DASHES)] for i, a in enumerate(algos)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("train_loss", "training loss"), ("test_loss", "test loss (held-out fold)"),
              ("test_accuracy", "test accuracy (held-out fold)"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for algo in algos:
            arr = _curves(cells, algo, defense, key)
            if arr.size == 0:
                continue
            x = np.arange(1, arr.shape[1] + 1)
            m = np.nanmean(arr, 0)
            s = np.nanstd(arr, 0, ddof=1) if arr.shape[0] > 1 else np.zeros_like(m)
            ax.plot(x, m, color=colours[algo], label=algo, lw=1.8, ls=dashes[algo])
            ax.fill_between(x, m - s, m + s, color=colours[algo], alpha=0.18, lw=0)
        ax.set_xlabel("round")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    if summary.target_accuracy is not None:
        axes[2].axhline(summary.target_accuracy, color="grey", ls="--", lw=1,
                        label="target accuracy")
    axes[2].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Convergence (defense: {defense}); lines: mean over folds, bands: ± 1 std",
                 fontsize=11)
    return _save(fig, out, "convergence", "Convergence per round",
                 "Mean over cross-validation folds; the band is one standard deviation. "
                 "A centralised 'round' is the same number of local epochs over the pooled rows.")


def accuracy_bars(summary: AuditSummary, out: Path) -> FigureFile | None:
    if not summary.groups:
        return None
    defenses = list(dict.fromkeys(g["defense"] for g in summary.groups))
    algos = list(dict.fromkeys(g["algorithm"] for g in summary.groups))
    colours = _colours(algos)
    most = max(sum(1 for g in summary.groups if g["defense"] == d) for d in defenses)
    width = 0.8 / most
    fig, ax = plt.subplots(figsize=(min(13.0, 2.5 + 1.2 * len(defenses) * max(1, most / 2)), 4.2))
    seen: set[str] = set()
    for i, d in enumerate(defenses):
        here = [g for g in summary.groups if g["defense"] == d]
        for j, g in enumerate(here):
            x = i + (j - (len(here) - 1) / 2) * width
            label = g["algorithm"] if g["algorithm"] not in seen else None
            seen.add(g["algorithm"])
            ax.bar(x, g["accuracy"]["mean"], width * 0.92, yerr=g["accuracy"]["std"], capsize=3,
                   color=colours[g["algorithm"]], label=label)
            ax.text(x, 0.02, f"{g['accuracy']['mean']:.2f}", ha="center", va="bottom",
                    fontsize=7, color="white", rotation=90)
    ax.set_xticks(range(len(defenses)), defenses)
    ax.set_xlabel("defense")
    ax.set_ylabel("test accuracy (mean ± std over folds)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(algos), 5), loc="upper center",
              bbox_to_anchor=(0.5, -0.15))
    return _save(fig, out, "accuracy", "Accuracy by algorithm and defense",
                 "Bars: mean held-out-fold accuracy; whiskers: one standard deviation over folds.")


def per_hospital(summary: AuditSummary, out: Path, defense: str = "none") -> FigureFile | None:
    """Bars per hospital (and the mean over hospitals): each algorithm's accuracy on the
    hospital's own held-out patients, with the model that hospital uses (personalised
    where the algorithm keeps one) and, for personalised algorithms, the global model beside
    it (hatched)."""
    series = []  # (label, colour key, block, hatched)
    for g in summary.groups:
        if g["defense"] != defense:
            continue
        per = g.get("per_hospital") or {}
        own = per.get("held_out_folds")
        if own is None:
            continue
        label = {"personalised": "personalised", "local": "each hospital alone",
                 "global": "global model"}.get(own["model"], str(own["model"]))
        series.append((f"{g['algorithm']} ({label})", g["algorithm"], own, False))
        if per.get("held_out_folds_global") is not None:
            series.append((f"{g['algorithm']} (global model)", g["algorithm"],
                           per["held_out_folds_global"], True))
    if not series:
        return None
    hosp = list(dict.fromkeys(h for _, _, b, _ in series for h in b["accuracy"]))
    colours = _colours(list(dict.fromkeys(k for _, k, _, _ in series)))
    ticks = [*hosp, "mean over\nhospitals"]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.9 * len(ticks) + 2), 4.0))
    width = 0.8 / len(series)
    for j, (label, key, block, hatched) in enumerate(series):
        xs = np.arange(len(ticks)) + (j - (len(series) - 1) / 2) * width
        cells = [block["accuracy"].get(h, {"mean": np.nan, "std": np.nan}) for h in hosp]
        mean = block["mean"] or {"mean": np.nan, "std": np.nan}
        ms = [c["mean"] for c in cells] + [mean["mean"]]
        ss = [c["std"] for c in cells] + [mean["std"]]
        ax.bar(xs, ms, width * 0.92, yerr=ss, capsize=2, label=label,
               color="white" if hatched else colours[key], edgecolor=colours[key],
               hatch="///" if hatched else None, lw=1.0)
    ax.set_xticks(range(len(ticks)), ticks)
    ax.set_ylabel("accuracy on the hospital's own held-out patients")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(series), 3), loc="upper center",
              bbox_to_anchor=(0.5, -0.12))
    return _save(fig, out, "per-hospital", "Accuracy per hospital",
                 f"Defense '{defense}'. Each hospital's held-out patients of each fold scored "
                 "by the model that hospital uses: personalised (FedMedHeter, Ditto), its own "
                 "(local-only training) or the global model (the others); hatched bars: the "
                 "global model of a personalised algorithm on the same patients. Whiskers: one "
                 "standard deviation over folds.")


def privacy_utility(summary: AuditSummary, out: Path) -> list[FigureFile]:
    """One panel per attack metric: attack success (y) against accuracy (x), one point per
    algorithm and defense."""
    metrics = [c for c in summary.attack_columns if not c.endswith((".baseline", ".gain"))]
    panels = []
    for col in metrics:
        pts = [(g, g[col]) for g in summary.groups if col in g and not np.isnan(g[col]["mean"])]
        if pts:
            panels.append((col, pts))
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.3), squeeze=False)
    algos = list(dict.fromkeys(g["algorithm"] for g in summary.groups))
    colours = _colours(algos)
    markers = dict(zip(dict.fromkeys(g["defense"] for g in summary.groups),
                       "osD^vP*Xh<>", strict=False))
    for ax, (col, pts) in zip(axes[0], panels, strict=True):
        for g, v in pts:
            ax.errorbar(g["accuracy"]["mean"], v["mean"], xerr=g["accuracy"]["std"],
                        yerr=v["std"], fmt=markers.get(g["defense"], "o"),
                        color=colours[g["algorithm"]], capsize=2, ms=6)
            ax.annotate(g["defense"], (g["accuracy"]["mean"], v["mean"]), fontsize=6,
                        xytext=(4, 3), textcoords="offset points")
        base = [g[col + ".baseline"]["mean"] for g, _ in pts if col + ".baseline" in g]
        if base:
            ax.axhline(float(np.nanmean(base)), color="grey", ls="--", lw=1)
        _, attack, party, metric = col.split(".", 3)
        ax.set_xlabel("test accuracy (utility)")
        ax.set_ylabel(f"{metric} (higher = more leakage)")
        ax.set_title(f"{attack} by the {party}", fontsize=10)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[a], marker="o", ls="", label=a) for a in algos]
    axes[0][0].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle("Privacy-utility frontier (dashed: baseline that ignores the observation)",
                 fontsize=11)
    return [_save(fig, out, "frontier", "Privacy-utility frontier",
                  "One point per algorithm (colour) and defense (label); right is more useful, "
                  "down is more private. Whiskers: one standard deviation over folds.")]


def dp_accuracy(summary: AuditSummary, out: Path) -> FigureFile | None:
    """Accuracy against the epsilon each DP setting spent, beside the undefended accuracy."""
    pts = [g for g in summary.groups if "epsilon" in g and not np.isnan(g["epsilon"]["mean"])]
    if not pts:
        return None
    algos = list(dict.fromkeys(g["algorithm"] for g in pts))
    colours = _colours(algos)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for g in pts:
        ax.errorbar(g["epsilon"]["mean"], g["accuracy"]["mean"], yerr=g["accuracy"]["std"],
                    fmt="o", color=colours[g["algorithm"]], capsize=2)
        ax.annotate(g["defense"], (g["epsilon"]["mean"], g["accuracy"]["mean"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    for algo in algos:
        base = summary.group(algo, "none")
        if base is not None:
            ax.axhline(base["accuracy"]["mean"], color=colours[algo], ls="--", lw=1,
                       label=f"{algo} without DP")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon spent (delta as configured; log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out, "dp-accuracy", "Accuracy against epsilon",
                 "Each DP setting's final epsilon (from the dp-accounting library) and its "
                 "accuracy; dashed: the same algorithm without defense.")


def communication(cells: Sequence[dict[str, Any]], summary: AuditSummary, out: Path) -> FigureFile | None:
    groups = [g for g in summary.groups if g["kind"] == "federated"]
    if not groups:
        return None
    defense_colours = _colours(list(dict.fromkeys(g["defense"] for g in groups)))
    algos = list(dict.fromkeys(g["algorithm"] for g in groups))
    dashes = {a: _DASHES[i % len(_DASHES)] for i, a in enumerate(algos)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for g in groups:
        up = _curves(cells, g["algorithm"], g["defense"], "bytes_up")
        down = _curves(cells, g["algorithm"], g["defense"], "bytes_down")
        if up.size == 0:
            continue
        per_round = np.nanmean(up + down, 0)
        x = np.arange(1, per_round.size + 1)
        style = {"color": defense_colours[g["defense"]], "ls": dashes[g["algorithm"]],
                 "label": f"{g['algorithm']}/{g['defense']}"}
        axes[0].plot(x, per_round / 1024, **style)
        axes[1].plot(x, np.cumsum(per_round) / 1024, **style)
    axes[0].set_title("bytes per round (up + down, all hospitals)", fontsize=10)
    axes[1].set_title("cumulative bytes", fontsize=10)
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_ylabel("KiB (log scale)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(fig, out, "communication", "Communication",
                 "Bytes measured from the serialised messages the engine really sends "
                 "(model down, updates or protocol messages up), mean over folds; colour: "
                 "defense, line style: algorithm.")


def time_overhead(summary: AuditSummary, out: Path) -> FigureFile | None:
    if not summary.groups:
        return None
    labels = [f"{g['algorithm']}/{g['defense']}" for g in summary.groups]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(labels) + 2), 4))
    bottom = np.zeros(len(labels))
    phase_colours = _colours(_PHASES + ("other",))
    for phase in (*_PHASES, "other"):
        vals = []
        for g in summary.groups:
            if phase == "other":
                known = sum(g.get(f"time.{p}", {"mean": 0.0})["mean"] for p in _PHASES)
                vals.append(max(g["train_time"]["mean"] - known, 0.0))
            else:
                vals.append(g.get(f"time.{phase}", {"mean": 0.0})["mean"])
        vals_arr = np.nan_to_num(np.array(vals))
        if not vals_arr.any():
            continue
        ax.bar(labels, vals_arr, bottom=bottom, color=phase_colours[phase], label=phase)
        bottom += vals_arr
    for i, g in enumerate(summary.groups):
        base = summary.group(g["algorithm"], "none")
        if g["defense"] != "none" and base is not None and base["train_time"]["mean"] > 0:
            ratio = g["train_time"]["mean"] / base["train_time"]["mean"]
            ax.annotate(f"x{ratio:.1f}", (i, g["train_time"]["mean"]), ha="center",
                        va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_ylabel("seconds per training run (mean over folds)")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    for t in ax.get_xticklabels():
        t.set_ha("right")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "time", "Training time by phase",
                 "Wall time of each phase summed over rounds, as the engine measured it; "
                 "'other' is the rest of the run (set-up, bookkeeping). 'xN' above a bar: "
                 "time relative to the same algorithm without defense.")


def reconstructions(cells: Sequence[dict[str, Any]], out: Path, *, max_panels: int = 4) -> list[FigureFile]:
    """One figure per attack that returned examples: for each defense (up to ``max_panels``),
    the first true record beside its reconstruction (``{"truth", "reconstruction",
    "features"}`` rows in standardised units) or image (``truth_image``/``reconstruction_image``)."""
    by_attack: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for c in cells:
        for s in c.get("attacks", []):
            ex = s.get("examples") or {}
            if not ex:
                continue
            panels = by_attack.setdefault(s.get("attack", "?"), [])
            if all(p[0]["defense"] != c["defense"] for p in panels) and len(panels) < max_panels:
                panels.append((c, ex))
    figs: list[FigureFile] = []
    for attack, panels in by_attack.items():
        images = all("truth_image" in ex for _, ex in panels)
        if images:
            fig, axes = plt.subplots(2, len(panels), figsize=(2.2 * len(panels), 4.4), squeeze=False)
            for j, (c, ex) in enumerate(panels):
                axes[0][j].imshow(np.asarray(ex["truth_image"]), cmap="gray_r")
                axes[1][j].imshow(np.asarray(ex["reconstruction_image"]), cmap="gray_r")
                axes[0][j].set_title(f"true ({c['defense']})", fontsize=8)
                axes[1][j].set_title("reconstructed", fontsize=8)
                for ax in (axes[0][j], axes[1][j]):
                    ax.axis("off")
        else:
            panels = [(c, ex) for c, ex in panels if "truth" in ex and "reconstruction" in ex]
            if not panels:
                continue
            fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 1.9 * len(panels) + 0.5), layout="constrained",
                                     squeeze=False)
            for ax, (c, ex) in zip(axes[:, 0], panels, strict=True):
                truth = np.atleast_2d(np.asarray(ex["truth"], dtype=np.float64))[0]
                rec = np.atleast_2d(np.asarray(ex["reconstruction"], dtype=np.float64))[0]
                names = list(ex.get("features", [f"x{i}" for i in range(truth.size)]))
                x = np.arange(truth.size)
                ax.bar(x - 0.2, truth, 0.4, label="true record", color="#1b6ca8")
                ax.bar(x + 0.2, rec[: truth.size], 0.4, label="reconstruction", color="#d1495b")
                ax.set_xticks(x, names, fontsize=7)
                ax.axhline(0, color="black", lw=0.5)
                ax.set_ylabel("std. units", fontsize=7)
                ax.set_title(f"defense '{c['defense']}' ({c['algorithm']}, fold {c['fold'] + 1})",
                             fontsize=8)
            axes[0, 0].legend(fontsize=7)
        figs.append(_save(fig, out, f"reconstruction-{attack}", f"Reconstruction: {attack}",
                          "A true record beside the reconstructed record paired with it one to "
                          "one (least total squared distance), under each defense "
                          "(standardised units)."))
    return figs


def verdict_heatmap(rows: Sequence[dict[str, Any]], out: Path) -> FigureFile | None:
    """Threats (rows) x defenses (columns), one panel per algorithm: red where the attack
    leaks (the gain's 95% interval is above 0), green where it does not, the shade by the
    gain; every cell is annotated with the gain and its interval."""
    from matplotlib.colors import LinearSegmentedColormap

    if not rows:
        return None
    algos = list(dict.fromkeys(r["algorithm"] for r in rows))
    threats = list(dict.fromkeys(r["threat"] for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    by = {(r["algorithm"], r["threat"], r["defense"]): r for r in rows}
    red = LinearSegmentedColormap.from_list("leak", ["#fde2e1", "#b42318"])
    fig, axes = plt.subplots(len(algos), 1, figsize=(1.9 * len(defenses) + 2.5,
                                                    (0.75 * len(threats) + 1.0) * len(algos)),
                             squeeze=False)
    for ax, algo in zip(axes[:, 0], algos, strict=True):
        ax.set_xlim(0, len(defenses))
        ax.set_ylim(0, len(threats))
        ax.invert_yaxis()
        for i, t in enumerate(threats):
            for j, d in enumerate(defenses):
                r = by.get((algo, t, d))
                if r is None:
                    colour, text, tc = "#f3f4f6", "not run", "#6b7280"
                elif r.get("metric") is None:
                    colour, text, tc = "#f3f4f6", "failed", "#6b7280"
                else:
                    g = float(r["gain"])
                    if r["leaks"]:
                        colour = red(min(1.0, 0.25 + 0.75 * g / 0.8))
                        tc = "white" if g > 0.3 else "#1d2433"
                        word = "LEAKS"
                    elif r.get("inconclusive"):
                        colour, tc, word = "#fdf0c8", "#1d2433", "not shown (inconclusive)"
                    else:
                        colour, tc, word = "#d3f0dc", "#1d2433", "no leak"
                    text = f"{word}\n{g:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
                ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=colour, edgecolor="white", lw=2))
                ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=7.5, color=tc)
        ax.set_xticks(np.arange(len(defenses)) + 0.5, defenses, rotation=20, fontsize=8)
        ax.set_yticks(np.arange(len(threats)) + 0.5, threats, fontsize=8)
        ax.set_title(algo, fontsize=10)
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
        ax.tick_params(length=0)
    fig.tight_layout()
    return _save(fig, out, "verdicts", "Verdicts: which defense stops which attack",
                 "Each cell: does the threat's attack beat its no-observation baseline under "
                 "the defense? Red (LEAKS): the 95% interval of the mean gain over the "
                 "replicates lies above 0, shaded by the gain; green: it does not; amber: the "
                 "mean gain is above 0.02 but its interval reaches 0 (more seeds would tell). "
                 "Numbers: gain (floored at 0) and its interval. Grey: not run for this defense.")


def make_figures(cells: Sequence[dict[str, Any]], summary: AuditSummary, out: Path) -> list[FigureFile]:
    """Draw every figure the cells support; returns them in report order."""
    figs: list[FigureFile | None] = [
        convergence(cells, summary, out),
        accuracy_bars(summary, out),
        per_hospital(summary, out),
        *privacy_utility(summary, out),
        dp_accuracy(summary, out),
        communication(cells, summary, out),
        time_overhead(summary, out),
        *reconstructions(cells, out),
    ]
    return [f for f in figs if f is not None]
