"""The seed document's claims beside what this audit measured.

Every row is computed from the audit's own cells; a claim whose ingredients the audit did
not run (an algorithm, a defense or an attack left out or not available) is marked "not
measured" with the reason.  Nothing here is tuned toward the claimed numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from evaluation.stats import compare
from evaluation.summary import AuditSummary

__all__ = ["ClaimResult", "evaluate_claims"]

HOLDS = "holds"
FAILS = "does not hold"
UNMEASURED = "not measured"


@dataclass(frozen=True)
class ClaimResult:
    """One claim: where the seed makes it, what it says, what was measured, and the verdict."""

    section: str
    claim: str
    measured: str
    verdict: str
    method: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def _ms(s: AuditSummary, algo: str, dfn: str, metric: str) -> str:
    g = s.group(algo, dfn)
    if g is None or metric not in g:
        return "n/a"
    return f"{g[metric]['mean']:.3f} ± {g[metric]['std']:.3f}"


def _missing(s: AuditSummary, *pairs: tuple[str, str]) -> str | None:
    absent = [f"{a}/{d}" for a, d in pairs if s.group(a, d) is None]
    return f"not in this audit: {', '.join(absent)}" if absent else None


def _cmp(s: AuditSummary, a: str, b: str, dfn: str, metric: str = "accuracy"):
    for c in s.comparisons:
        if c.a == f"{a}/{dfn}" and c.b == f"{b}/{dfn}" and c.metric == metric:
            return c
    return None


def _accuracy_85(s: AuditSummary) -> ClaimResult:
    claim = "FedMedHeter reaches 85% test accuracy (Figure 2)"
    miss = _missing(s, ("fedmedheter", "none"))
    method = ("mean ± std over the cross-validation folds of the global model's accuracy on "
              "the pooled held-out patients")
    if miss:
        return ClaimResult("4", claim, miss, UNMEASURED, method)
    m = s.mean("fedmedheter", "none", "accuracy")
    return ClaimResult("4", claim, _ms(s, "fedmedheter", "none", "accuracy"),
                       HOLDS if m >= 0.85 else FAILS, method)


def _centralised_lower(s: AuditSummary) -> ClaimResult:
    claim = "Centralised training is less accurate than FedMedHeter (67% vs 85%)"
    miss = _missing(s, ("fedmedheter", "none"), ("centralized", "none"))
    method = ("fold-paired difference of accuracy on the pooled held-out patients, "
              "FedMedHeter's global model minus centralised")
    if miss:
        return ClaimResult("4", claim, miss, UNMEASURED, method)
    f = s.frame[s.frame.defense == "none"]
    a = f[f.algorithm == "fedmedheter"].set_index("fold").accuracy
    b = f[f.algorithm == "centralized"].set_index("fold").accuracy
    diff = (a - b).dropna()
    measured = (f"centralised {_ms(s, 'centralized', 'none', 'accuracy')}, FedMedHeter "
                f"{_ms(s, 'fedmedheter', 'none', 'accuracy')}; difference {diff.mean():+.3f}")
    return ClaimResult("4", claim, measured, HOLDS if diff.mean() > 0 else FAILS, method)


def _ttest(s: AuditSummary) -> ClaimResult:
    claim = "FedMedHeter beats FedAvg, independent-samples t-test p < 0.05"
    miss = _missing(s, ("fedmedheter", "none"), ("fedavg", "none"))
    method = ("Student t-test over fold accuracies of the global models on the pooled held-out "
              "patients (and paired t-test over the same folds)")
    c = _cmp(s, "fedmedheter", "fedavg", "none")
    if miss or c is None:
        return ClaimResult("4", claim, miss or "fewer than 2 folds", UNMEASURED, method)
    measured = (f"difference {c.diff:+.3f}, Student p = {c.student_p:.3g}, "
                f"paired p = {c.paired_p:.3g}")
    ok = c.diff > 0 and c.student_p < 0.05
    return ClaimResult("4", claim, measured, HOLDS if ok else FAILS, method)


_PER_HOSPITAL = ("each hospital's own held-out patients of the fold (mean over hospitals, each "
                 "counting once); FedMedHeter: each hospital's {fmh}; {other}: the global model")


def _model_of(s: AuditSummary, algo: str) -> str:
    g = s.group(algo, "none") or {}
    model = ((g.get("per_hospital") or {}).get("held_out_folds") or {}).get("model")
    return {"personalised": "personalised model", "local": "own model",
            "global": "global model (no personalisation)"}.get(model, f"{model} model")


def _own_test_text(s: AuditSummary, a: str, b: str) -> str:
    """The same comparison on each hospital's own test file, where the audit has them."""
    fa, fb = (s.frame[(s.frame.algorithm == x) & (s.frame.defense == "none")] for x in (a, b))
    if "own_mean" not in s.frame or fa.own_mean.isna().all() or fb.own_mean.isna().all():
        return ""
    c = compare(dict(zip(fa.fold, fa.own_mean, strict=True)),
                dict(zip(fb.fold, fb.own_mean, strict=True)), names=(a, b))
    return (f"; on each hospital's own test file: {_pct(c.mean_b)} vs {_pct(c.mean_a)}, "
            f"difference {100 * c.diff:+.1f} points, paired p = {c.paired_p:.3g}")


def _per_hospital_claim(other: str, claim: str, significance: bool
                        ) -> Callable[[AuditSummary], ClaimResult]:
    """A seed claim about FedMedHeter against ``other``, measured per hospital: the fold-paired
    difference of the mean per-hospital accuracy, personalised FedMedHeter minus ``other``
    (its global model).  With ``significance`` it holds when the difference is positive with
    paired p < 0.05; without, when it is positive (as the pooled row)."""

    def run(s: AuditSummary) -> ClaimResult:
        rule = ("holds when FedMedHeter is higher with paired t-test p < 0.05" if significance
                else "holds when FedMedHeter is higher (as the pooled row); paired t-test "
                "beside it")
        method = ("fold-paired difference of per-hospital accuracy on "
                  + _PER_HOSPITAL.format(fmh=_model_of(s, "fedmedheter"),
                                         other=NAMES.get(other, other))
                  + f"; {rule}")
        miss = _missing(s, ("fedmedheter", "none"), (other, "none"))
        if miss:
            return ClaimResult("4", claim, miss, UNMEASURED, method)
        f = s.frame[s.frame.defense == "none"]
        a = f[f.algorithm == "fedmedheter"]
        b = f[f.algorithm == other]
        if "hospital_mean" not in f or a.hospital_mean.notna().sum() < 2 \
                or b.hospital_mean.notna().sum() < 2:
            return ClaimResult("4", claim, "fewer than 2 folds with per-hospital figures",
                               UNMEASURED, method)
        c = compare(dict(zip(a.fold, a.hospital_mean, strict=True)),
                    dict(zip(b.fold, b.hospital_mean, strict=True)),
                    names=("fedmedheter", other))
        measured = (f"{NAMES.get(other, other)} {_pct(c.mean_b)}, FedMedHeter "
                    f"({_model_of(s, 'fedmedheter')}) {_pct(c.mean_a)}: difference "
                    f"{100 * c.diff:+.1f} points, paired p = {c.paired_p:.3g} over "
                    f"{c.n_pairs} folds" + _own_test_text(s, "fedmedheter", other))
        ok = c.diff > 0 and (not significance or c.paired_p < 0.05)
        return ClaimResult("4", claim, measured, HOLDS if ok else FAILS, method)

    return run


NAMES = {"centralized": "centralised training", "fedavg": "FedAvg"}


def _ratio_claim(section: str, claim: str, a: tuple[str, str], b: tuple[str, str],
                 metric: str, threshold: float, method: str,
                 unit: Callable[[float], str] = _pct) -> Callable[[AuditSummary], ClaimResult]:
    """Claim "a is at least ``threshold`` lower than b on ``metric``" (reduction 1 - a/b)."""

    def run(s: AuditSummary) -> ClaimResult:
        miss = _missing(s, a, b)
        if miss:
            return ClaimResult(section, claim, miss, UNMEASURED, method)
        va, vb = s.mean(*a, metric), s.mean(*b, metric)
        if math.isnan(va) or math.isnan(vb) or vb == 0:
            return ClaimResult(section, claim, f"{metric} not available (target not reached?)",
                               UNMEASURED, method)
        red = 1 - va / vb
        measured = (f"{a[0]}/{a[1]} {va:.4g} vs {b[0]}/{b[1]} {vb:.4g}: "
                    f"{unit(red)} {'lower' if red >= 0 else 'higher'}")
        return ClaimResult(section, claim, measured, HOLDS if red >= threshold else FAILS, method)

    return run


def _he(s: AuditSummary) -> ClaimResult:
    claim = "Encrypt-then-centralise (HE) is about 3x slower and 12% less accurate"
    method = ("encrypted-centralised/ckks vs centralised/none: training time per epoch (one-off key "
              "generation left out), accuracy difference")
    miss = _missing(s, ("encrypted-centralized", "ckks"), ("centralized", "none"))
    if miss:
        return ClaimResult("3", claim, miss, UNMEASURED, method)
    t = (s.mean("encrypted-centralized", "ckks", "time_per_round")
         / s.mean("centralized", "none", "time_per_round"))
    d = s.mean("encrypted-centralized", "ckks", "accuracy") - s.mean("centralized", "none", "accuracy")
    ok = t >= 3 and d <= -0.12
    return ClaimResult("3", claim, f"{t:.1f}x the time, accuracy {d:+.3f}", HOLDS if ok else FAILS,
                       method)


def _leakage(section: str, claim: str, defense: str, threshold: float, attack_prefix: str | None):
    method = (f"drop of each attack's gain over its baseline under '{defense}' versus 'none' "
              "(FedMedHeter, else FedAvg), accuracy change beside it")

    def run(s: AuditSummary) -> ClaimResult:
        algo = "fedmedheter" if s.group("fedmedheter", defense) else "fedavg"
        miss = _missing(s, (algo, defense), (algo, "none"))
        if miss:
            return ClaimResult(section, claim, miss, UNMEASURED, method)
        cols = [c for c in s.attack_columns if c.endswith(".gain")
                and (attack_prefix is None or c.startswith(f"attack.{attack_prefix}"))]
        parts, reductions = [], []
        for col in cols:
            g0, g1 = s.mean(algo, "none", col), s.mean(algo, defense, col)
            if math.isnan(g0) or math.isnan(g1) or g0 <= 0:
                continue
            red = 1 - max(g1, 0.0) / g0
            reductions.append(red)
            parts.append(f"{col[len('attack.'):-len('.gain')]}: {_pct(red)}")
        if not parts:
            return ClaimResult(section, claim, "no attack with a positive gain without defense",
                               UNMEASURED, method)
        dacc = s.mean(algo, defense, "accuracy") - s.mean(algo, "none", "accuracy")
        ok = min(reductions) >= threshold and dacc > -0.05
        return ClaimResult(section, claim, "; ".join(parts) + f"; accuracy {dacc:+.3f}",
                           HOLDS if ok else FAILS, method)

    return run


def _dp_only(s: AuditSummary) -> ClaimResult:
    claim = "FedMedHeter is 8% more accurate than a DP-only mechanism at the same privacy strength"
    method = "FedMedHeter vs FedAvg, both under dp-central with the same noise (same epsilon)"
    miss = _missing(s, ("fedmedheter", "dp-central"), ("fedavg", "dp-central"))
    if miss:
        return ClaimResult("3", claim, miss, UNMEASURED, method)
    d = s.mean("fedmedheter", "dp-central", "accuracy") - s.mean("fedavg", "dp-central", "accuracy")
    return ClaimResult("3", claim, f"accuracy difference {d:+.3f}", HOLDS if d >= 0.08 else FAILS,
                       method)


_CLAIMS: tuple[Callable[[AuditSummary], ClaimResult], ...] = (
    _accuracy_85,
    _centralised_lower,
    _ttest,
    _per_hospital_claim("centralized", "Centralised training is less accurate than FedMedHeter, "
                        "measured per hospital (each hospital's own patients)", False),
    _per_hospital_claim("fedavg", "FedMedHeter beats FedAvg with p < 0.05, measured per hospital "
                        "(each hospital's own patients)", True),
    _ratio_claim("3", "FedMedHeter converges 15% faster than FedProx",
                 ("fedmedheter", "none"), ("fedprox", "none"), "rounds_to_target", 0.15,
                 "rounds until the held-out accuracy first reaches the target"),
    _ratio_claim("3", "FedMedHeter trains in 62% less time than centralised training",
                 ("fedmedheter", "none"), ("centralized", "none"), "train_time", 0.62,
                 "wall time of the whole training run, same number of rounds/epochs"),
    _ratio_claim("2", "FedProx converges about 30% faster than FedAvg on non-IID data",
                 ("fedprox", "none"), ("fedavg", "none"), "rounds_to_target", 0.30,
                 "rounds until the held-out accuracy first reaches the target"),
    _he,
    _dp_only,
)


def _communication(s: AuditSummary, threat_cells: tuple[dict, ...]) -> ClaimResult:
    """40% less communication, measured where compression matters: the MLP of the outsider
    scenarios (hundreds of parameters), not the utility runs' logistic regression, whose 8
    parameters travel in messages dominated by their headers."""
    claim = "FedMedHeter needs 40% less communication than FedAvg"
    cells = [c for c in threat_cells if c.get("threat") == "outsider-membership"
             and c.get("defense") == "none" and not c.get("error")]
    by = {a: [c for c in cells if c["algorithm"] == a] for a in ("fedmedheter", "fedavg")}
    if by["fedmedheter"] and by["fedavg"]:
        d = by["fedavg"][0]["details"]
        mean = {a: sum(c["details"]["bytes_up"] + c["details"]["bytes_down"] for c in v) / len(v)
                for a, v in by.items()}
        red = 1 - mean["fedmedheter"] / mean["fedavg"]
        method = (f"total bytes up and down over the same {d['rounds_run']} rounds, on the "
                  f"{d['model']} of the outsider scenarios ({d['model_parameters']} parameters, "
                  "where compression matters), no defense, mean over its seeds")
        measured = (f"fedmedheter {mean['fedmedheter']:.4g} B vs fedavg {mean['fedavg']:.4g} B: "
                    f"{_pct(red)} {'lower' if red >= 0 else 'higher'}")
        return ClaimResult("4", claim, measured, HOLDS if red >= 0.40 else FAILS, method)
    fallback = _ratio_claim("4", claim, ("fedmedheter", "none"), ("fedavg", "none"), "bytes_total",
                            0.40, "total bytes up and down over the same number of rounds, on the "
                            "utility runs' model (with logistic regression the 8 parameters are "
                            "outweighed by message headers: run the outsider threats with both "
                            "algorithms to measure it on an MLP)")
    return fallback(s)


def _threat_leakage(section: str, claim: str, defense: str, threshold: float,
                    threats: tuple[str, ...] | None, s: AuditSummary,
                    verdicts: list[dict], fallback: Callable[[AuditSummary], ClaimResult]
                    ) -> ClaimResult:
    """A leakage claim measured on the threat verdicts: for each threat run both without
    defense and under ``defense`` (same algorithm) whose attack leaks without it, the drop of
    its gain, ``1 - gain(defense) / gain(none)``; the claim holds when every drop reaches
    ``threshold`` and the utility runs lose less than 5 points of accuracy."""
    by = {(r["threat"], r["defense"], r["algorithm"]): r for r in verdicts}
    parts: list[str] = []
    reds: list[float] = []
    algo = "fedmedheter"
    for algo in ("fedmedheter", "fedavg"):  # the first algorithm with a measurable drop
        for (t, d, a), r in by.items():
            if d != "none" or a != algo or (threats is not None and t not in threats):
                continue
            other = by.get((t, defense, a))
            if other is None or not r["leaks"] or not r["gain"] > 0:
                continue
            red = 1 - other["gain"] / r["gain"]
            reds.append(red)
            parts.append(f"{t}: gain {r['gain']:.3f} -> {other['gain']:.3f} ({_pct(red)} lower)")
        if parts:
            break
    method = (f"drop of each threat's gain over its baseline under '{defense}' versus no defense "
              f"({algo}, threat scenarios whose attack leaks without a defense), accuracy change "
              "of the cross-validated utility runs beside it")
    if not verdicts:
        return fallback(s)
    if not parts:
        which = ", ".join(threats) if threats else "any threat"
        return ClaimResult(section, claim, f"{which}: no attack that leaks without a defense "
                           f"was also run under {defense}", UNMEASURED, method)
    dacc = s.mean(algo, defense, "accuracy") - s.mean(algo, "none", "accuracy")
    acc = "" if math.isnan(dacc) else f"; accuracy {dacc:+.3f}"
    ok = min(reds) >= threshold and (math.isnan(dacc) or dacc > -0.05)
    return ClaimResult(section, claim, "; ".join(parts) + acc, HOLDS if ok else FAILS, method)


def evaluate_claims(summary: AuditSummary, threat_cells: tuple[dict, ...] = (),
                    setting: str | None = None) -> list[ClaimResult]:
    """Every claim of the seed document that an audit can test, in document order.

    Each row's method says the setting it was measured in: the cross-validated utility runs
    (the audit's model, folds and rounds) unless a claim is only meaningful elsewhere
    (communication is measured on the MLP of the outsider scenarios when they ran with both
    algorithms)."""
    rows = [c(summary) for c in _CLAIMS]
    if setting:
        rows = [ClaimResult(r.section, r.claim, r.measured, r.verdict, f"{r.method}; setting: {setting}")
                for r in rows]
    rows.append(_communication(summary, tuple(threat_cells)))
    from evaluation.verdicts import threat_verdicts

    verdicts = threat_verdicts(tuple(threat_cells), summary) if threat_cells else []
    rows.append(_threat_leakage(
        "3", "FL + DP noise on uploads lowers leakage risk by more than 75%, accuracy stable",
        "dp-local", 0.75, None, summary, verdicts,
        _leakage("3", "FL + DP noise on uploads lowers leakage risk by more than 75%, accuracy "
                 "stable", "dp-local", 0.75, None)))
    rows.append(_threat_leakage(
        "2", "DP lowers model-inversion leakage by more than 40% with under 5% accuracy loss",
        "dp-central", 0.40, ("outsider-attribute",), summary, verdicts,
        _leakage("2", "DP lowers model-inversion leakage by more than 40% with under 5% "
                 "accuracy loss", "dp-central", 0.40, "model-inversion")))
    return sorted(rows, key=lambda r: r.section)
