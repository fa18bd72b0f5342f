"""A picture of how the hospitals of a federation differ (sizes, labels, populations)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from securefed.data.dataset import FederatedDataset
from securefed.data.schema import NUMERIC

__all__ = ["plot_hospitals"]

_PREFERRED = ("age", "bmi", "npreg", "sbp", "glu", "glucose")


def plot_hospitals(dataset: FederatedDataset, *, features: Sequence[str] | None = None):
    """Figure with one panel for sizes, one for positive rates, and one box plot per numeric
    feature (harmonised values, agreed units) across hospitals.

    ``features`` defaults to up to four numeric features, preferring those the simulated
    heterogeneity acts on (age, BMI, pregnancies or blood pressure, glucose).  Returns the
    matplotlib ``Figure``; save it with ``fig.savefig(path)``.
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    schema = dataset.schema
    if features is None:
        numeric = [f.name for f in schema.features if f.kind == NUMERIC]
        preferred = [n for n in _PREFERRED if n in numeric]
        features = (preferred + [n for n in numeric if n not in preferred])[:4]
    tables = dataset.harmonised_tables
    names = list(dataset.names)
    n_panels = 2 + len(features)
    cols = min(3, n_panels)
    rows = int(np.ceil(n_panels / cols))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    ax = axes.flat
    x = np.arange(len(names))
    ax[0].bar(x, dataset.sizes, color="#4C72B0")
    ax[0].set_title("patients per hospital")
    ax[1].bar(x, dataset.positive_rates, color="#C44E52")
    ax[1].set_title(f"share with {schema.target} = {schema.positive}")
    ax[1].set_ylim(0, 1)
    for i, feat in enumerate(features, start=2):
        data = [t[feat].dropna().to_numpy() for t in tables]
        ax[i].boxplot(data, positions=x, widths=0.6, showfliers=False)
        unit = schema.feature(feat).unit
        ax[i].set_title(f"{feat}" + (f" [{unit}]" if unit else ""))
    for a in list(ax)[:n_panels]:
        a.set_xticks(x)
        a.set_xticklabels(names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center",
                          fontsize=8)
    for a in list(ax)[n_panels:]:
        a.set_visible(False)
    het = dataset.heterogeneity
    fig.suptitle(het.describe() if het is not None else (dataset.description or "hospitals"), fontsize=9)
    fig.tight_layout()
    return fig
