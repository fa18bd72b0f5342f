"""A federation of hospitals, each holding its own table in its own export format.

:class:`FederatedDataset` is what the data sources return (Pima split, synthetic generator,
user CSV files).  :meth:`FederatedDataset.prepare` turns it into model-ready
:class:`~securefed.arrays.FederatedArrays` the way a real federation would:

1. each hospital harmonises its own table into the agreed :class:`Schema`
   (:func:`securefed.data.formats.harmonise_table`);
2. each hospital one-hot encodes it (:func:`securefed.data.standardise.encode`);
3. the hospitals share per-column counts and sums (never rows), from which everyone
   standardises and fills missing values (:class:`securefed.data.standardise.FederatedStandardiser`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from securefed.arrays import ClientArrays, FederatedArrays
from securefed.data.formats import harmonise_table
from securefed.data.heterogeneity import Heterogeneity
from securefed.data.schema import ExportFormat, Schema
from securefed.data.standardise import FederatedStandardiser, encode
from securefed.errors import ConfigurationError

__all__ = ["Hospital", "FederatedDataset", "DataWarning", "SingleClassWarning"]


class DataWarning(UserWarning):
    """Something in the input data deserves attention but does not stop loading."""


class SingleClassWarning(DataWarning):
    """A hospital holds patients of one class only (its local gradients see one label)."""


@dataclass(frozen=True, eq=False)
class Hospital:
    """One hospital: its raw table as exported, the format it uses, and where it came from.

    ``notes`` holds simulation facts for reports (``tilt``: which feature its population
    is shifted along; ``relabelled``: how many patients its own labelling rule was applied
    to; ``labels_changed``: how many of those changed class).
    """

    name: str
    table: pd.DataFrame
    export_format: ExportFormat = field(default_factory=ExportFormat)
    source: str = ""
    row_numbers: np.ndarray | None = None
    notes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(len(self.table))

    def harmonised(self, schema: Schema) -> pd.DataFrame:
        """This hospital's table in the agreed schema (done at the hospital)."""
        out = harmonise_table(self.table, self.export_format, schema,
                              source=self.source or self.name, row_numbers=self.row_numbers)
        assert out is not None
        return out


@dataclass(frozen=True, eq=False)
class FederatedDataset:
    """Several named hospitals, each with its own table, plus held-out test data.

    ``test`` is already in the agreed schema (target as 0/1), or None when the source has no
    test set (then :meth:`prepare` needs ``test_fraction``).
    """

    hospitals: tuple[Hospital, ...]
    schema: Schema
    test: pd.DataFrame | None = None
    description: str = ""
    heterogeneity: Heterogeneity | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hospitals", tuple(self.hospitals))
        if not self.hospitals:
            raise ConfigurationError("a federated dataset needs at least one hospital, got none")
        names = [h.name for h in self.hospitals]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"hospital names must be unique, got {names}")

    # -- per-hospital metadata -----------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hospitals)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(h.size for h in self.hospitals)

    @property
    def formats(self) -> tuple[str, ...]:
        """Export format name per hospital (``"agreed"`` when it needs no harmonisation)."""
        return tuple(h.export_format.name for h in self.hospitals)

    @cached_property
    def harmonised_tables(self) -> tuple[pd.DataFrame, ...]:
        """Each hospital's table in the agreed schema (computed once, at each hospital)."""
        return tuple(h.harmonised(self.schema) for h in self.hospitals)

    @property
    def positive_rates(self) -> tuple[float, ...]:
        t = self.schema.target
        return tuple(float(df[t].mean()) if len(df) else float("nan") for df in self.harmonised_tables)

    def summary(self) -> pd.DataFrame:
        """One row per hospital: patients, positives, positive rate, missing cells, format."""
        rows = []
        for h, df in zip(self.hospitals, self.harmonised_tables, strict=True):
            y = df[self.schema.target]
            rows.append({
                "hospital": h.name,
                "patients": len(df),
                "positives": int(y.sum()),
                "positive_rate": round(float(y.mean()), 3) if len(df) else float("nan"),
                "missing_cells": int(df[list(self.schema.feature_names)].isna().sum().sum()),
                "format": h.export_format.name,
                **{k: v for k, v in h.notes.items()},
            })
        return pd.DataFrame(rows).set_index("hospital")

    # -- preparation ---------------------------------------------------------------------
    def standardiser(self) -> FederatedStandardiser:
        """Fit the federated standardiser (what each hospital shares is in ``.shared``)."""
        mats = [encode(df, self.schema)[0] for df in self.harmonised_tables]
        return FederatedStandardiser.fit(
            mats, hospitals=self.names, feature_names=self.schema.encoded_feature_names,
            numeric=self.schema.numeric_mask,
        )

    def prepare(self, *, test_fraction: float | None = None, seed: int = 0) -> FederatedArrays:
        """Harmonise, encode and standardise every hospital into :class:`FederatedArrays`.

        Statistics are shared as counts and sums only (see :mod:`securefed.data.standardise`);
        the test set is standardised with the same federated statistics.  A source without a
        test set needs ``test_fraction``: that fraction of each hospital's patients
        (stratified by class, drawn from ``seed``) is held out and pooled as the test set,
        and standardisation then uses only the remaining training rows.
        """
        tables = list(self.harmonised_tables)
        test = self.test
        if test is None:
            if test_fraction is None:
                raise ConfigurationError(
                    "this dataset has no test set; pass prepare(test_fraction=...) "
                    "(e.g. 0.2) or give the loader a test file"
                )
            if not 0.0 < test_fraction < 1.0:
                raise ConfigurationError(f"test_fraction must be in (0, 1), got {test_fraction}")
            rng = np.random.default_rng(seed)
            held, kept = [], []
            for name, df in zip(self.names, tables, strict=True):
                y = df[self.schema.target].to_numpy()
                mask = np.zeros(len(df), dtype=bool)
                for cls in (0, 1):
                    idx = np.flatnonzero(y == cls)
                    m = int(round(test_fraction * len(idx)))
                    mask[rng.choice(idx, size=m, replace=False)] = True
                if mask.all():
                    raise ConfigurationError(
                        f"test_fraction {test_fraction} leaves hospital {name!r} with no training rows"
                    )
                held.append(df[mask])
                kept.append(df[~mask].reset_index(drop=True))
            tables = kept
            test = pd.concat(held, ignore_index=True)
        elif test_fraction is not None:
            raise ConfigurationError("this dataset has its own test set; test_fraction must be None")

        encoded = [encode(df, self.schema) for df in tables]
        std = FederatedStandardiser.fit(
            [X for X, _ in encoded], hospitals=self.names,
            feature_names=self.schema.encoded_feature_names, numeric=self.schema.numeric_mask,
        )
        clients = tuple(
            ClientArrays(client_id=i, name=name, X=std.transform(X), y=y.astype(np.float32))
            for i, (name, (X, y)) in enumerate(zip(self.names, encoded, strict=True))
        )
        X_te, y_te = encode(test, self.schema)
        return FederatedArrays(
            clients=clients,
            X_test=std.transform(X_te),
            y_test=y_te.astype(np.float32),
            feature_names=self.schema.encoded_feature_names,
            description=self.describe(train_tables=tables, n_test=len(test)),
        )

    def describe(self, *, train_tables=None, n_test: int | None = None) -> str:
        """A short human-readable account: source, heterogeneity, sizes, positive rates, formats."""
        tables = self.harmonised_tables if train_tables is None else train_tables
        t = self.schema.target
        n = np.array([len(df) for df in tables])
        r = np.array([df[t].mean() if len(df) else np.nan for df in tables])
        parts = [self.description or f"{len(self.hospitals)} hospitals"]
        if self.heterogeneity is not None:
            parts.append(f"heterogeneity: {self.heterogeneity.describe()}")
        if len(tables) <= 6:
            parts.append(f"sizes {'/'.join(str(int(v)) for v in n)}; positive rates "
                         f"{'/'.join(f'{v:.2f}' for v in r)}; formats: {', '.join(self.formats)}")
        else:
            counts = pd.Series(self.formats).value_counts()
            parts.append(
                f"sizes {n.min()}..{int(np.median(n))}..{n.max()} (min..median..max); positive rates "
                f"{np.nanmin(r):.2f}..{np.nanmax(r):.2f}; formats: "
                + ", ".join(f"{k} x{v}" for k, v in counts.items())
            )
        if n_test is None and self.test is not None:
            n_test = len(self.test)
        if n_test is not None:
            parts.append(f"test: {n_test} patients")
        return "; ".join(parts)
