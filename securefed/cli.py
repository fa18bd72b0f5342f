"""The ``securefed`` command line: the core commands (``train``, ``keys``, ``deploy``).

The installed ``securefed`` program adds the commands of the upper layers (``audit``, from
:mod:`evaluation.cli`) to this parser; nothing here imports them, so the core stays usable on
its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from securefed.errors import ConfigurationError, PrivacyBudgetExceeded, SecurefedError


def _cmd_train(args: argparse.Namespace) -> int:
    """``securefed train``: check everything, load the data, refuse a conflicting result
    file, train, then write the result atomically."""
    from securefed.federated.train import CENTRALIZED, run_algorithm
    from securefed.models import ModelSpec

    _check_train_args(args)
    data_info, prepared = _load_training_data(args)
    data = prepared.arrays
    spec = ModelSpec(args.model, n_features=data.num_features)
    settings = _run_settings(args, data_info)
    tag = args.algorithm if args.dp == "none" else f"{args.algorithm}-dp-{args.dp}"
    prefix = f"{data_info['name']}-" if args.data is not None else ""
    path = Path(args.out) / f"{prefix}{tag}-seed{args.seed}.json"
    _refuse_conflicting_result(path, settings, overwrite=args.overwrite)

    hyper = _hyper_parameters(args)
    if args.algorithm == CENTRALIZED:
        result = run_algorithm(data, CENTRALIZED, model=spec, rounds=args.rounds, seed=args.seed,
                               progress=not args.quiet, **hyper)
    else:
        from securefed.federated.registry import get_strategy

        strategy = get_strategy(args.algorithm, **hyper)
        channel = None
        if args.dp != "none":
            strategy, channel = _dp_setup(args, strategy)
        if args.secure_aggregation:
            from securefed.secagg import SecAggChannel

            channel = SecAggChannel(max_weight=args.secagg_max_weight)
        initial, ledger = _resume(args, spec)
        try:
            result = run_algorithm(data, strategy, model=spec, rounds=args.rounds, seed=args.seed,
                                   channel=channel, progress=not args.quiet,
                                   initial_params=initial, privacy_ledger=ledger)
        except PrivacyBudgetExceeded as exc:
            from securefed.dp import save_partial_result

            partial = save_partial_result(
                exc, Path(args.out) / f"{prefix}{tag}-seed{args.seed}-partial.json")
            _mark_privacy(partial)
            print(f"securefed: stopped: {exc}", file=sys.stderr)
            print(partial)
            return 3
    doc = _result_document(args, result, prepared, data_info, settings)
    privacy = _add_privacy(doc)
    write_json_atomic(path, doc)
    f = result.final
    print(f"{args.algorithm}: accuracy {f.test_accuracy:.3f}, AUC {f.test_auc:.3f}, "
          f"uploaded {result.total_bytes_up()} bytes in {len(result.history)} rounds")
    for name, m in f.per_hospital.items():
        print(f"  {name}: accuracy {m['accuracy']:.3f} on its {int(m['n'])} test patients")
    from securefed.federated.personal import hospital_summary

    hs = hospital_summary(result)
    if hs is not None:
        used = "their own models" if any(hs.personal.values()) else "the global model"
        print(f"per hospital ({used}, on their own test patients): mean accuracy "
              f"{hs.mean_accuracy:.3f}, worst {hs.worst_accuracy:.3f} ({hs.worst_hospital})")
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


def _add_privacy(body: dict) -> dict | None:
    """Add the run's fully described epsilons (``"privacy"``) to a result document and, for
    reproducible noise, the top-level warning that the run is not private."""
    if body.get("privacy_ledger") is None:
        return None
    from securefed.dp import NOT_PRIVATE, privacy_report

    report = privacy_report(body)
    assert report is not None
    body["privacy"] = report.to_dict()
    if not report.private:
        body["warning"] = NOT_PRIVATE
    return body["privacy"]


def _mark_privacy(path: Path) -> dict | None:
    """:func:`_add_privacy` for a result already written (a partial result), rewritten atomically."""
    body = json.loads(path.read_text())
    privacy = _add_privacy(body)
    if privacy is not None:
        write_json_atomic(path, body)
    return privacy


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


def _check_train_args(args: argparse.Namespace) -> None:
    """Settings that contradict each other are refused before any work is done."""
    if args.rounds < 1:
        raise ConfigurationError(f"--rounds must be >= 1, got {args.rounds}")
    if args.algorithm == "centralized" and args.resume is not None:
        raise ConfigurationError("--resume continues federated training; got --algorithm centralized")
    if args.algorithm == "centralized" and args.dp != "none":
        raise ConfigurationError(
            f"--dp {args.dp} applies to federated algorithms; got --algorithm centralized")
    if args.algorithm == "centralized" and args.secure_aggregation:
        raise ConfigurationError(
            "--secure-aggregation applies to federated algorithms; got --algorithm centralized")
    if args.secure_aggregation and args.dp == "distributed":
        raise ConfigurationError(
            "--dp distributed already aggregates under secure aggregation (with its own weight "
            "bound of 1); drop --secure-aggregation")
    if args.data is not None:
        given = [f"--{n}" for n in ("hospitals", "heterogeneity") if getattr(args, n) is not None]
        if given:
            raise ConfigurationError(
                f"{' and '.join(given)} shape the bundled Pima split; with --data the hospitals "
                f"are those of {args.data}")
    elif args.encoding is not None:
        raise ConfigurationError("--encoding applies to the CSV files of --data FEDERATION.toml")


def _load_training_data(args: argparse.Namespace):
    """``(facts about the data for the result, PreparedFederation)``."""
    if args.data is None:
        from securefed.data import Heterogeneity, pima_hospitals

        s = 0.5 if args.heterogeneity is None else args.heterogeneity
        het = Heterogeneity(quantity_skew=s, covariate_shift=s, label_convention=s, format_shift=s)
        n = 3 if args.hospitals is None else args.hospitals
        ds = pima_hospitals(seed=args.seed, n_hospitals=n, heterogeneity=het)
        info = {"name": "pima", "source": "bundled Pima.tr split into simulated hospitals; "
                "test set Pima.te", "hospitals": n, "heterogeneity": s}
    else:
        from securefed.data import FederationFile, load_federation

        fed = FederationFile.from_toml(args.data, encoding=args.encoding)
        ds = load_federation(args.data, encoding=args.encoding)
        info = {"name": fed.name, "federation": str(fed.path.resolve()),
                "files": fed.fingerprint()}
    prepared = ds.prepared()
    if args.data is None:  # each Pima hospital is also judged on its own share of Pima.te
        from dataclasses import replace

        from securefed.data.pima import attach_pima_hospital_tests

        prepared = replace(prepared, arrays=attach_pima_hospital_tests(ds, prepared.arrays))
    info["description"] = prepared.arrays.description
    info["hospitals_detail"] = [
        {"name": c.name, "train_patients": c.num_examples,
         "test_patients": 0 if c.y_test is None else int(len(c.y_test))}
        for c in prepared.arrays.clients]
    info["test_patients"] = int(len(prepared.arrays.y_test))
    return info, prepared


def _hyper_parameters(args: argparse.Namespace) -> dict:
    """Hyper-parameters given on the command line; those not given keep the library default
    of the algorithm (FedMedHeter's tuned ones, docs/fedmedheter.md)."""
    hyper = {}
    if args.lr is not None:
        hyper["learning_rate"] = args.lr
    if args.local_epochs is not None:
        hyper["local_epochs"] = args.local_epochs
    if args.batch_size is not None:
        hyper["batch_size"] = None if args.batch_size == 0 else args.batch_size
    if args.algorithm == "fedprox" and args.mu is not None:
        hyper["proximal_mu"] = args.mu
    elif args.mu is not None:
        raise ConfigurationError(f"--mu is FedProx's coefficient; got --algorithm {args.algorithm}")
    return hyper


def _run_settings(args: argparse.Namespace, data_info: dict) -> dict:
    """Everything that decides the result; a stored result with other settings is not
    replaced silently."""
    settings = {
        "algorithm": args.algorithm, "model": args.model, "rounds": args.rounds, "seed": args.seed,
        "learning_rate": args.lr, "local_epochs": args.local_epochs, "batch_size": args.batch_size,
        "proximal_mu": args.mu, "dp": args.dp, "secure_aggregation": args.secure_aggregation,
        "secagg_max_weight": args.secagg_max_weight if args.secure_aggregation else None,
        "data": {k: v for k, v in data_info.items() if k in ("name", "files", "hospitals",
                                                               "heterogeneity")},
    }
    if args.dp != "none":
        settings.update(clip_norm=args.clip_norm, noise_multiplier=args.noise_multiplier,
                        target_epsilon=args.target_epsilon, delta=args.delta,
                        reproducible_noise=args.reproducible_noise)
    if args.resume is not None:
        import hashlib

        try:
            digest = hashlib.sha256(Path(args.resume).read_bytes()).hexdigest()
        except OSError:
            digest = "unreadable"
        settings["resume"] = {"file": str(args.resume), "sha256": digest}
    return settings


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _refuse_conflicting_result(path: Path, settings: dict, *, overwrite: bool) -> None:
    """A result file made with other settings is replaced only with ``--overwrite``."""
    if overwrite or not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        old = None
    hint = "pass --overwrite to replace it, or choose another --out"
    if not isinstance(old, dict) or not isinstance(old.get("run_settings"), dict):
        raise ConfigurationError(
            f"{path} exists and records no settings to compare with (not a result of this "
            f"securefed version); {hint}")
    before, now = _flatten(old["run_settings"]), _flatten(json.loads(json.dumps(settings)))
    diffs = [f"{k}: {before.get(k)!r} there, {now.get(k)!r} now"
             for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise ConfigurationError(f"{path} holds a result made with other settings ({shown}); {hint}")


def _result_document(args: argparse.Namespace, result, prepared, data_info: dict,
                     settings: dict) -> dict:
    """The result JSON: the run, its ``final`` figures, and what applying the model needs."""
    import platform
    from importlib import metadata

    import numpy as np

    f = result.final
    doc = result.to_dict()
    doc["final"] = {
        "test_accuracy": f.test_accuracy, "test_auc": f.test_auc, "test_loss": f.test_loss,
        "test_patients": data_info["test_patients"],
        "per_hospital": {name: {"accuracy": m["accuracy"], "auc": m["auc"], "loss": m["loss"],
                                "test_patients": int(m["n"])}
                         for name, m in f.per_hospital.items()},
        **{k: v for k, v in f.extra.items() if k in ("epsilon", "delta")},
    }
    doc["dataset"] = {k: v for k, v in data_info.items() if k != "hospitals_detail"}
    doc["dataset"]["hospitals"] = data_info["hospitals_detail"]
    pre = prepared.preprocessing()
    doc["feature_names"] = list(prepared.arrays.feature_names)
    doc["standardisation"] = {
        "mean": [i.get("mean") for i in pre["inputs"]],
        "sd": [i.get("sd") for i in pre["inputs"]],
        **pre,
    }
    if result.model.kind == "logreg":
        d = prepared.arrays.num_features
        params = np.asarray(result.final_params)
        doc["logistic_regression"] = {
            "intercept": float(params[d]),
            "coefficients": dict(zip(doc["feature_names"], map(float, params[:d]), strict=True)),
            "rule": "P(target = positive) = 1 / (1 + exp(-(intercept + sum_j coefficient_j * "
                    "x_j))), x the standardised inputs in the order of feature_names",
        }
    doc["run_settings"] = settings
    try:
        own = metadata.version("securefed")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree only
        own = "unknown (not installed)"
    versions = {"securefed": own, "python": platform.python_version()}
    for mod in ("numpy", "pandas", "torch"):
        m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "unknown")
    doc["versions"] = versions
    doc["command"] = shlex.join(["securefed", "train", *args.argv])
    return doc


def write_json_atomic(path: Path, doc: dict) -> None:
    """Write ``doc`` to ``path`` through a temporary file in the same directory and an
    atomic ``os.replace``: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would (mkstemp makes it 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    print(f"{public}  ({public.stat().st_size} bytes): give to the server and to every hospital")
    print(f"{secret}  ({secret.stat().st_size} bytes, mode 0600): keep at the key authority "
          "only, never to the server or the hospitals")
    return 0


def _cmd_keys_identity(args: argparse.Namespace) -> int:
    from securefed.identity import Roster, write_identity_files

    names = [h.strip() for h in str(args.hospitals).split(",") if h.strip()]
    if not names:
        raise ConfigurationError(f"--hospitals must list at least one name, got {args.hospitals!r}")
    roster_path, keys = write_identity_files(names, args.out)
    roster = Roster.load(roster_path)
    print(f"identity keys for {len(names)} hospitals (Ed25519 signing, X25519 agreement)")
    print(f"{roster_path}: the roster; give it to every hospital and the server, and have each "
          f"hospital check its SHA-256 fingerprint out of band:")
    print(f"  {roster.fingerprint()}")
    for name, path in keys.items():
        print(f"{path}  (client {names.index(name)}, mode 0600): give to "
              f"hospital {name!r} only")
    return 0


def build_parser(
    extensions: Sequence[Callable[[argparse._SubParsersAction], None]] = (),
) -> argparse.ArgumentParser:
    """The parser of the core commands; each of ``extensions`` adds commands of its own."""
    parser = argparse.ArgumentParser(
        prog="securefed",
        description="securefed: privacy-preserving federated learning for medical records.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one algorithm on your own hospitals (--data) or "
                       "the bundled Pima hospitals")
    from securefed.federated.train import algorithm_names

    p.add_argument("--data", metavar="FEDERATION.toml", default=None,
                   help="a federation file naming the schema and each hospital's train and test "
                        "CSV files (docs/data.md); default: the bundled Pima split")
    p.add_argument("--encoding", default=None,
                   help="text encoding of the CSV files whose hospital names none in the "
                        "federation file (default: the file's, else utf-8), e.g. cp1252")
    p.add_argument("--algorithm", choices=algorithm_names(), default="fedavg")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", choices=("logreg", "mlp"), default="logreg")
    p.add_argument("--hospitals", type=int, default=None,
                   help="Pima only: number of hospitals (default 3)")
    p.add_argument("--heterogeneity", type=float, default=None,
                   help="Pima only: strength in [0, 1] of every heterogeneity knob (0 = IID; "
                        "default 0.5)")
    p.add_argument("--lr", type=float, default=None,
                   help="local learning rate (default: the algorithm's; 0.1 for fedavg, fedprox "
                        "and centralized, FedMedHeter's tuned default)")
    p.add_argument("--local-epochs", type=int, default=None,
                   help="local epochs per round (default: the algorithm's, 1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="mini-batch size, 0 for full batch (default: the algorithm's, 16)")
    p.add_argument("--mu", type=float, default=None,
                   help="FedProx proximal coefficient (default 0.01)")
    p.add_argument("--out", default="runs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a stored result made with other settings (default: refuse)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    sa = p.add_argument_group("secure aggregation (docs/secure-aggregation.md)")
    sa.add_argument("--secure-aggregation", action="store_true",
                    help="aggregate through pairwise-masking secure aggregation")
    sa.add_argument("--secagg-max-weight", type=float, default=10_000.0,
                    help="declared bound on a hospital's aggregation weight (default 10000); "
                         "checked for every hospital before training")
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
    kc = ksub.add_parser("ckks", help="CKKS keys: a public context for the server and the "
                         "hospitals, a secret context for the key authority")
    kc.add_argument("--out", required=True, help="directory for ckks-public.key and ckks-secret.key")
    kc.add_argument("--preset", choices=("aggregation", "training"), default="aggregation",
                    help="aggregation: depth 0, N=4096; training: depth 4, N=8192, rotation keys")
    kc.set_defaults(func=_cmd_keys_ckks)
    ki = ksub.add_parser("identity", help="long-term identity keys of the hospitals and the "
                         "roster of their public keys (secure aggregation against a deviating "
                         "server, signed CKKS uploads)")
    ki.add_argument("--hospitals", required=True,
                    help="comma-separated hospital names; client ids 0, 1, ... in this order")
    ki.add_argument("--out", required=True,
                    help="directory for roster.json and one <name>.identity per hospital")
    ki.set_defaults(func=_cmd_keys_identity)
    from securefed.flower.deploy import add_deploy_commands

    add_deploy_commands(sub)
    for extend in extensions:
        extend(sub)
    return parser


def error_line(exc: SecurefedError) -> str:
    """The one line the command line prints for an error: the first line of its message
    (for bad input data: the first problem, with its file, row and column, and how many
    there are in all)."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    count = getattr(exc, "count", 1)
    if count > 1:
        first += " (python -m securefed.data --check FEDERATION.toml lists them)"
    return f"securefed: error: {first}"


def main(argv: list[str] | None = None, *, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command; exit status 2 for a :class:`SecurefedError` (bad input or settings),
    reported on one line of standard error."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[2:] if argv is None else argv[1:])
    try:
        return int(args.func(args))
    except SecurefedError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
