"""What a curious server or an outsider learns from a federated run on the Pima records.

    PYTHONPATH=. python examples/attack_table.py [--seed 0] [--figure docs/figures/attack_digits.png]

Prints markdown tables (the ones in docs/attacks.md):

1. gradient leakage on FedSGD updates by batch size, over the plain channel (per-client
   updates) and over a secure channel (only the aggregate of all hospitals is revealed);
2. the optimisation attack against local DP (``securefed.dp.LocalDP``: each update clipped
   and noised before upload);
3. attribute and membership inference on an overfit released model, without and with
   DP-FedAvg (``securefed.dp.CentralDP``), with the epsilon it reports and the bound that
   epsilon puts on any membership attack's advantage;
and draws 8x8 digits next to their reconstructions.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from attacks import (
    AnalyticFirstLayer,
    AttributeInferenceBlackBox,
    AttributeInferenceWhiteBox,
    LossThreshold,
    ShadowLiRA,
    TabularInversion,
    torch_threads,
)
from evaluation.scoring import (
    dp_advantage_bound,
    dp_advantage_bound_pld,
    matched_psnr,
    score_attribute,
    score_membership,
    score_reconstruction,
)
from securefed import FedAvg, ModelSpec, run_federated
from securefed.arrays import ClientArrays, FederatedArrays
from securefed.data import pima_federation
from securefed.dp import CentralDP, LocalDP
from securefed.he import CKKSChannel
from securefed.observation import PriorKnowledge, observe
from securefed.secagg import SecAggChannel


def hospitals(X, y, *, rows: int, clients: int, seed: int, X_test, y_test, names) -> FederatedArrays:
    idx = np.random.default_rng(seed).permutation(len(X))[: rows * clients].reshape(clients, rows)
    return FederatedArrays(tuple(ClientArrays(i, f"hospital-{i}", X[p], y[p]) for i, p in enumerate(idx)),
                           X_test, y_test, tuple(names))


def exact_rows(rec: np.ndarray, truth: np.ndarray, tol: float = 1e-3) -> float:
    """Fraction of true rows whose one-to-one partner among ``rec`` matches to ``tol``."""
    from scipy.optimize import linear_sum_assignment

    if len(rec) == 0:
        return 0.0
    cost = np.abs(truth[:, None, :] - rec[None, :, :]).max(-1)
    r, c = linear_sum_assignment(cost)
    return float(np.sum(cost[r, c] < tol) / len(truth))


def mean_score(rec, fed, prior, rng):
    s = [score_reconstruction(rec.for_sender(c.client_id).X, rec.for_sender(c.client_id).y, c.X, c.y,
                              prior=prior, rng=rng) for c in fed.clients]
    return (np.mean([x.attack.mean_feature_accuracy for x in s]), np.mean([x.baseline.mean_feature_accuracy for x in s]),
            np.mean([x.attack.exact_row_rate for x in s]), np.mean([x.attack.label_accuracy for x in s]))


def gradient_table(data, prior, seed: int) -> None:
    X, y = data.pooled()
    spec = ModelSpec("mlp", n_features=7, hidden=(128,))
    fedsgd = FedAvg(learning_rate=0.1, local_epochs=1, batch_size=None)
    print("\n### Gradient leakage (FedSGD, MLP 7-128-1, 4 hospitals; tolerance 0.25 sd)\n")
    print("| records per update | channel | analytic: candidate rows | analytic exact rows (top n, paired) | "
          "optimisation feature acc. | baseline | gain | exact rows | label acc. | s per update |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for b in (1, 2, 4, 8, 16):
        fed = hospitals(X, y, rows=b, clients=4, seed=seed + b, X_test=data.X_test, y_test=data.y_test,
                        names=data.feature_names)
        run = run_federated(fed, strategy=fedsgd, model=spec, rounds=1, seed=seed)
        obs = observe(run, adversary="server")
        ana = AnalyticFirstLayer().run(obs, prior, rng=np.random.default_rng(seed))
        # the attacker keeps as many candidate rows as records (it reads the count from the
        # weight), the best supported first, and each true row is paired with one of them
        exact, cands = [], []
        for c in fed.clients:
            rows = ana.for_sender(c.client_id).X
            cands.append(len(rows))
            exact.append(exact_rows(rows[: c.num_examples], c.X))
        exact, cands = float(np.mean(exact)), f"{min(cands)}-{max(cands)}"
        t0 = time.perf_counter()
        rec = TabularInversion().run(obs, prior, rng=np.random.default_rng(seed))
        dt = (time.perf_counter() - t0) / len(fed.clients)
        acc, base, rows, lab = mean_score(rec, fed, prior, np.random.default_rng(seed))
        print(f"| {b} | plain | {cands} | {exact:.2f} | {acc:.3f} | {base:.3f} | {acc - base:+.3f} | {rows:.2f} | "
              f"{lab:.2f} | {dt:.1f} |")
        if b in (1, 2, 4):
            for name, channel in (("secagg", SecAggChannel()), ("ckks", CKKSChannel())):
                sec_run = run_federated(fed, strategy=fedsgd, model=spec, rounds=1, seed=seed,
                                        channel=channel)
                sec = observe(sec_run, adversary="server")
                assert not sec.select(source="client")  # no per-client signal
                n_all = 4 * b
                # the aggregate's count is revealed by secure aggregation's weight sum (FedAvg)
                r = TabularInversion(n_rows=n_all).run(sec, prior, rng=np.random.default_rng(seed)).items[0]
                Xa, ya = fed.pooled()
                s = score_reconstruction(r.X, r.y, Xa, ya, prior=prior, rng=np.random.default_rng(seed))
                print(f"| {n_all} (aggregate of 4x{b}) | {name} | n/a | n/a | {s.attack.mean_feature_accuracy:.3f} | "
                      f"{s.baseline.mean_feature_accuracy:.3f} | {s.gain:+.3f} | {s.attack.exact_row_rate:.2f} | "
                      f"{s.attack.label_accuracy:.2f} | - |")


def noise_table(data, prior, seed: int) -> None:
    X, y = data.pooled()
    spec = ModelSpec("mlp", n_features=7, hidden=(128,))
    print("\n### Optimisation attack against local DP (LocalDP, clip 1.0; 2 records per update, "
          "4 hospitals; the attacker is told n_rows=2)\n")
    print("| noise multiplier | epsilon (delta 1e-5, one round) | feature acc. | baseline | gain | exact rows |")
    print("|---|---|---|---|---|---|")
    fed = hospitals(X, y, rows=2, clients=4, seed=seed, X_test=data.X_test, y_test=data.y_test,
                    names=data.feature_names)
    for sigma in (0.0, 0.001, 0.005, 0.02, 0.1):
        st = FedAvg(learning_rate=0.1, batch_size=None)
        if sigma > 0:
            st = LocalDP(st, clip_norm=1.0, noise_multiplier=sigma, num_clients=4)
        run = run_federated(fed, strategy=st, model=spec, rounds=1, seed=seed)
        eps = run.final.extra.get("epsilon", float("inf"))
        rec = TabularInversion(n_rows=2).run(observe(run, adversary="server"), prior,
                                             rng=np.random.default_rng(seed))
        acc, base, rows, _ = mean_score(rec, fed, prior, np.random.default_rng(seed))
        print(f"| {sigma} | {eps:.3g} | {acc:.3f} | {base:.3f} | {acc - base:+.3f} | {rows:.2f} |")


def inference_table(data, seed: int) -> None:
    X, y = data.pooled()
    spec = ModelSpec("mlp", n_features=7, hidden=(128,))
    half = len(data.X_test) // 2
    prior = PriorKnowledge.from_public_data(data.X_test[half:], data.y_test[half:],
                                            feature_names=data.feature_names, model=spec, keep_reference=True)
    # members and non-members are drawn from the same pool (Pima.tr): 60 of its patients
    # train the model, 60 others are the non-member candidates
    order = np.random.default_rng(seed).permutation(len(X))
    fed = hospitals(X[order[:60]], y[order[:60]], rows=20, clients=3, seed=seed,
                    X_test=data.X_test, y_test=data.y_test, names=data.feature_names)
    Xm, ym = fed.pooled()
    cand_X = np.concatenate([Xm, X[order[60:120]]])
    cand_y = np.concatenate([ym, y[order[60:120]]])
    member = np.r_[np.ones(len(Xm)), np.zeros(len(Xm))]
    print("\n### Released model (3 hospitals x 20 patients, 30 rounds x 20 full-batch epochs, "
          "MLP 7-128-1): attribute and membership inference\n")
    print("| CentralDP noise multiplier (clip 0.5) | epsilon (delta 1e-5) | DP bound on advantage: "
          "single (eps, delta) / exact (PLD, patient in or out) | test acc. | "
          "attribute glu MAE black/white-box (prior) | attribute bmi MAE black/white-box (prior) | "
          "LiRA AUC | LiRA TPR@1% | LiRA TPR@5% | LiRA advantage | loss-threshold AUC |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for sigma in (0.0, 1.0, 4.0):
        st = FedAvg(learning_rate=1.0, local_epochs=20, batch_size=None)
        if sigma > 0:
            st = CentralDP(st, clip_norm=0.5, noise_multiplier=sigma, num_clients=3)
        run = run_federated(fed, strategy=st, model=spec, rounds=30, seed=seed, record_transcript=False)
        obs = observe(run, adversary="outsider")
        cells = []
        for feat in ("glu", "bmi"):
            j = data.feature_names.index(feat)
            known = Xm.copy()
            known[:, j] = 0.0
            s = [score_attribute(A(feature=feat).run(obs, prior, rng=np.random.default_rng(seed),
                                                     targets_X=known, targets_y=ym), Xm[:, j], prior=prior)
                 for A in (AttributeInferenceBlackBox, AttributeInferenceWhiteBox)]
            cells.append(f"{s[0].mae:.2f} / {s[1].mae:.2f} ({s[0].baseline_mae:.2f})")
        lira = score_membership(ShadowLiRA().run(obs, prior, rng=np.random.default_rng(seed),
                                                 candidates_X=cand_X, candidates_y=cand_y), member)
        loss = score_membership(LossThreshold().run(obs, prior, rng=np.random.default_rng(seed),
                                                    candidates_X=cand_X, candidates_y=cand_y), member)
        eps = run.final.extra.get("epsilon", float("inf"))
        bound = dp_advantage_bound(eps, 1e-5)
        exact = (dp_advantage_bound_pld(noise_multiplier=sigma / 2, rounds=30) if sigma > 0 else 1.0)
        print(f"| {sigma} | {eps:.3g} | {bound:.3f} / {exact:.3f} | {run.final.test_accuracy:.3f} | {cells[0]} | "
              f"{cells[1]} | {lira.auc:.3f} | {lira.tpr_at_1_fpr:.3f} | {lira.tpr_at_5_fpr:.3f} | "
              f"{lira.advantage:.3f} | {loss.auc:.3f} |")
    print(f"\n{int(member.sum())} members and {int((1 - member).sum())} non-members from the same pool: "
          f"the smallest false-positive rate measurable is 1/{int((1 - member).sum())}.")


def aligned(rec: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Reconstructed rows reordered to face their true rows (minimum total squared error)."""
    from scipy.optimize import linear_sum_assignment

    r, t = linear_sum_assignment(((rec[:, None, :] - truth[None]) ** 2).sum(-1))
    out = np.zeros_like(truth)
    out[t] = rec[r]
    return out


def digits_figure(path: str, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    y = (d.target >= 5).astype(np.float32)
    prior = PriorKnowledge.from_public_data(X[1000:], y[1000:])
    spec = ModelSpec("mlp", n_features=64, hidden=(128,))
    fig, axes = plt.subplots(4, 8, figsize=(8, 4.4))
    print("\n### 8x8 digits (FedSGD, MLP 64-128-1): PSNR in dB of the optimisation attack "
          "(baseline: the public mean image)\n")
    print("| records per update | attack PSNR | baseline PSNR |")
    print("|---|---|---|")
    for k, b in enumerate((1, 4)):
        fed = hospitals(X[:1000], y[:1000], rows=b, clients=8 // b, seed=seed, X_test=X[1000:],
                        y_test=y[1000:], names=[f"p{j}" for j in range(64)])
        run = run_federated(fed, strategy=FedAvg(learning_rate=0.1, batch_size=None), model=spec,
                            rounds=1, seed=seed)
        rec = TabularInversion().run(observe(run, adversary="server"), prior, rng=np.random.default_rng(seed))
        truth = np.concatenate([c.X for c in fed.clients])
        recon = np.concatenate([aligned(rec.for_sender(c.client_id).X, c.X) for c in fed.clients])
        p = np.concatenate([matched_psnr(rec.for_sender(c.client_id).X, c.X, data_range=1.0) for c in fed.clients])
        pb = np.concatenate([matched_psnr(prior.marginals.mean[None], c.X, data_range=1.0) for c in fed.clients])
        print(f"| {b} | {np.mean(p):.1f} | {np.mean(pb):.1f} |")
        for j in range(8):
            axes[2 * k, j].imshow(truth[j].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            axes[2 * k + 1, j].imshow(np.clip(recon[j], 0, 1).reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        axes[2 * k, 0].set_ylabel(f"true\nbatch {b}", fontsize=8)
        axes[2 * k + 1, 0].set_ylabel("recon.", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Gradient inversion of FedSGD updates (reconstructions paired with their true images)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nfigure: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description="attack-versus-defense tables on Pima")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default="docs/figures/attack_digits.png")
    args = ap.parse_args()
    data = pima_federation(seed=args.seed)
    prior = PriorKnowledge.from_public_data(data.X_test, data.y_test, feature_names=data.feature_names)
    with torch_threads(1):  # small models: one thread is faster than several
        gradient_table(data, prior, args.seed)
        noise_table(data, prior, args.seed)
        inference_table(data, args.seed)
        digits_figure(args.figure, args.seed)


if __name__ == "__main__":
    main()
