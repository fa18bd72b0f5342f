"""The agreed schema: what every hospital's table must look like after harmonisation.

A :class:`Schema` names the target column and its positive code, and lists each feature with
its type (numeric or categorical), its unit (numeric) or its categories (categorical).  It is
the one thing the hospitals of a federation agree on before training; each hospital maps its
own export format onto it (see :mod:`securefed.data.formats`).

Categorical features are one-hot encoded by :meth:`Schema.encoded_feature_names`'s rule:
a feature with two categories becomes one indicator column ``name=<second category>``
(``sex=male``), a feature with three or more becomes one indicator per category.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from securefed.errors import ConfigurationError, InvalidDataError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

__all__ = ["Feature", "Schema", "ExportFormat", "NUMERIC", "CATEGORICAL"]

NUMERIC = "numeric"
CATEGORICAL = "categorical"
FeatureKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Feature:
    """One column of the agreed schema.

    ``unit`` is the agreed unit of a numeric feature (``"mg/dL"``); ``quantity`` names what is
    measured when a unit conversion depends on it (glucose: mg/dL <-> mmol/L needs the molar
    mass of glucose).  ``categories`` lists the agreed codes of a categorical feature, in the
    order used for encoding.  ``min``/``max`` bound the plausible values of a numeric feature
    in the agreed unit (inclusive; ``None``: no bound): a value outside is an input error,
    not a patient (an age of -40 is a typing or export mistake).
    """

    name: str
    kind: FeatureKind = NUMERIC
    unit: str | None = None
    categories: tuple[str, ...] = ()
    quantity: str | None = None
    description: str = ""
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"feature name must be a non-empty string, got {self.name!r}")
        if self.kind not in (NUMERIC, CATEGORICAL):
            raise ConfigurationError(
                f"feature {self.name!r}: type must be 'numeric' or 'categorical', got {self.kind!r}"
            )
        cats = tuple(str(c) for c in self.categories)
        object.__setattr__(self, "categories", cats)
        if self.kind == CATEGORICAL:
            if len(cats) < 2:
                raise ConfigurationError(
                    f"feature {self.name!r}: a categorical feature needs at least 2 categories, "
                    f"got {list(cats)}"
                )
            if len(set(cats)) != len(cats):
                raise ConfigurationError(f"feature {self.name!r}: repeated categories in {list(cats)}")
        elif cats:
            raise ConfigurationError(
                f"feature {self.name!r}: categories given for a numeric feature ({list(cats)})"
            )
        for label in ("min", "max"):
            bound = getattr(self, label)
            if bound is None:
                continue
            if self.kind != NUMERIC:
                raise ConfigurationError(
                    f"feature {self.name!r}: {label} given for a categorical feature ({bound!r})")
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound != bound:
                raise ConfigurationError(
                    f"feature {self.name!r}: {label} must be a number, got {bound!r}")
            object.__setattr__(self, label, float(bound))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigurationError(
                f"feature {self.name!r}: min {self.min:g} is above max {self.max:g}")

    def out_of_range(self, values: np.ndarray) -> np.ndarray:
        """True where a (present) value lies outside ``[min, max]``; NaN is never out of range."""
        bad = np.zeros(values.shape, dtype=bool)
        if self.min is not None:
            bad |= values < self.min
        if self.max is not None:
            bad |= values > self.max
        return bad

    @property
    def range_text(self) -> str:
        """The declared range as text (``"[0, 120] years"``, ``">= 0 mg/dL"``)."""
        unit = f" {self.unit}" if self.unit else ""
        if self.min is not None and self.max is not None:
            return f"[{self.min:g}, {self.max:g}]{unit}"
        if self.min is not None:
            return f">= {self.min:g}{unit}"
        return f"<= {self.max:g}{unit}"

    @property
    def encoded_names(self) -> tuple[str, ...]:
        """Column names this feature takes after one-hot encoding."""
        if self.kind == NUMERIC:
            return (self.name,)
        if len(self.categories) == 2:
            return (f"{self.name}={self.categories[1]}",)
        return tuple(f"{self.name}={c}" for c in self.categories)


@dataclass(frozen=True)
class ExportFormat:
    """How one hospital's export differs from the agreed schema, written as decoding tables.

    ``rename`` maps a local column name to the agreed one; ``units`` maps an agreed numeric
    feature to the unit the hospital exports it in; ``codes`` maps an agreed column (a
    categorical feature or the target) to a ``{local code: agreed code}`` table; ``missing``
    maps an agreed feature to the local codes that mean "not measured" at this hospital (a
    site that writes ``0`` for an unmeasured cholesterol: ``{"chol": ("0",)}``; a numeric code
    also matches the same number written otherwise, ``0.0``).  Anything not listed is already
    in the agreed form.  The empty format (``ExportFormat()``) is the agreed format itself.
    """

    name: str = "agreed"
    rename: Mapping[str, str] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    codes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    missing: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def is_agreed(self) -> bool:
        """True when the hospital already exports in the agreed schema."""
        return not (self.rename or self.units or self.codes or self.missing)

    def summary(self) -> str:
        """One line naming what differs (``"glu in mmol/L; 8 columns renamed; type coded 1/0"``)."""
        if self.is_agreed:
            return "agreed schema"
        parts = [f"{c} in {u}" for c, u in self.units.items()]
        if self.rename:
            parts.append(f"{len(self.rename)} columns renamed")
        for col, table in self.codes.items():
            parts.append(f"{col} coded {'/'.join(table)}")
        for col, codes in self.missing.items():
            parts.append(f"{col} = {'/'.join(codes)} means missing")
        return "; ".join(parts)


@dataclass(frozen=True)
class Schema:
    """The agreed table layout: target name and codes, and each feature's type and unit.

    >>> s = Schema(target="dx", positive="yes", negative="no",
    ...            features=(Feature("age", unit="years"),
    ...                      Feature("sex", kind="categorical", categories=("female", "male"))))
    >>> s.encoded_feature_names
    ('age', 'sex=male')
    """

    target: str
    positive: str
    features: tuple[Feature, ...]
    negative: str | None = None
    sites: Mapping[str, ExportFormat] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "positive", str(self.positive))
        if self.negative is not None:
            object.__setattr__(self, "negative", str(self.negative))
        if not self.features:
            raise ConfigurationError("a schema needs at least one feature, got none")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"repeated feature names in schema: {names}")
        if self.target in names:
            raise ConfigurationError(f"target {self.target!r} is also listed as a feature")
        if self.negative is not None and self.negative == self.positive:
            raise ConfigurationError(
                f"positive and negative target codes must differ, got {self.positive!r} twice"
            )

    # -- views -------------------------------------------------------------------------
    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def columns(self) -> tuple[str, ...]:
        """Agreed column names: the features, then the target."""
        return (*self.feature_names, self.target)

    @property
    def encoded_feature_names(self) -> tuple[str, ...]:
        """Model input names after one-hot encoding (see the module docstring)."""
        return tuple(n for f in self.features for n in f.encoded_names)

    @property
    def numeric_mask(self) -> tuple[bool, ...]:
        """For each encoded column: True for a numeric feature, False for an indicator."""
        return tuple(f.kind == NUMERIC for f in self.features for _ in f.encoded_names)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise ConfigurationError(f"unknown feature {name!r}; schema has {list(self.feature_names)}")

    @property
    def target_codes(self) -> tuple[str, ...]:
        return (self.positive,) if self.negative is None else (self.negative, self.positive)

    def describe(self) -> str:
        lines = [f"target {self.target!r}: positive = {self.positive!r}"
                 + (f", negative = {self.negative!r}" if self.negative is not None else "")]
        for f in self.features:
            if f.kind == NUMERIC:
                rng = "" if f.min is None and f.max is None else f", plausible {f.range_text}"
                lines.append(f"  {f.name}: numeric" + (f" [{f.unit}]" if f.unit else "") + rng)
            else:
                lines.append(f"  {f.name}: categorical {list(f.categories)}")
        return "\n".join(lines)

    # -- files -------------------------------------------------------------------------
    @classmethod
    def from_toml(cls, path: str | Path) -> Schema:
        """Read a schema file (TOML; see ``docs/data.md`` and ``examples/data/schema.toml``).

        Layout::

            [target]
            name = "diabetes"
            positive = "yes"
            negative = "no"          # optional: any other value is then an error

            [features.age]
            type = "numeric"
            unit = "years"

            [features.sex]
            type = "categorical"
            categories = ["female", "male"]

            [features.chol]
            type = "numeric"
            unit = "mg/dL"
            min = 50                 # optional plausible range, in the agreed unit
            max = 700

            [sites.clinic-b]         # optional: how one site's export differs
            rename = { fpg_mmol = "glucose" }
            units = { glucose = "mmol/L" }
            codes.sex = { F = "female", M = "male" }
            missing = { chol = 0 }   # codes that mean "not measured" at this site
        """
        path = Path(path)
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise InvalidDataError(f"{path}: schema file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidDataError(f"{path}: not valid TOML ({exc})") from None
        try:
            return cls.from_dict(raw, name=path.name)
        except (ConfigurationError, InvalidDataError) as exc:
            raise InvalidDataError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, name: str = "") -> Schema:
        """Build a schema from the parsed form of a schema file."""
        unknown = set(raw) - {"target", "features", "sites"}
        if unknown:
            raise InvalidDataError(
                f"unknown top-level keys {sorted(unknown)}; expected 'target', 'features', 'sites'"
            )
        target = raw.get("target")
        if not isinstance(target, Mapping) or "name" not in target or "positive" not in target:
            raise InvalidDataError(
                "the [target] table must give 'name' and 'positive', "
                f"got {dict(target) if isinstance(target, Mapping) else target!r}"
            )
        feats_raw = raw.get("features")
        if not isinstance(feats_raw, Mapping) or not feats_raw:
            raise InvalidDataError("the schema needs a [features.<name>] table for each feature, got none")
        features = []
        for fname, spec in feats_raw.items():
            if not isinstance(spec, Mapping):
                raise InvalidDataError(f"[features.{fname}] must be a table, got {spec!r}")
            kind = spec.get("type", NUMERIC)
            extra = set(spec) - {"type", "unit", "categories", "quantity", "description",
                                 "min", "max"}
            if extra:
                raise InvalidDataError(f"[features.{fname}]: unknown keys {sorted(extra)}; "
                                       "expected type, unit, categories, quantity, description, "
                                       "min, max")
            try:
                features.append(
                    Feature(
                        name=str(fname),
                        kind=kind,
                        unit=spec.get("unit"),
                        categories=tuple(str(c) for c in spec.get("categories", ())),
                        quantity=spec.get("quantity"),
                        description=str(spec.get("description", "")),
                        min=spec.get("min"),
                        max=spec.get("max"),
                    )
                )
            except ConfigurationError as exc:
                raise InvalidDataError(f"[features.{fname}]: {exc}") from None
        sites = {}
        for site, spec in (raw.get("sites") or {}).items():
            if not isinstance(spec, Mapping):
                raise InvalidDataError(f"[sites.{site}] must be a table, got {spec!r}")
            extra = set(spec) - {"rename", "units", "codes", "missing"}
            if extra:
                raise InvalidDataError(f"[sites.{site}]: unknown keys {sorted(extra)}; "
                                       "expected rename, units, codes, missing")
            sites[str(site)] = ExportFormat(
                name=f"site {site}",
                rename={str(k): str(v) for k, v in spec.get("rename", {}).items()},
                units={str(k): str(v) for k, v in spec.get("units", {}).items()},
                codes={
                    str(col): {str(k): str(v) for k, v in table.items()}
                    for col, table in spec.get("codes", {}).items()
                },
                missing=parse_missing_codes(spec.get("missing", {}), where=f"[sites.{site}]"),
            )
        neg = target.get("negative")
        schema = cls(
            target=str(target["name"]),
            positive=str(target["positive"]),
            negative=None if neg is None else str(neg),
            features=tuple(features),
            sites=sites,
            name=name,
        )
        for site, fmt in sites.items():
            _check_site(schema, site, fmt)
        return schema


def missing_code_text(value: Any) -> str:
    """A declared missing code as text: integral numbers lose their ``.0`` (``0.0`` -> ``"0"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidDataError(f"a missing code must be a number or a string, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_missing_codes(raw: Any, *, where: str) -> dict[str, tuple[str, ...]]:
    """``{column: code or [codes]}`` from a schema or federation file, codes as text."""
    if not isinstance(raw, Mapping):
        raise InvalidDataError(
            f"{where} missing must be a table {{column = code or [codes]}}, got {raw!r}")
    out: dict[str, tuple[str, ...]] = {}
    for col, codes in raw.items():
        values = codes if isinstance(codes, list) else [codes]
        try:
            out[str(col)] = tuple(missing_code_text(v) for v in values)
        except InvalidDataError as exc:
            raise InvalidDataError(f"{where} missing.{col}: {exc}") from None
        if not out[str(col)]:
            raise InvalidDataError(f"{where} missing.{col}: give at least one code, got []")
    return out


def check_site_format(schema: Schema, site: str, fmt: ExportFormat) -> None:
    """Public form of the site-table check (a federation file adds ``missing`` codes)."""
    _check_site(schema, site, fmt)


def _check_site(schema: Schema, site: str, fmt: ExportFormat) -> None:
    """A site table may only name schema columns, units of numeric features, codes of
    categorical features or the target."""
    bad = [a for a in fmt.rename.values() if a not in schema.columns]
    if bad:
        raise InvalidDataError(
            f"[sites.{site}] rename maps to unknown columns {bad}; schema columns: {list(schema.columns)}"
        )
    numeric = {f.name for f in schema.features if f.kind == NUMERIC}
    bad = [c for c in fmt.units if c not in numeric]
    if bad:
        raise InvalidDataError(f"[sites.{site}] units given for {bad}, expected numeric features {sorted(numeric)}")
    coded = {f.name for f in schema.features if f.kind == CATEGORICAL} | {schema.target}
    bad = [c for c in fmt.codes if c not in coded]
    if bad:
        raise InvalidDataError(
            f"[sites.{site}] codes given for {bad}, expected categorical features or the target {sorted(coded)}"
        )
    bad = [c for c in fmt.missing if c not in schema.feature_names]
    if bad:
        raise InvalidDataError(
            f"[sites.{site}] missing codes given for {bad}, expected features "
            f"{list(schema.feature_names)} (a missing target is never allowed)"
        )
    for col, table in fmt.codes.items():
        agreed = schema.target_codes if col == schema.target else schema.feature(col).categories
        if col == schema.target and schema.negative is None:
            continue
        wrong = sorted({v for v in table.values() if v not in agreed})
        if wrong:
            raise InvalidDataError(
                f"[sites.{site}] codes.{col} maps to {wrong}, which are not agreed codes {list(agreed)}"
            )
