"""The ``securefed`` command line: the core commands (``train``, ``keys``, ``deploy``).

The installed ``securefed`` program adds the commands of the upper layers (``audit``, from
:mod:`evaluation.cli`) to this parser; nothing here imports them, so the core stays usable on
its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from securefed.errors import ConfigurationError, PrivacyBudgetExceeded, SecurefedError


def _cmd_train(args: argparse.Namespace) -> int:
    from securefed.data import Heterogeneity, pima_federation
    from securefed.federated import run_federated
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
    if args.algorithm == "centralized" and args.resume is not None:
        raise ConfigurationError("--resume continues federated training; got --algorithm centralized")
    if args.algorithm == "centralized" and args.dp != "none":
        raise ConfigurationError(
            f"--dp {args.dp} applies to federated algorithms; got --algorithm centralized")
    if args.algorithm == "centralized":
        result = run_centralized(data, model=spec, rounds=args.rounds, seed=args.seed,
                                 progress=not args.quiet, **common)
    else:
        from securefed.federated.registry import get_strategy

        extra = {"proximal_mu": args.mu} if args.algorithm == "fedprox" else {}
        strategy = get_strategy(args.algorithm, **common, **extra)
        channel = None
        if args.dp != "none":
            strategy, channel = _dp_setup(args, strategy)
        initial, ledger = _resume(args, spec)
        try:
            result = run_federated(data, strategy=strategy, model=spec, rounds=args.rounds,
                                   seed=args.seed, channel=channel, progress=not args.quiet,
                                   record_transcript=False, initial_params=initial,
                                   privacy_ledger=ledger)
        except PrivacyBudgetExceeded as exc:
            from securefed.dp import save_partial_result

            path = save_partial_result(
                exc, Path(args.out) / f"{args.algorithm}-dp-{args.dp}-seed{args.seed}-partial.json")
            _mark_privacy(path)
            print(f"securefed: stopped: {exc}", file=sys.stderr)
            print(path)
            return 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.algorithm if args.dp == "none" else f"{args.algorithm}-dp-{args.dp}"
    path = out / f"{tag}-seed{args.seed}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2))
    privacy = _mark_privacy(path)
    f = result.final
    print(f"{args.algorithm}: accuracy {f.test_accuracy:.3f}, AUC {f.test_auc:.3f}, "
          f"uploaded {result.total_bytes_up()} bytes in {len(result.history)} rounds")
    if privacy is not None:
        print(f"privacy per hospital: {privacy['client']['label']}")
        print(f"privacy per patient:  {privacy['record']['label']}")
        for s in privacy["collusion"]:
            print(f"if {s['colluding_hospitals']} hospital(s) collude with the server: "
                  f"{s['label']}")
        if privacy["collusion_note"]:
            print(f"collusion: {privacy['collusion_note']}")
    print(path)
    return 0


def _mark_privacy(path: Path) -> dict | None:
    """Add the run's fully described epsilons (``"privacy"``) to the JSON at ``path`` and,
    for reproducible noise, the top-level warning that the run is not private."""
    body = json.loads(path.read_text())
    if body.get("privacy_ledger") is None:
        return None
    from securefed.dp import NOT_PRIVATE, privacy_report

    report = privacy_report(body)
    assert report is not None
    body["privacy"] = report.to_dict()
    if not report.private:
        body["warning"] = NOT_PRIVATE
    path.write_text(json.dumps(body, indent=2))
    return body["privacy"]


def _resume(args: argparse.Namespace, spec) -> tuple:
    """``--resume FILE``: the parameters and privacy ledger saved in a result JSON."""
    if args.resume is None:
        return None, None
    import numpy as np

    try:
        saved = json.loads(Path(args.resume).read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"--resume file {args.resume!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--resume file {args.resume!r} is not JSON: {exc}") from exc
    params = np.asarray(saved.get("final_params", ()), dtype=np.float64)
    if params.shape != (spec.num_params(),):
        raise ConfigurationError(
            f"--resume file {args.resume!r} holds {params.shape[0]} parameters, the model "
            f"{spec.kind!r} has {spec.num_params()}")
    return params, saved.get("privacy_ledger")


def _dp_setup(args: argparse.Namespace, strategy):
    """Wrap ``strategy`` with the DP mechanism named by ``--dp`` (and its channel).  The
    number of hospitals is taken from the data by the engine."""
    from securefed.dp import make_dp_strategy
    from securefed.secagg import secagg_channel_for

    if args.secure_noise:
        print("securefed: --secure-noise is the default now and can be dropped",
              file=sys.stderr)
    dp = make_dp_strategy(
        args.dp, strategy, clip_norm=args.clip_norm, noise_multiplier=args.noise_multiplier,
        target_epsilon=args.target_epsilon, delta=args.delta, rounds=args.rounds,
        reproducible_noise=args.reproducible_noise)
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


def build_parser(
    extensions: Sequence[Callable[[argparse._SubParsersAction], None]] = (),
) -> argparse.ArgumentParser:
    """The parser of the core commands; each of ``extensions`` adds commands of its own."""
    parser = argparse.ArgumentParser(
        prog="securefed",
        description="securefed: privacy-preserving federated learning for medical records.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one algorithm on the bundled Pima hospitals")
    from securefed.federated.registry import strategy_names

    p.add_argument("--algorithm", choices=(*strategy_names(), "centralized"), default="fedavg")
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
    dp.add_argument("--reproducible-noise", action="store_true",
                    help="draw DP noise from a stream reproducible from --seed: NOT PRIVATE "
                         "(anyone with the seed recomputes the noise); the result JSON is "
                         "marked so.  Default: noise from the OS CSPRNG")
    dp.add_argument("--secure-noise", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resume", default=None, metavar="RESULT_JSON",
                   help="continue training from the parameters and privacy ledger saved in a "
                        "result JSON of this command")
    p.set_defaults(func=_cmd_train)

    k = sub.add_parser("keys", help="generate key material")
    ksub = k.add_subparsers(dest="scheme", required=True)
    kc = ksub.add_parser("ckks", help="CKKS keys: a public context for the server, a secret "
                         "context for the hospitals")
    kc.add_argument("--out", required=True, help="directory for ckks-public.key and ckks-secret.key")
    kc.add_argument("--preset", choices=("aggregation", "training"), default="aggregation",
                    help="aggregation: depth 0, N=4096; training: depth 4, N=8192, rotation keys")
    kc.set_defaults(func=_cmd_keys_ckks)
    from securefed.flower.deploy import add_deploy_commands

    add_deploy_commands(sub)
    for extend in extensions:
        extend(sub)
    return parser


def main(argv: list[str] | None = None, *, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command; exit status 2 for a :class:`SecurefedError` (bad input or settings)."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[2:] if argv is None else argv[1:])
    try:
        return int(args.func(args))
    except SecurefedError as exc:
        print(f"securefed: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
