"""A federation of hospitals, each holding its own table in its own export format.

:class:`FederatedDataset` is what the data sources return (Pima split, synthetic generator,
user CSV files).  :meth:`FederatedDataset.prepare` turns it into model-ready
:class:`~securefed.arrays.FederatedArrays` the way a real federation would:

1. each hospital harmonises its own table into the agreed :class:`Schema`
   (:func:`securefed.data.formats.harmonise_table`);
2. each hospital one-hot encodes it (:func:`securefed.data.standardise.encode`);
3. the hospitals share per-column counts and sums (never rows), from which everyone
   standardises and fills missing values (:class:`securefed.data.standardise.FederatedStandardiser`).

A hospital may hold its own held-out patients (``Hospital.test_table``): they are harmonised
and standardised like its training rows, but never enter the shared sums, so nothing about
test patients shapes the model or its preprocessing.  The union of the hospitals' test
patients is the federation's test set; each hospital's own is kept beside its training rows
(``ClientArrays.X_test``) so the model can be judged on every hospital's own population.
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

__all__ = ["Hospital", "FederatedDataset", "PreparedFederation", "DataWarning",
           "SingleClassWarning"]


class DataWarning(UserWarning):
    """Something in the input data deserves attention but does not stop loading."""


class SingleClassWarning(DataWarning):
    """A hospital holds patients of one class only (its local gradients see one label)."""


@dataclass(frozen=True, eq=False)
class Hospital:
    """One hospital: its raw table as exported, the format it uses, and where it came from.

    ``test_table`` holds the hospital's own held-out patients, in the same export format
    (``None``: it has none); ``test_source`` and ``test_row_numbers`` say where they came
    from, as ``source`` and ``row_numbers`` do for the training rows.  ``notes`` holds
    simulation facts for reports (``tilt``: which feature its population is shifted along;
    ``relabelled``: how many patients its own labelling rule was applied to;
    ``labels_changed``: how many of those changed class).
    """

    name: str
    table: pd.DataFrame
    export_format: ExportFormat = field(default_factory=ExportFormat)
    source: str = ""
    row_numbers: np.ndarray | None = None
    notes: Mapping[str, Any] = field(default_factory=dict)
    test_table: pd.DataFrame | None = None
    test_source: str = ""
    test_row_numbers: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(len(self.table))

    @property
    def test_size(self) -> int:
        return 0 if self.test_table is None else int(len(self.test_table))

    def harmonised(self, schema: Schema) -> pd.DataFrame:
        """This hospital's table in the agreed schema (done at the hospital)."""
        out = harmonise_table(self.table, self.export_format, schema,
                              source=self.source or self.name, row_numbers=self.row_numbers)
        assert out is not None
        return out

    def harmonised_test(self, schema: Schema) -> pd.DataFrame | None:
        """This hospital's own test patients in the agreed schema (``None`` without any)."""
        if self.test_table is None:
            return None
        out = harmonise_table(self.test_table, self.export_format, schema,
                              source=self.test_source or f"{self.name} (test)",
                              row_numbers=self.test_row_numbers)
        assert out is not None
        return out


@dataclass(frozen=True)
class PreparedFederation:
    """What :meth:`FederatedDataset.prepared` returns: the model inputs and the preprocessing
    that produced them (needed to apply the trained model to new patients)."""

    arrays: FederatedArrays
    standardiser: FederatedStandardiser
    schema: Schema

    def preprocessing(self) -> dict[str, Any]:
        """A JSON-ready recipe to turn a patient in the agreed schema into a model input.

        One entry per model input, in the model's order: numeric inputs give the federated
        ``mean`` and ``sd`` (``x -> (x - mean) / sd``, a missing value becomes 0); indicator
        inputs of a categorical feature give the category (1 when the patient has it, else 0)
        and the ``fill`` used when the category is missing (the federated share of it).
        """
        std = self.standardiser
        inputs: list[dict[str, Any]] = []
        col = 0
        for feat in self.schema.features:
            if feat.kind == "numeric":
                inputs.append({"name": feat.name, "feature": feat.name, "kind": "numeric",
                               "unit": feat.unit, "mean": float(std.mean[col]),
                               "sd": float(std.scale[col])})
                col += 1
                continue
            cats = feat.categories[1:] if len(feat.categories) == 2 else feat.categories
            for cat in cats:
                inputs.append({"name": f"{feat.name}={cat}", "feature": feat.name,
                               "kind": "indicator", "category": cat,
                               "fill": float(std.mean[col])})
                col += 1
        assert col == len(std.feature_names)
        return {
            "inputs": inputs,
            "target": {"name": self.schema.target, "positive": self.schema.positive,
                       "negative": self.schema.negative},
            "rule": "numeric: (x - mean) / sd, missing -> 0; indicator: 1 if the patient's "
                    "category is this one else 0, missing -> fill; statistics are federated "
                    "sums over the training patients only",
        }


@dataclass(frozen=True, eq=False)
class FederatedDataset:
    """Several named hospitals, each with its own table, plus held-out test data.

    ``test`` is already in the agreed schema (target as 0/1), or None when the source has no
    shared test set (then the hospitals' own test tables, or :meth:`prepare`'s
    ``test_fraction``, give one).  ``name`` names the data set in results (a federation
    file's ``name``).
    """

    hospitals: tuple[Hospital, ...]
    schema: Schema
    test: pd.DataFrame | None = None
    description: str = ""
    heterogeneity: Heterogeneity | None = None
    seed: int | None = None
    name: str = ""

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
                **({"test_patients": h.test_size} if self.has_hospital_tests else {}),
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

    @cached_property
    def harmonised_test_tables(self) -> tuple[pd.DataFrame | None, ...]:
        """Each hospital's own test patients in the agreed schema (``None`` where it has none)."""
        return tuple(h.harmonised_test(self.schema) for h in self.hospitals)

    @property
    def has_hospital_tests(self) -> bool:
        """True when at least one hospital holds its own test patients."""
        return any(h.test_table is not None for h in self.hospitals)

    def prepare(self, *, test_fraction: float | None = None, seed: int = 0) -> FederatedArrays:
        """Harmonise, encode and standardise every hospital into :class:`FederatedArrays`.

        Statistics are shared as counts and sums of training rows only (see
        :mod:`securefed.data.standardise`); test patients are standardised with the same
        federated statistics.  The test set is, in this order of precedence:

        * the hospitals' own test patients (``Hospital.test_table``), when any hospital has
          some: their union (plus ``test``, if also given) is ``X_test``/``y_test`` and each
          hospital's own is its ``ClientArrays.X_test``/``y_test``;
        * ``test``, the source's shared held-out set (Pima: ``Pima.te``);
        * with neither, ``test_fraction`` of each hospital's patients (stratified by class,
          drawn from ``seed``), held out as that hospital's own test set.
        """
        return self.prepared(test_fraction=test_fraction, seed=seed).arrays

    def prepared(self, *, test_fraction: float | None = None, seed: int = 0) -> PreparedFederation:
        """:meth:`prepare`, also returning the fitted standardiser (to apply the model later)."""
        tables, own_tests = self._train_test_tables(test_fraction=test_fraction, seed=seed)
        union = [t for t in own_tests if t is not None]
        if self.test is not None:
            union.append(self.test)
        test = pd.concat(union, ignore_index=True)

        encoded = [encode(df, self.schema) for df in tables]
        std = FederatedStandardiser.fit(
            [X for X, _ in encoded], hospitals=self.names,
            feature_names=self.schema.encoded_feature_names, numeric=self.schema.numeric_mask,
        )
        clients = []
        for i, (name, (X, y), own) in enumerate(zip(self.names, encoded, own_tests, strict=True)):
            X_own = y_own = None
            if own is not None:
                Xo, yo = encode(own, self.schema)
                X_own, y_own = std.transform(Xo), yo.astype(np.float32)
            clients.append(ClientArrays(client_id=i, name=name, X=std.transform(X),
                                        y=y.astype(np.float32), X_test=X_own, y_test=y_own))
        X_te, y_te = encode(test, self.schema)
        arrays = FederatedArrays(
            clients=tuple(clients),
            X_test=std.transform(X_te),
            y_test=y_te.astype(np.float32),
            feature_names=self.schema.encoded_feature_names,
            description=self.describe(train_tables=tables, n_test=len(test)),
        )
        return PreparedFederation(arrays=arrays, standardiser=std, schema=self.schema)

    def _train_test_tables(
        self, *, test_fraction: float | None, seed: int
    ) -> tuple[list[pd.DataFrame], list[pd.DataFrame | None]]:
        """Training tables and each hospital's own test table (``None``: none), per hospital."""
        tables = list(self.harmonised_tables)
        if self.has_hospital_tests or self.test is not None:
            if test_fraction is not None:
                raise ConfigurationError(
                    "this dataset has its own test set; test_fraction must be None, got "
                    f"{test_fraction}")
            return tables, list(self.harmonised_test_tables)
        if test_fraction is None:
            raise ConfigurationError(
                "this dataset has no test set; pass prepare(test_fraction=...) "
                "(e.g. 0.2) or give the loader a test file"
            )
        if not 0.0 < test_fraction < 1.0:
            raise ConfigurationError(f"test_fraction must be in (0, 1), got {test_fraction}")
        rng = np.random.default_rng(seed)
        held: list[pd.DataFrame | None] = []
        kept = []
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
            held.append(df[mask].reset_index(drop=True))
            kept.append(df[~mask].reset_index(drop=True))
        return kept, held

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
