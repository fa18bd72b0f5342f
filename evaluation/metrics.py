"""Utility metrics of a trained model: accuracy, ROC AUC, F1, log loss, per hospital."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score

from securefed.federated import evaluate
from securefed.models import ModelSpec, set_flat_params

__all__ = ["model_metrics", "per_hospital_accuracy"]


def _predict(spec: ModelSpec, params: np.ndarray, X: np.ndarray) -> np.ndarray:
    net = spec.build(seed=0)
    set_flat_params(net, params)
    net.eval()
    with torch.no_grad():
        logits = net(torch.as_tensor(X, dtype=torch.float32)).numpy()
    return (logits > 0).astype(np.float32)


def model_metrics(spec: ModelSpec, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Log loss, accuracy (threshold 0.5), ROC AUC and F1 of the positive class."""
    net = spec.build(seed=0)
    set_flat_params(net, params)
    loss, acc, auc = evaluate(net, X, y)
    pred = _predict(spec, params, X)
    f1 = float(f1_score(y, pred, zero_division=0.0))
    return {"loss": loss, "accuracy": acc, "auc": auc, "f1": f1}


def per_hospital_accuracy(
    spec: ModelSpec, params: np.ndarray, X: np.ndarray, y: np.ndarray, hospital: np.ndarray,
    names: tuple[str, ...],
) -> dict[str, float]:
    """Accuracy on each hospital's own held-out rows (NaN for a hospital with none)."""
    pred = _predict(spec, params, X)
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        mask = hospital == i
        out[name] = float((pred[mask] == y[mask]).mean()) if mask.any() else float("nan")
    return out
