"""Evaluation: the audit runner, cross-validation, statistics, figures and reports.

The public names are imported on first use (the audit's worker processes then do not load
the report's plotting stack); the audit attacks register themselves on import.
"""

from evaluation import audit_attacks as _audit_attacks  # noqa: F401  (registers the attacks)
from securefed._compat import lazy

_EXPORTS = {
    **dict.fromkeys(("Algorithm", "HyperParams", "algorithm_names", "get_algorithm",
                     "register_algorithm"), "evaluation.algorithms"),
    **dict.fromkeys(("PROFILES", "AuditConfig", "load_config", "profile"), "evaluation.config"),
    **dict.fromkeys(("Fold", "stratified_hospital_folds"), "evaluation.cv"),
    **dict.fromkeys(("AttackContext", "AttackScore", "AuditAttack", "audit_attack_names",
                     "get_audit_attack", "register_audit_attack",
                     # older names of the audit-attack registry (deprecated, see evaluation.privacy)
                     "register_attack", "attack_names", "get_attack"), "evaluation.privacy"),
    **dict.fromkeys(("ReportFiles", "write_report"), "evaluation.report"),
    **dict.fromkeys(("AuditResults", "Cell", "load_results", "plan_cells", "run_audit"),
                    "evaluation.runner"),
    **dict.fromkeys(("Comparison", "compare"), "evaluation.stats"),
    **dict.fromkeys(("AuditSummary", "summarize"), "evaluation.summary"),
}

__all__ = [n for n in _EXPORTS if n not in ("register_attack", "attack_names", "get_attack")]

__getattr__, __dir__ = lazy("evaluation", _EXPORTS)
