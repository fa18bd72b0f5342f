"""The accountant's epsilon beside a measured lower bound, for each DP defense of an audit.

An accountant's epsilon is an upper bound that holds only if the code does what the
accounting assumes (clipping before every codec, noise of the claimed size, no shortcut in
the channel).  For every differential-privacy defense the audit trains under (``dp-central``,
``dp-local``, ``secagg+dp``), a *DP audit cell* runs the one-run privacy audit of Steinke,
Nasr and Jagielski (2023, "Privacy auditing with one (1) training run";
:func:`securefed.dp.audit_one_run`) with the defense's own mechanism, clip norm, noise
multiplier (as calibrated for the audit's federation), delta, accountant and number of
rounds.  It reports the lower bound on epsilon that the run proves at 95% confidence beside
the accountant's epsilon for the same run, with its unit and neighbouring relation.

What it shows and what it does not.  A lower bound *above* the accountant's epsilon proves
the implementation leaks more than claimed (a test makes the server add a hundredth of the
noise and sees exactly that).  A lower bound below it is consistent with the claim but does
not prove it tight: one run of ``m`` canaries cannot prove more than about ``log m``.  The
canaries are hospitals holding one Dirac update each; the real hospitals are left out of the
canary run, the auditor's best case.  Threat model of the numbers: the adversary is whoever
sees what the mechanism releases (the released model for central DP, each upload for local
DP, the noisy sum for distributed DP); the trust each mechanism needs is in the upper bound's
description (central DP trusts the server with the exact sum).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from defenses import RunContext, get_defense
from defenses.dp import MECHANISM_OF_DEFENSE
from evaluation.config import AuditConfig
from securefed.errors import SecurefedError

__all__ = ["DpAuditCell", "plan_dp_audit_cells", "run_dp_audit_cell", "dp_audit_rows"]


@dataclass(frozen=True)
class DpAuditCell:
    """The one-run privacy audit of one DP defense of the audit."""

    defense: str
    cell_id: str

    @property
    def label(self) -> str:
        return f"DP audit / {self.defense}"


def plan_dp_audit_cells(config: AuditConfig, *, code: str, utility_defenses: set[str]
                        ) -> list[DpAuditCell]:
    """One cell per DP defense that the audit's utility runs train under (none when
    ``config.dp_audit_canaries`` is 0)."""
    if not config.dp_audit_canaries:
        return []
    out = []
    for d in config.defenses:
        if d not in MECHANISM_OF_DEFENSE or d not in utility_defenses:
            continue
        spec = {"base": config.base_fingerprint(), "code": code, "kind": "dp-audit",
                "defense": d, "defense_params": dict(config.defense_params.get(d, {})),
                "canaries": config.dp_audit_canaries, "rounds": config.rounds,
                "clients_per_round": config.clients_per_round}
        cid = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
        out.append(DpAuditCell(d, cid))
    return out


def run_dp_audit_cell(cell: DpAuditCell, config: AuditConfig, *, num_clients: int
                      ) -> dict[str, Any]:
    """Run the one-run audit of ``cell.defense``; returns its JSON-ready record.

    The canaries' membership and the noise come from the OS CSPRNG (the noise as the defense
    draws it by default), so two audits give different lower bounds from the same settings.
    """
    from securefed.dp import audit_for_strategy
    from securefed.federated import FedAvg

    record: dict[str, Any] = {"cell_id": cell.cell_id, "kind": "dp-audit",
                              "defense": cell.defense,
                              "mechanism": MECHANISM_OF_DEFENSE[cell.defense], "error": None}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        # the mechanism as the utility runs build it (noise multiplier calibrated for this
        # federation and number of rounds where the defense gives a target epsilon)
        defense = get_defense(cell.defense, **dict(config.defense_params.get(cell.defense, {})))
        strategy, _ = defense.build(FedAvg(), RunContext(
            num_clients=num_clients, rounds=config.rounds,
            clients_per_round=config.clients_per_round))
        res = audit_for_strategy(strategy, rounds=config.rounds,
                                 canaries=int(config.dp_audit_canaries))
        if res is None:  # pragma: no cover - every defense of MECHANISM_OF_DEFENSE wraps DP
            raise SecurefedError(f"defense {cell.defense!r} describes no DP mechanism")
        record.update(res.to_dict())
        record["hospitals_in_audit"] = num_clients
    except SecurefedError as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["wall_time"] = time.perf_counter() - t0
    record["cpu_time"] = time.process_time() - c0
    return record


def dp_audit_rows(records: tuple[dict[str, Any], ...] | list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """The rows that ``summary.json`` carries under ``dp_audit`` and the report tabulates."""
    rows = []
    for r in records:
        if r.get("error"):
            rows.append({"defense": r["defense"], "mechanism": r["mechanism"], "error": r["error"]})
            continue
        up = r["upper"]
        rows.append({
            "defense": r["defense"], "mechanism": r["mechanism"],
            "epsilon_upper": r["epsilon_upper"], "epsilon_lower": r["epsilon_lower"],
            "consistent": r["consistent"], "unit": up.get("unit"),
            "relation": up.get("neighbouring"), "delta": r["delta"],
            "accountant": up.get("accountant"), "trust": up.get("trust"),
            "upper_label": up.get("label"), "confidence": r["confidence"],
            "canaries": r["canaries"], "guesses": r["guesses"], "correct": r["correct"],
            "rounds": r["rounds"], "clip_norm": r["clip_norm"],
            "noise_multiplier": r["noise_multiplier"], "method": r["method"],
            "cpu_time": r.get("cpu_time"),
        })
    return rows
