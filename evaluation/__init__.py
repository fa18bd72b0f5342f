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
    attack_names,
    get_attack,
    register_attack,
)
from evaluation.report import ReportFiles, write_report
from evaluation.runner import AuditResults, Cell, load_results, plan_cells, run_audit
from evaluation.stats import Comparison, compare
from evaluation.summary import AuditSummary, summarize

__all__ = [
    "Algorithm", "HyperParams", "algorithm_names", "get_algorithm", "register_algorithm",
    "PROFILES", "AuditConfig", "load_config", "profile",
    "Fold", "stratified_hospital_folds",
    "AttackContext", "AttackScore", "AuditAttack", "attack_names", "get_attack", "register_attack",
    "ReportFiles", "write_report",
    "AuditResults", "Cell", "load_results", "plan_cells", "run_audit",
    "Comparison", "compare",
    "AuditSummary", "summarize",
]
