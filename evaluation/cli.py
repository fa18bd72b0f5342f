"""The ``audit`` command: parses its options and hands them to the runner.

The installed ``securefed`` program is :func:`main` here: the core commands of
:mod:`securefed.cli` plus ``audit``, which belongs to this layer because it runs attacks and
defenses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from securefed import cli as core_cli
from securefed.errors import ConfigurationError

__all__ = ["build_parser", "main"]


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _cmd_audit(args: argparse.Namespace) -> int:
    import dataclasses
    import shlex

    from evaluation import load_config, profile, run_audit, write_report
    from evaluation.report import summary_rows

    if args.list:
        from defenses import defense_names, get_defense
        from evaluation import algorithm_names, audit_attack_names, get_algorithm, get_audit_attack

        print("algorithms:")
        for n in algorithm_names():
            print(f"  {n:24s}{get_algorithm(n).summary}")
        print("defenses:")
        for n in defense_names():
            print(f"  {n:24s}{get_defense(n).summary}")
        print("attacks (per utility cell):")
        for n in audit_attack_names():
            print(f"  {n:24s}{get_audit_attack(n).summary}")
        from evaluation.threats import get_threat, threat_names

        print("threats:")
        for n in threat_names():
            t = get_threat(n)
            print(f"  {n:24s}{t.adversary}: {t.setting}")
        return 0
    if args.config and args.quick:
        raise ConfigurationError("--quick and --config exclude each other; give one")
    config = load_config(args.config) if args.config else profile("quick" if args.quick else "default")
    overrides = {k: v for k, v in {
        "algorithms": args.algorithms, "defenses": args.defenses, "attacks": args.attacks,
        "threats": args.threats, "folds": args.folds, "rounds": args.rounds, "seed": args.seed,
        "replicates": args.replicates, "data": args.data,
    }.items() if v is not None}
    if overrides:
        for key in ("algorithm_params", "attack_params", "threat_params"):
            listed = {"algorithm_params": "algorithms", "attack_params": "attacks",
                      "threat_params": "threats"}[key]
            if listed in overrides:
                kept = {n: p for n, p in getattr(config, key).items() if n in overrides[listed]}
                overrides[key] = kept
        config = dataclasses.replace(config, **overrides)
    name = f"audit-{config.profile}" + (f"-{Path(config.data).resolve().parent.name}"
                                        if config.data and Path(config.data).name == "federation.toml"
                                        else f"-{Path(config.data).stem}" if config.data else "")
    out = Path(args.out) if args.out else Path("runs") / name
    if not args.quiet:
        print(f"securefed audit: profile '{config.profile}', {config.folds} folds x "
              f"{config.rounds} rounds; algorithms {', '.join(config.algorithms)}; defenses "
              f"{', '.join(config.defenses)}; threats {', '.join(config.threats) or '(none)'} "
              f"with {', '.join(config.threat_algorithms)}", file=sys.stderr)
    try:
        results = run_audit(config, out, overwrite=args.overwrite, progress=not args.quiet,
                            workers=args.workers)
    except KeyboardInterrupt:
        from evaluation.runner import CELLS

        store = out / CELLS
        saved = len(store.read_text().splitlines()) if store.exists() else 0
        print(f"\ninterrupted: {saved} finished cell(s) are saved in {store}; run the same "
              "command again to resume", file=sys.stderr)
        return 130
    if results.resumed and not args.quiet:
        print(f"reused {results.resumed} finished cell(s) from {out}", file=sys.stderr)
    argv = ["securefed", "audit", *(args.argv or [])]
    files = write_report(results, command=" ".join(shlex.quote(a) for a in argv))
    if files.threats:
        from evaluation.report import _gain_ci

        print("verdicts (leaks: the gain's 95% interval is above 0):")
        vw = max(len(f"{r['threat']}/{r['defense']}/{r['algorithm']}") for r in files.threats)
        for r in files.threats:
            name = f"{r['threat']}/{r['defense']}/{r['algorithm']}"
            word = "LEAKS" if r["leaks"] else ("incon" if r.get("inconclusive") else "no   ")
            print(f"  {name.ljust(vw)}  {word}  "
                  f"{str(r.get('metric')):<19s}{_gain_ci(r)}")
    head, rows = summary_rows(files.summary)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    held = sum(c.verdict == "holds" for c in files.claims)
    print(f"seed claims: {held} hold, "
          f"{sum(c.verdict == 'does not hold' for c in files.claims)} do not hold, "
          f"{sum(c.verdict == 'not measured' for c in files.claims)} not measured")
    failed = len(files.summary.failed)
    if failed:
        print(f"{failed} cell(s) failed; see the report's 'Failed cells'", file=sys.stderr)
    print(f"audit time: {results.elapsed:.1f} s wall, {results.cpu_time:.1f} s CPU "
          f"({results.resumed} cell(s) reused)", file=sys.stderr)
    print(f"figures, Markdown, JSON and CSV: {out}")
    print(files.html)
    return 1 if failed else 0



def add_audit_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``audit`` on the ``securefed`` parser's subcommands."""
    a = subparsers.add_parser(
        "audit", help="the main job: algorithms x defenses x attacks, cross-validated, with a report",
        description="On the bundled Pima hospitals or your own (--data FEDERATION.toml), run "
                    "every threat scenario (curious server, malicious server, curious "
                    "peer, outsider membership and attribute inference) under the defenses, "
                    "give a verdict per threat, defense and algorithm, train every algorithm "
                    "under every defense with k-fold cross-validation for utility and cost, and "
                    "write an HTML/Markdown/JSON/CSV report. Results are saved cell by cell, "
                    "keyed by the configuration and the code; re-running the same command "
                    "resumes.",
    )
    a.add_argument("--quick", action="store_true", help="the quick profile (about 30 s)")
    a.add_argument("--config", help="a TOML file describing a custom audit matrix")
    a.add_argument("--data", metavar="FEDERATION.toml",
                   help="audit your own hospitals: a federation file naming the schema and each "
                        "hospital's training (and test) CSV (see docs/data.md); default: the "
                        "bundled Pima split")
    a.add_argument("--out", help="output directory (default: runs/audit-PROFILE, plus the "
                                 "federation's name with --data)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace another audit's results in --out instead of refusing")
    a.add_argument("--algorithms", type=_names, help="comma-separated algorithm names")
    a.add_argument("--defenses", type=_names, help="comma-separated defense names")
    a.add_argument("--attacks", type=_names, help="comma-separated per-cell attack names")
    a.add_argument("--threats", type=_names, help="comma-separated threat scenario names")
    a.add_argument("--replicates", type=int, help="seeds per threat scenario")
    a.add_argument("--folds", type=int, help="cross-validation folds")
    a.add_argument("--rounds", type=int, help="training rounds per run")
    a.add_argument("--seed", type=int, help="root seed")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.add_argument("--workers", type=int,
                   help="processes that run cells side by side (default: min(2, CPUs))")
    a.add_argument("--list", action="store_true",
                   help="list the available algorithms, defenses and attacks, then exit")
    a.set_defaults(func=_cmd_audit)



def build_parser() -> argparse.ArgumentParser:
    """The full ``securefed`` parser: the core commands and ``audit``."""
    return core_cli.build_parser(extensions=(add_audit_command,))


def main(argv: list[str] | None = None) -> int:
    return core_cli.main(argv, parser=build_parser())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
