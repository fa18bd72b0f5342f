"""The ``securefed`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from securefed.errors import ConfigurationError, PrivacyBudgetExceeded, SecurefedError

ALGORITHMS = ("fedavg", "fedprox", "fedmedheter", "centralized")


def _cmd_train(args: argparse.Namespace) -> int:
    from securefed.data import Heterogeneity, pima_federation
    from securefed.federated import FedAvg, FedProx, run_federated
    from securefed.federated.centralized import run_centralized
    from securefed.models import ModelSpec

    s = args.heterogeneity
    het = Heterogeneity(quantity_skew=s, covariate_shift=s, label_convention=s, format_shift=s)
    data = pima_federation(seed=args.seed, n_hospitals=args.hospitals, heterogeneity=het)
    spec = ModelSpec(args.model, n_features=data.num_features)
    # --lr unset: 0.1, except for FedMedHeter, whose default belongs to its adaptive rule
    lr = {} if args.lr is None and args.algorithm == "fedmedheter" else {
        "learning_rate": 0.1 if args.lr is None else args.lr}
    common = dict(**lr, local_epochs=args.local_epochs, batch_size=args.batch_size)
    if args.algorithm == "centralized" and args.dp != "none":
        raise ConfigurationError(
            f"--dp {args.dp} applies to federated algorithms; got --algorithm centralized")
    if args.algorithm == "centralized":
        result = run_centralized(data, model=spec, rounds=args.rounds, seed=args.seed,
                                 progress=not args.quiet, **common)
    else:
        if args.algorithm == "fedmedheter":
            from securefed.federated.fedmedheter import FedMedHeter

            strategy = FedMedHeter(**common)
        elif args.algorithm == "fedavg":
            strategy = FedAvg(**common)
        else:
            strategy = FedProx(proximal_mu=args.mu, **common)
        channel = None
        if args.dp != "none":
            strategy, channel = _dp_setup(args, strategy, num_clients=len(data.clients))
        try:
            result = run_federated(data, strategy=strategy, model=spec, rounds=args.rounds,
                                   seed=args.seed, channel=channel, progress=not args.quiet,
                                   record_transcript=False)
        except PrivacyBudgetExceeded as exc:
            from securefed.dp import save_partial_result

            path = save_partial_result(
                exc, Path(args.out) / f"{args.algorithm}-dp-{args.dp}-seed{args.seed}-partial.json")
            print(f"securefed: stopped: {exc}", file=sys.stderr)
            print(path)
            return 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.algorithm if args.dp == "none" else f"{args.algorithm}-dp-{args.dp}"
    path = out / f"{tag}-seed{args.seed}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2))
    f = result.final
    print(f"{args.algorithm}: accuracy {f.test_accuracy:.3f}, AUC {f.test_auc:.3f}, "
          f"uploaded {result.total_bytes_up()} bytes in {len(result.history)} rounds")
    if "epsilon" in f.extra:
        print(f"privacy: epsilon {f.extra['epsilon']:.3f} at delta {f.extra['delta']:g}")
    print(path)
    return 0


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _cmd_audit(args: argparse.Namespace) -> int:
    import dataclasses
    import shlex

    from evaluation import load_config, profile, run_audit, write_report
    from evaluation.report import summary_rows

    if args.list:
        from defenses import defense_names, get_defense
        from evaluation import algorithm_names, attack_names, get_algorithm, get_attack

        print("algorithms:")
        for n in algorithm_names():
            print(f"  {n:24s}{get_algorithm(n).summary}")
        print("defenses:")
        for n in defense_names():
            print(f"  {n:24s}{get_defense(n).summary}")
        print("attacks:")
        for n in attack_names():
            print(f"  {n:24s}{get_attack(n).summary}")
        return 0
    if args.config and args.quick:
        raise ConfigurationError("--quick and --config exclude each other; give one")
    config = load_config(args.config) if args.config else profile("quick" if args.quick else "default")
    overrides = {k: v for k, v in {
        "algorithms": args.algorithms, "defenses": args.defenses, "attacks": args.attacks,
        "folds": args.folds, "rounds": args.rounds, "seed": args.seed,
    }.items() if v is not None}
    if overrides:
        for key in ("algorithm_params", "defense_params", "attack_params"):
            listed = {"algorithm_params": "algorithms", "defense_params": "defenses",
                      "attack_params": "attacks"}[key]
            if listed in overrides:
                kept = {n: p for n, p in getattr(config, key).items() if n in overrides[listed]}
                overrides[key] = kept
        config = dataclasses.replace(config, **overrides)
    out = Path(args.out) if args.out else Path("runs") / f"audit-{config.profile}"
    if not args.quiet:
        print(f"securefed audit: profile '{config.profile}', {config.folds} folds x "
              f"{config.rounds} rounds; algorithms {', '.join(config.algorithms)}; defenses "
              f"{', '.join(config.defenses)}; attacks {', '.join(config.attacks) or '(none)'}",
              file=sys.stderr)
    try:
        results = run_audit(config, out, overwrite=args.overwrite, progress=not args.quiet)
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
    print(f"figures, Markdown, JSON and CSV: {out}")
    print(files.html)
    return 1 if failed else 0


def _dp_setup(args: argparse.Namespace, strategy, *, num_clients: int):
    """Wrap ``strategy`` with the DP mechanism named by ``--dp`` (and its channel)."""
    from securefed.dp import make_dp_strategy, secagg_channel_for

    dp = make_dp_strategy(
        args.dp, strategy, clip_norm=args.clip_norm, noise_multiplier=args.noise_multiplier,
        target_epsilon=args.target_epsilon, delta=args.delta, num_clients=num_clients,
        rounds=args.rounds, secure=args.secure_noise)
    channel = secagg_channel_for(dp) if args.dp == "distributed" else None
    return dp, channel


def _cmd_keys_ckks(args: argparse.Namespace) -> int:
    from securefed.he.keys import CKKSKeyHolder, CKKSParameters, save_public_context

    params = CKKSParameters.training() if args.preset == "training" else CKKSParameters.aggregation()
    holder = CKKSKeyHolder.generate(params, galois_keys=args.preset == "training")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    secret = holder.save(out / "ckks-secret.key")
    public = save_public_context(holder.public_context(), out / "ckks-public.key")
    print(f"CKKS {args.preset} keys, N={params.poly_modulus_degree}, "
          f"moduli {list(params.coeff_mod_bit_sizes)} bits, scale 2^{params.scale_bits}, "
          f"key id {holder.key_id.hex()[:16]}")
    print(f"{public}  ({public.stat().st_size} bytes): give to the server")
    print(f"{secret}  ({secret.stat().st_size} bytes, mode 0600): give to every hospital, "
          "never to the server")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="securefed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one algorithm on the bundled Pima hospitals")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="fedavg")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", choices=("logreg", "mlp"), default="logreg")
    p.add_argument("--hospitals", type=int, default=3, help="number of hospitals (default 3)")
    p.add_argument("--heterogeneity", type=float, default=0.5,
                   help="strength in [0, 1] of every heterogeneity knob (0 = IID; default 0.5)")
    p.add_argument("--lr", type=float, default=None,
                   help="local learning rate (default 0.1; FedMedHeter: its own default)")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mu", type=float, default=0.01, help="FedProx proximal coefficient")
    p.add_argument("--out", default="runs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    dp = p.add_argument_group("differential privacy (client level; see docs/dp.md)")
    dp.add_argument("--dp", choices=("none", "central", "local", "distributed"), default="none")
    dp.add_argument("--clip-norm", type=float, default=1.0, help="L2 bound C on each update")
    dp.add_argument("--noise-multiplier", type=float, default=None,
                    help="z = noise std / C (default: calibrated from --target-epsilon)")
    dp.add_argument("--target-epsilon", type=float, default=None,
                    help="privacy budget; the run stops before exceeding it (partial result saved)")
    dp.add_argument("--delta", type=float, default=1e-5)
    dp.add_argument("--secure-noise", action="store_true",
                    help="draw DP noise from the OS CSPRNG (not reproducible from --seed)")
    p.set_defaults(func=_cmd_train)

    a = sub.add_parser(
        "audit", help="the main job: algorithms x defenses x attacks, cross-validated, with a report",
        description="Train every algorithm under every defense on the bundled Pima hospitals "
                    "with k-fold cross-validation, attack what each party observes, test "
                    "significance, and write an HTML/Markdown/JSON/CSV report. Results are "
                    "saved cell by cell; re-running the same command resumes.",
    )
    a.add_argument("--quick", action="store_true", help="the quick profile (about 30 s)")
    a.add_argument("--config", help="a TOML file describing a custom audit matrix")
    a.add_argument("--out", help="output directory (default: runs/audit-PROFILE)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace another audit's results in --out instead of refusing")
    a.add_argument("--algorithms", type=_names, help="comma-separated algorithm names")
    a.add_argument("--defenses", type=_names, help="comma-separated defense names")
    a.add_argument("--attacks", type=_names, help="comma-separated attack names")
    a.add_argument("--folds", type=int, help="cross-validation folds")
    a.add_argument("--rounds", type=int, help="training rounds per run")
    a.add_argument("--seed", type=int, help="root seed")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.add_argument("--list", action="store_true",
                   help="list the available algorithms, defenses and attacks, then exit")
    a.set_defaults(func=_cmd_audit)

    k = sub.add_parser("keys", help="generate key material")
    ksub = k.add_subparsers(dest="scheme", required=True)
    kc = ksub.add_parser("ckks", help="CKKS keys: a public context for the server, a secret "
                         "context for the hospitals")
    kc.add_argument("--out", required=True, help="directory for ckks-public.key and ckks-secret.key")
    kc.add_argument("--preset", choices=("aggregation", "training"), default="aggregation",
                    help="aggregation: depth 0, N=4096; training: depth 4, N=8192, rotation keys")
    kc.set_defaults(func=_cmd_keys_ckks)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[2:] if argv is None else argv[1:])
    try:
        return int(args.func(args))
    except SecurefedError as exc:
        print(f"securefed: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
