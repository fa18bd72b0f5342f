"""The Pima Indian diabetes records bundled with securefed (see resources/ATTRIBUTION.md),
and their split into simulated hospitals with realistic heterogeneity.

``Pima.tr`` (200 women, 68 diabetic) is the training pool that the hospitals share out;
``Pima.te`` (332, 109 diabetic) is the held-out test set; ``Pima.tr2`` (300, 106 diabetic:
``Pima.tr`` plus 100 women with missing blood pressure, skin fold or BMI) replaces the pool
when ``missing=True``.

Each hospital also holds its own test patients (:func:`pima_hospital_tests`): Pima.te is
shared out among the hospitals the way Pima.tr is, so a hospital's test patients come from
its own shifted population, are labelled by its own convention and are exported in its own
format.  :func:`pima_federation` attaches them as ``ClientArrays.X_test``/``y_test``; the
pooled Pima.te, with the reference labels, stays the federation's common test set.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources

import numpy as np
import pandas as pd

from securefed.arrays import FederatedArrays
from securefed.data.dataset import FederatedDataset, Hospital
from securefed.data.formats import FORMAT_STYLES, export_table, simulated_format
from securefed.data.heterogeneity import (
    Heterogeneity,
    LabelRule,
    draw_sizes,
    formatted_hospitals,
    knob_streams,
    relabel,
    resolve_hospital,
    tilted_partition,
)
from securefed.data.schema import ExportFormat, Feature, Schema
from securefed.data.standardise import encode
from securefed.errors import ConfigurationError

__all__ = [
    "load_pima",
    "pima_hospitals",
    "pima_federation",
    "pima_hospital_tests",
    "attach_pima_hospital_tests",
    "proportional_sizes",
    "PIMA_FEATURES",
    "PIMA_SCHEMA",
    "PIMA_LABEL_RULE",
    "PIMA_TILTS",
]

PIMA_FEATURES = ("npreg", "glu", "bp", "skin", "bmi", "ped", "age")
_FILES = {"tr": "Pima.tr.csv", "te": "Pima.te.csv", "tr2": "Pima.tr2.csv"}

#: The agreed schema of the Pima hospitals: the column names and units of the MASS data.
PIMA_SCHEMA = Schema(
    target="type",
    positive="Yes",
    negative="No",
    features=(
        Feature("npreg", unit="count", description="number of pregnancies"),
        Feature("glu", unit="mg/dL", quantity="glucose",
                description="plasma glucose 2 h into an oral glucose tolerance test"),
        Feature("bp", unit="mmHg", description="diastolic blood pressure"),
        Feature("skin", unit="mm", description="triceps skin fold thickness"),
        Feature("bmi", unit="kg/m^2", description="body mass index"),
        Feature("ped", unit="1", description="diabetes pedigree function"),
        Feature("age", unit="years", description="age"),
    ),
    name="pima",
)

#: Default rule of the hospital with its own labelling convention: 2-hour OGTT glucose at or
#: above 140 mg/dL (7.8 mmol/L), the WHO threshold of impaired glucose tolerance, where the
#: WHO diagnosis of diabetes needs 200 mg/dL.
PIMA_LABEL_RULE = LabelRule("glu", 140.0, "2-h OGTT glucose, WHO impaired-glucose-tolerance cut-off")

#: (feature, direction, meaning) of hospital k's covariate shift, for k = 0, 1, 2, ... cyclically.
PIMA_TILTS = (
    ("age", +1, "older"),
    ("bmi", +1, "heavier"),
    ("npreg", +1, "more pregnancies"),
    ("age", -1, "younger"),
    ("bmi", -1, "lighter"),
    ("npreg", -1, "fewer pregnancies"),
)


def load_pima(split: str = "tr") -> pd.DataFrame:
    """One bundled split as a DataFrame: ``"tr"`` (200), ``"te"`` (332) or ``"tr2"`` (300, with NA).

    Columns as in MASS: ``npreg, glu, bp, skin, bmi, ped, age`` and ``type`` (``"Yes"``/``"No"``);
    missing values are NaN.
    """
    if split not in _FILES:
        raise ConfigurationError(f"unknown Pima split {split!r}; valid: {sorted(_FILES)}")
    with resources.files("securefed.data").joinpath("resources", _FILES[split]).open("r") as fh:
        frame = pd.read_csv(fh, index_col=0, na_values=["NA"])
    return frame.reset_index(drop=True)


def _agreed(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[list(PIMA_FEATURES)].astype(np.float64)
    out["type"] = (frame["type"] == "Yes").astype(np.int64)
    return out


def _tilt_scores(pool: pd.DataFrame, n_hospitals: int) -> tuple[np.ndarray, list[str]]:
    """Each row's standardised tilt feature per hospital (sign set) and the tilts' names."""
    scores = np.empty((len(pool), n_hospitals))
    tilts = []
    for k in range(n_hospitals):
        feat, sign, meaning = PIMA_TILTS[k % len(PIMA_TILTS)]
        col = pool[feat].to_numpy()
        scores[:, k] = sign * (col - np.nanmean(col)) / np.nanstd(col)
        tilts.append(f"{meaning} ({feat} {'+' if sign > 0 else '-'})")
    return scores, tilts


def proportional_sizes(n_total: int, weights: np.ndarray | list[int], *, min_size: int = 1) -> np.ndarray:
    """Split ``n_total`` in proportion to ``weights`` by largest remainder, each part at
    least ``min_size``.

    >>> proportional_sizes(300, [40, 60, 100], min_size=0).tolist()
    [60, 90, 150]
    """
    w = np.asarray(weights, dtype=np.float64)
    k = len(w)
    if k < 1 or not np.all(w >= 0) or not w.sum() > 0:
        raise ConfigurationError(f"weights must be non-negative with a positive sum, got {list(w)}")
    if min_size < 0 or n_total < k * min_size:
        raise ConfigurationError(
            f"{n_total} patients cannot give {k} hospitals at least {min_size} each; "
            f"expected n_total >= {k * min_size}")
    spare = n_total - k * min_size
    raw = spare * w / w.sum()
    base = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - base), kind="stable")
    base[order[: spare - int(base.sum())]] += 1
    return base + min_size


def pima_hospital_tests(ds: FederatedDataset, *, min_test_size: int = 20) -> tuple[Hospital, ...]:
    """Each hospital's own held-out patients: Pima.te shared out the way Pima.tr was.

    ``ds`` must come from :func:`pima_hospitals`.  The 332 Pima.te patients are split with
    the same knobs, each from the ``test`` stream of :func:`knob_streams` (so the training
    split of a seed is unchanged):

    * sizes in proportion to the hospitals' training sizes (quantity skew carries over),
      each at least ``min_test_size`` so that no hospital is judged on a handful of patients;
    * who goes where by the same tilted draw along :data:`PIMA_TILTS` at the same
      ``covariate_shift`` (tilt scores standardised within Pima.te);
    * the label hospital relabels the same fraction ``label_convention`` of its test patients
      by the same rule;
    * each table is exported in its hospital's own format (harmonised again at the hospital).

    So a hospital is evaluated on patients like its own, by its own convention.
    """
    het = ds.heterogeneity if ds.heterogeneity is not None else Heterogeneity.none()
    if ds.seed is None or ds.schema is not PIMA_SCHEMA:
        raise ConfigurationError(
            "pima_hospital_tests needs a dataset made by pima_hospitals (schema 'pima' and a "
            f"seed), got schema {ds.schema.name!r} with seed {ds.seed!r}")
    k = len(ds.hospitals)
    pool = _agreed(load_pima("te"))
    rng = knob_streams(ds.seed)["test"]
    sizes = proportional_sizes(len(pool), np.asarray(ds.sizes), min_size=min(min_test_size, len(pool) // k))
    scores, _ = _tilt_scores(pool, k)
    parts = tilted_partition(scores, sizes, het.covariate_shift, rng)
    rule = het.label_rule or PIMA_LABEL_RULE
    label_h = resolve_hospital(het.label_hospital, k)
    out = []
    for h, (hosp, idx) in enumerate(zip(ds.hospitals, parts, strict=True)):
        table = pool.iloc[idx].reset_index(drop=True)
        relabelled = 0
        if h == label_h and het.label_convention > 0:
            y_new, applied = relabel(table["type"].to_numpy(), table[rule.feature].to_numpy(),
                                     rule.threshold, het.label_convention, rng)
            relabelled = int(applied.sum())
            table["type"] = y_new
        out.append(Hospital(
            name=hosp.name,
            table=export_table(table, hosp.export_format, PIMA_SCHEMA),
            export_format=hosp.export_format,
            source=f"Pima.te ({hosp.name} test)",
            row_numbers=idx + 1,
            notes={"relabelled": relabelled},
        ))
    return tuple(out)


def pima_hospitals(
    *,
    n_hospitals: int = 3,
    heterogeneity: Heterogeneity | None = None,
    seed: int = 0,
    missing: bool = False,
) -> FederatedDataset:
    """Pima.tr split into ``n_hospitals`` hospitals, each table in its hospital's own format.

    ``heterogeneity=None`` means :meth:`Heterogeneity.default`; pass
    :meth:`Heterogeneity.none` for an IID split in one format.  ``missing=True`` splits the
    300 patients of Pima.tr2 (with NA) instead of the 200 of Pima.tr.  The knobs act in this
    order, each from its own random stream: sizes (quantity skew), who goes where (covariate
    shift along :data:`PIMA_TILTS`), the last hospital's labelling rule
    (:data:`PIMA_LABEL_RULE`), export formats.  Pima.te, in the agreed schema, is the test set.

    >>> ds = pima_hospitals(seed=0)
    >>> len(ds.hospitals), sum(ds.sizes), ds.schema.target
    (3, 200, 'type')
    >>> ds.prepare().X_test.shape
    (332, 7)
    """
    het = Heterogeneity.default() if heterogeneity is None else heterogeneity
    if not isinstance(het, Heterogeneity):
        raise ConfigurationError(f"heterogeneity must be a Heterogeneity or None, got {type(het).__name__}")
    if not isinstance(n_hospitals, (int, np.integer)) or n_hospitals < 1:
        raise ConfigurationError(f"n_hospitals must be an integer >= 1, got {n_hospitals!r}")
    n_hospitals = int(n_hospitals)
    split = "tr2" if missing else "tr"
    pool = _agreed(load_pima(split))
    n = len(pool)
    streams = knob_streams(seed)

    sizes = draw_sizes(n, n_hospitals, het.quantity_skew, streams["sizes"],
                       min_size=min(het.min_hospital_size, n // n_hospitals))
    scores, tilts = _tilt_scores(pool, n_hospitals)
    parts = tilted_partition(scores, sizes, het.covariate_shift, streams["population"])

    rule = het.label_rule or PIMA_LABEL_RULE
    if rule.feature not in PIMA_FEATURES:
        raise ConfigurationError(f"label_rule feature must be one of {PIMA_FEATURES}, got {rule.feature!r}")
    label_h = resolve_hospital(het.label_hospital, n_hospitals)
    styles = formatted_hospitals(n_hospitals, het.format_shift, streams["formats"])

    hospitals = []
    for k, idx in enumerate(parts):
        table = pool.iloc[idx].reset_index(drop=True)
        notes = {"tilt": tilts[k] if het.covariate_shift > 0 else "none",
                 "label_rule": "reference", "relabelled": 0, "labels_changed": 0}
        if k == label_h and het.label_convention > 0:
            y_new, applied = relabel(table["type"].to_numpy(), table[rule.feature].to_numpy(),
                                     rule.threshold, het.label_convention, streams["labels"])
            notes["relabelled"] = int(applied.sum())
            notes["labels_changed"] = int((y_new != table["type"].to_numpy()).sum())
            notes["label_rule"] = str(rule)
            table["type"] = y_new
        fmt = ExportFormat() if styles[k] is None else simulated_format(
            PIMA_SCHEMA, FORMAT_STYLES[styles[k]])
        hospitals.append(Hospital(
            name=f"hospital-{k}",
            table=export_table(table, fmt, PIMA_SCHEMA),
            export_format=fmt,
            source=f"Pima.{split} (hospital-{k})",
            row_numbers=idx + 2,  # the row in the CSV file (header = row 1)
            notes=notes,
        ))
    return FederatedDataset(
        hospitals=tuple(hospitals),
        schema=PIMA_SCHEMA,
        test=_agreed(load_pima("te")),
        description=f"Pima.{split} ({n} patients) split into {n_hospitals} hospitals, seed {seed}",
        heterogeneity=het,
        seed=seed,
    )


def pima_federation(
    *,
    seed: int = 0,
    n_hospitals: int = 3,
    heterogeneity: Heterogeneity | None = None,
    missing: bool = False,
    hospital_tests: bool = True,
) -> FederatedArrays:
    """``pima_hospitals(...).prepare()``: harmonised, standardised arrays; Pima.te as test.

    With ``hospital_tests`` (the default) each hospital also holds its own test patients
    (:func:`pima_hospital_tests`) as ``X_test``/``y_test``, standardised with the same
    federated statistics as its training rows.

    >>> data = pima_federation(seed=0)
    >>> [len(c.y_test) for c in data.clients], data.X_test.shape
    ([144, 89, 99], (332, 7))
    """
    ds = pima_hospitals(n_hospitals=n_hospitals, heterogeneity=heterogeneity, seed=seed,
                        missing=missing)
    arrays = ds.prepare()
    return attach_pima_hospital_tests(ds, arrays) if hospital_tests else arrays


def attach_pima_hospital_tests(ds: FederatedDataset, arrays: FederatedArrays) -> FederatedArrays:
    """``arrays`` (``ds.prepare()``) with each hospital's own test patients
    (:func:`pima_hospital_tests`) as ``X_test``/``y_test``, standardised with the federated
    statistics of the training rows; the pooled test set stays Pima.te with the reference
    labels."""
    std = ds.standardiser()
    clients = []
    for client, test in zip(arrays.clients, pima_hospital_tests(ds), strict=True):
        X, y = encode(test.harmonised(PIMA_SCHEMA), PIMA_SCHEMA)
        clients.append(replace(client, X_test=std.transform(X), y_test=y.astype(np.float32)))
    return replace(arrays, clients=tuple(clients))
