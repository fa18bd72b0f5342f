"""The bundled UCI Heart Disease records: four real hospitals, as a federation directory.

The Heart Disease data of the UCI Machine Learning Repository (Janosi, Steinbrunn, Pfisterer
and Detrano, 1988; CC BY 4.0) hold 920 patients referred for coronary angiography at four
centres: the Cleveland Clinic Foundation (303), the Hungarian Institute of Cardiology in
Budapest (294), the University Hospitals of Zurich and Basel (123) and the V.A. Medical Center
in Long Beach (200).  Each centre is a hospital, so the heterogeneity between them is real:
the Swiss centre's patients are 94% diseased against 36% in Budapest, and the Swiss and Long
Beach files write a cholesterol of 0 where none was measured.  The four ``processed.*.data``
files ship unchanged in ``securefed/data/resources/heart/raw/`` (provenance and citation in
``securefed/data/resources/heart/ATTRIBUTION.md``).

:func:`write_heart_federation` turns them into a federation directory (schema, one training
and one test CSV per hospital, ``federation.toml``), the form in which a consortium brings
its own data; the directory it writes with the defaults ships as package data
(:func:`heart_federation_path`), and a test checks that the shipped files are exactly what it
writes.  Choices made, and why:

* target ``disease = yes`` when the angiographic status ``num`` is 1-4 (more than 50%
  narrowing of a major vessel), ``no`` when it is 0: the binary task of every study of these
  data since Detrano et al. (1989);
* features: the 13 standard attributes less ``ca`` (vessels coloured by fluoroscopy) and
  ``thal`` (thallium scan), missing for 66% and 53% of the 920 patients: imputing most of a
  column from a federated mean would add noise, not information.  ``slope`` (34% missing)
  stays; categorical attributes are written with readable categories;
* the Swiss and Long Beach hospitals declare ``chol = 0`` (and Long Beach ``trestbps = 0``,
  one patient) as their code for "not measured" in the federation file; every other value
  lies within the schema's plausible ranges;
* each hospital keeps 30% of its patients, stratified by diagnosis and drawn with
  ``numpy.random.default_rng(seed)`` (``seed=0``), as its own test set.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from securefed.data.dataset import FederatedDataset
from securefed.errors import ConfigurationError

__all__ = [
    "HEART_SITES",
    "HEART_COLUMNS",
    "load_heart_raw",
    "write_heart_federation",
    "heart_federation_path",
    "heart_hospitals",
]

#: hospital name -> raw file of the UCI archive (in the order of the federation file)
HEART_SITES = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "long-beach-va": "processed.va.data",
}

#: the 14 columns of the processed files, in order
HEART_COLUMNS = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
                 "oldpeak", "slope", "ca", "thal", "num")

_FEATURES = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
             "oldpeak", "slope")

_CATEGORIES = {
    "sex": {0: "female", 1: "male"},
    "cp": {1: "typical-angina", 2: "atypical-angina", 3: "non-anginal", 4: "asymptomatic"},
    "fbs": {0: "no", 1: "yes"},
    "restecg": {0: "normal", 1: "st-t-abnormality", 2: "lv-hypertrophy"},
    "exang": {0: "no", 1: "yes"},
    "slope": {1: "upsloping", 2: "flat", 3: "downsloping"},
}

#: hospital -> its codes for "not measured" (agreed column -> code), declared in the
#: federation file
_MISSING_CODES = {"switzerland": {"chol": 0}, "long-beach-va": {"chol": 0, "trestbps": 0}}

_SCHEMA = """\
# Agreed schema of the UCI Heart Disease federation (written by
# securefed.data.heart.write_heart_federation; provenance in ../ATTRIBUTION.md).
# Plausible ranges (min/max) are in the agreed unit; a value outside is an input error.

[target]
name = "disease"
positive = "yes"   # angiographic disease status num = 1-4 (> 50% narrowing of a major vessel)
negative = "no"    # num = 0

[features.age]
type = "numeric"
unit = "years"
min = 18
max = 100

[features.sex]
type = "categorical"
categories = ["female", "male"]

[features.cp]
type = "categorical"
categories = ["typical-angina", "atypical-angina", "non-anginal", "asymptomatic"]
description = "chest pain type"

[features.trestbps]
type = "numeric"
unit = "mmHg"
min = 60
max = 250
description = "resting blood pressure on admission"

[features.chol]
type = "numeric"
unit = "mg/dL"
min = 80
max = 700
description = "serum cholesterol"

[features.fbs]
type = "categorical"
categories = ["no", "yes"]
description = "fasting blood sugar above 120 mg/dL"

[features.restecg]
type = "categorical"
categories = ["normal", "st-t-abnormality", "lv-hypertrophy"]
description = "resting electrocardiogram"

[features.thalach]
type = "numeric"
unit = "beats/min"
min = 40
max = 230
description = "maximum heart rate achieved in the exercise test"

[features.exang]
type = "categorical"
categories = ["no", "yes"]
description = "exercise-induced angina"

[features.oldpeak]
type = "numeric"
unit = "mm"
min = -5
max = 10
description = "ST depression induced by exercise relative to rest"

[features.slope]
type = "categorical"
categories = ["upsloping", "flat", "downsloping"]
description = "slope of the peak exercise ST segment"
"""


def _raw_dir():
    return resources.files("securefed.data") / "resources" / "heart" / "raw"


def heart_federation_path() -> Path:
    """The ``federation.toml`` of the bundled four-hospital Heart Disease federation."""
    path = Path(str(resources.files("securefed.data") / "resources" / "heart" / "federation"
                    / "federation.toml"))
    if not path.is_file():  # pragma: no cover - only for an installation without package data
        raise ConfigurationError(f"the bundled heart federation is missing: {path}")
    return path


def load_heart_raw(site: str) -> pd.DataFrame:
    """One centre's ``processed.*.data`` file as a table of floats (``?`` as NaN), with the
    columns :data:`HEART_COLUMNS`."""
    if site not in HEART_SITES:
        raise ConfigurationError(f"unknown heart site {site!r}; valid: {list(HEART_SITES)}")
    with (_raw_dir() / HEART_SITES[site]).open("r", encoding="ascii") as fh:
        return pd.read_csv(fh, header=None, names=list(HEART_COLUMNS), na_values=["?"],
                           dtype=np.float64)


def _agreed_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """Readable categories, integral numbers without ``.0``, NA where missing."""
    out = {}
    for col in _FEATURES:
        values = raw[col]
        if col in _CATEGORIES:
            out[col] = [("NA" if np.isnan(v) else _CATEGORIES[col][int(v)]) for v in values]
        else:
            out[col] = ["NA" if np.isnan(v) else (str(int(v)) if float(v).is_integer() else repr(float(v)))
                        for v in values]
    out["disease"] = np.where(raw["num"].to_numpy() > 0, "yes", "no")
    return pd.DataFrame(out)


def _split(y: np.ndarray, *, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A stratified test mask: ``round(test_fraction * n_c)`` patients of each class."""
    mask = np.zeros(len(y), dtype=bool)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        mask[rng.choice(idx, size=int(round(test_fraction * len(idx))), replace=False)] = True
    return mask


def write_heart_federation(directory: str | Path, *, test_fraction: float = 0.3, seed: int = 0) -> Path:
    """Write the four hospitals as a federation directory; returns its ``federation.toml``.

    Files: ``schema.toml``, ``<hospital>_train.csv`` and ``<hospital>_test.csv`` for each of
    :data:`HEART_SITES`, and ``federation.toml`` (see the module docstring for the choices).
    Patients keep the order of the source file within each CSV file.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigurationError(f"test_fraction must be in (0, 1), got {test_fraction}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = [
        "# The UCI Heart Disease data (Janosi, Steinbrunn, Pfisterer, Detrano 1988; CC BY 4.0),",
        "# one hospital per centre.  Written by securefed.data.heart.write_heart_federation(",
        f"# directory, test_fraction={test_fraction}, seed={seed}); provenance in ../ATTRIBUTION.md.",
        'name = "uci-heart"',
        'schema = "schema.toml"',
    ]
    (out / "schema.toml").write_text(_SCHEMA, encoding="utf-8")
    for site in HEART_SITES:
        raw = load_heart_raw(site)
        table = _agreed_rows(raw)
        test = _split((raw["num"].to_numpy() > 0).astype(int), test_fraction=test_fraction, rng=rng)
        table[~test].to_csv(out / f"{site}_train.csv", index=False, lineterminator="\n")
        table[test].to_csv(out / f"{site}_test.csv", index=False, lineterminator="\n")
        lines += ["", f"[hospitals.{site}]", f'train = "{site}_train.csv"', f'test = "{site}_test.csv"']
        codes = _MISSING_CODES.get(site)
        if codes:
            lines.append("missing = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in codes.items())
                         + " }  # this centre's code for 'not measured'")
    path = out / "federation.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def heart_hospitals() -> FederatedDataset:
    """``load_federation(heart_federation_path())``: the four hospitals, each with its own
    test patients."""
    from securefed.data.federation import load_federation

    return load_federation(heart_federation_path())
