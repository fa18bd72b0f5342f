"""Evaluation: the audit runner, cross-validation, statistics, figures and reports."""

from evaluation import audit_attacks as _audit_attacks  # noqa: F401  (registers the attacks)
from evaluation.algorithms import (
    Algorithm,
    HyperParams,
    algorithm_names,
    get_algorithm,
    register_algorithm,
)
from evaluation.config import PROFILES, AuditConfig, load_config, profile
from evaluation.cv import Fold, stratified_hospital_folds
from evaluation.privacy import (
    AttackContext,
    AttackScore,
    AuditAttack,
    audit_attack_names,
    get_audit_attack,
    register_audit_attack,
)
from evaluation.report import ReportFiles, write_report
from evaluation.runner import AuditResults, Cell, load_results, plan_cells, run_audit
from evaluation.stats import Comparison, compare
from evaluation.summary import AuditSummary, summarize

__all__ = [
    "Algorithm", "HyperParams", "algorithm_names", "get_algorithm", "register_algorithm",
    "PROFILES", "AuditConfig", "load_config", "profile",
    "Fold", "stratified_hospital_folds",
    "AttackContext", "AttackScore", "AuditAttack", "audit_attack_names", "get_audit_attack",
    "register_audit_attack",
    "ReportFiles", "write_report",
    "AuditResults", "Cell", "load_results", "plan_cells", "run_audit",
    "Comparison", "compare",
    "AuditSummary", "summarize",
]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # the older names of the audit-attack registry (see evaluation.privacy)
    from evaluation import privacy

    return getattr(privacy, name)
