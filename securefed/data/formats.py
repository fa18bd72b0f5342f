"""Hospital export formats and harmonisation into the agreed schema.

Each hospital exports its records in its own way: other column names, glucose in mmol/L
instead of mg/dL, diagnosis coded ``1``/``0`` instead of ``Yes``/``No``.  Harmonisation runs
*at the hospital*, on its own rows, and maps the export onto the agreed :class:`Schema`
(renames, unit conversion, category recoding); missing values stay missing (NaN) and are
filled later from federated statistics (:mod:`securefed.data.standardise`), so no row ever
leaves its hospital.

:func:`export_table` is the inverse map, used by the simulations to write a hospital's rows
in its own format; :func:`harmonise_table` undoes it to floating-point precision (the unit
maps are exact affine maps, see :mod:`securefed.data.units`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from securefed.data.schema import CATEGORICAL, ExportFormat, Feature, Schema
from securefed.data.units import convert, normalise_unit
from securefed.errors import InvalidDataError

__all__ = [
    "ExportFormat",
    "Problem",
    "ProblemLog",
    "export_table",
    "harmonise_table",
    "simulated_format",
    "FORMAT_STYLES",
    "NA_TOKENS",
]

#: Cell contents read as "missing" in files (besides an empty cell).
NA_TOKENS = frozenset({"", "NA", "N/A", "NaN", "nan", "NULL", "null", "None", "?", "."})


@dataclass(frozen=True)
class Problem:
    """One bad cell (or row, column or file): where it is and what is wrong.

    ``row`` is the row number as an editor or a spreadsheet shows it: the line number in the
    file, the header being row 1 and the first patient row 2 (blank lines count as lines but
    are never rows of patients).  For an in-memory table it is the row the patient would have
    in a CSV file written with a header.  ``None``: the problem concerns a whole column or file.
    """

    source: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [self.source]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}"


@dataclass
class ProblemLog:
    """Collects problems so that every file is checked before anything is returned.

    The first ``keep`` problems are kept (``.problems`` of the error); any beyond are only
    counted, so the count in the message is always the true number of bad cells.  The
    message lists the first ``show``.
    """

    problems: list[Problem] = field(default_factory=list)
    show: int = 20
    keep: int = 1000
    omitted: int = 0

    @property
    def count(self) -> int:
        """Every problem found, kept or only counted."""
        return len(self.problems) + self.omitted

    def add(self, source: str, row: int | None, column: str | None, message: str) -> None:
        if len(self.problems) < self.keep:
            self.problems.append(Problem(source, row, column, message))
        else:
            self.omitted += 1

    def add_cells(
        self,
        source: str,
        indices: np.ndarray,
        column: str | None,
        message: Callable[[int], str],
        *,
        row_of: Callable[[int], int],
    ) -> None:
        """One problem per table index in ``indices`` (messages built only for those kept)."""
        indices = np.asarray(indices)
        room = max(self.keep - len(self.problems), 0)
        for i in indices[:room]:
            self.problems.append(Problem(source, row_of(int(i)), column, message(int(i))))
        self.omitted += max(len(indices) - room, 0)

    def raise_if_any(self) -> None:
        if not self.problems and not self.omitted:
            return
        order = {src: i for i, src in reversed(list(enumerate(p.source for p in self.problems)))}
        self.problems.sort(key=lambda p: (order[p.source], -1 if p.row is None else p.row))
        total = self.count
        shown = "\n".join(f"  {p}" for p in self.problems[: self.show])
        more = total - min(self.show, len(self.problems))
        tail = f"\n  ... and {more} more" if more > 0 else ""
        first = self.problems[0]
        err = InvalidDataError(
            f"{first}" if total == 1
            else f"{total} problems in the input data, first: {first}\n{shown}{tail}"
        )
        err.problems = tuple(self.problems)  # type: ignore[attr-defined]
        err.count = total  # type: ignore[attr-defined]
        raise err


def _code_text(v: object) -> str:
    """A cell as text; integral floats lose their ``.0`` (a column of 1.0/0.0 reads as 1/0)."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def _decode(values: pd.Series, table: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised code lookup over the distinct values of a column.

    Returns ``(idx, text, miss, decoded)``: ``idx`` maps each cell to its distinct value
    (the last slot stands for NaN), and ``text``/``miss``/``decoded`` describe each distinct
    value (as in the file, whether it reads as missing, its agreed code).  The per-value work
    is done once, so a column of a million cells with a handful of codes costs one C pass.
    """
    idx, uniques = pd.factorize(values, use_na_sentinel=True)
    u_text = np.array([_code_text(v) for v in uniques] + [""], dtype=object)
    u_miss = np.array([t in NA_TOKENS for t in u_text[:-1]] + [True], dtype=bool)
    if table:  # a declared code table is complete: anything else is unknown
        u_dec = np.array([table.get(t) for t in u_text[:-1]] + [None], dtype=object)
    else:
        u_dec = np.array(list(u_text[:-1]) + [None], dtype=object)
    idx = np.where(idx < 0, len(uniques), idx)
    return idx, u_text, u_miss, u_dec


def _is_text(values: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype))


def _numeric_missing(values: pd.Series) -> np.ndarray:
    if not _is_text(values):
        return values.isna().to_numpy()
    idx, _, u_miss, _ = _decode(values, {})
    return u_miss[idx]


def _row_label(row_numbers: np.ndarray | None, i: int) -> int:
    """The file row of table row ``i`` (see :class:`Problem`): header = row 1."""
    return int(row_numbers[i]) if row_numbers is not None else i + 2


#: Out-of-range values that are typical "not measured" codes; the error then suggests
#: declaring the code for the site instead of fixing the value.
_SENTINELS = frozenset({0.0, -1.0, -9.0, -99.0, -999.0, 999.0, 9999.0})


def _declared_missing(values: pd.Series, codes: Sequence[str]) -> np.ndarray:
    """Cells holding one of a site's declared "not measured" codes (as text, or numerically)."""
    if not codes:
        return np.zeros(len(values), dtype=bool)
    text = values.astype(str).str.strip() if _is_text(values) else values.map(_code_text)
    mask = text.isin(list(codes)).to_numpy().copy()
    num_codes = [float(c) for c in codes if _is_number(c)]
    if num_codes:
        nums = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        mask |= np.isin(nums, num_codes)
    return mask


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def harmonise_table(
    table: pd.DataFrame,
    fmt: ExportFormat,
    schema: Schema,
    *,
    source: str = "hospital",
    row_numbers: Sequence[int] | np.ndarray | None = None,
    log: ProblemLog | None = None,
) -> pd.DataFrame | None:
    """Map one hospital's export onto the agreed schema.

    Returns a table with exactly ``schema.columns``: numeric features as float64 in the agreed
    unit (NaN where missing), categorical features as ``pandas.Categorical`` over the agreed
    categories (NaN where missing), and the target as int 0/1.  Columns not in the schema are dropped.

    Missing values are the tokens of :data:`NA_TOKENS` and the site's declared codes
    (``fmt.missing``).  Problems (missing column, non-numeric value in a numeric column, a
    value outside the schema's plausible range, unknown category or target code, missing
    target) name ``source``, the row (:class:`Problem`; ``row_numbers`` gives the file's row
    of each table row, else table row ``i`` is row ``i + 2``, as under a header line) and the
    column.  Without ``log`` the problems raise :class:`InvalidDataError`; with a ``log`` they
    are appended there and ``None`` is returned.
    """
    own_log = log is None
    log = ProblemLog() if log is None else log
    n_before = log.count
    rows = None if row_numbers is None else np.asarray(row_numbers)
    renamed = table.rename(columns=dict(fmt.rename))
    cols = list(renamed.columns)
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        log.add(source, None, dup[0], f"column appears more than once after renaming ({dup})")
    out: dict[str, object] = {}
    for col in schema.columns:
        if col not in renamed.columns:
            local = [k for k, v in fmt.rename.items() if v == col]
            what = "target" if col == schema.target else "feature"
            log.add(source, None, local[0] if local else col,
                    f"{what} column missing; columns present: {list(table.columns)}")
    if log.count > n_before:
        if own_log:
            log.raise_if_any()
        return None

    for feat in schema.features:
        raw = renamed[feat.name]
        if feat.kind == CATEGORICAL:
            decode = dict(fmt.codes.get(feat.name, {}))
            idx, u_text, u_miss, u_dec = _decode(raw, decode)
            u_miss = u_miss | np.isin(u_text, list(fmt.missing.get(feat.name, ())))
            cats = list(feat.categories)
            u_code = np.array([cats.index(d) if d in cats else -1 for d in u_dec], dtype=np.int64)
            u_code[u_miss] = -1
            u_bad = ~u_miss & (u_code < 0)
            expected = sorted(decode) if decode else cats
            log.add_cells(source, np.flatnonzero(u_bad[idx]), _local_name(fmt, feat.name),
                          lambda i, t=u_text, ix=idx, e=expected:
                              f"unknown category {t[ix[i]]!r}; expected one of {e}",
                          row_of=lambda i: _row_label(rows, i))
            out[feat.name] = pd.Categorical.from_codes(u_code[idx], categories=cats)
        else:
            out[feat.name] = _harmonise_numeric(raw, feat, fmt, source=source, rows=rows, log=log)

    decode_t = dict(fmt.codes.get(schema.target, {}))
    idx, u_text, u_miss, u_dec = _decode(renamed[schema.target], decode_t)
    target_local = _local_name(fmt, schema.target)
    log.add_cells(source, np.flatnonzero(u_miss[idx]), target_local,
                  lambda i: "target value missing", row_of=lambda i: _row_label(rows, i))
    if schema.negative is not None:
        u_bad = ~u_miss & ~np.isin(u_dec, np.array(schema.target_codes, dtype=object))
        expect = sorted(decode_t) if decode_t else list(schema.target_codes)
        log.add_cells(source, np.flatnonzero(u_bad[idx]), target_local,
                      lambda i: f"unknown target code {u_text[idx[i]]!r}; expected one of {expect}",
                      row_of=lambda i: _row_label(rows, i))
    out[schema.target] = (u_dec == schema.positive).astype(np.int64)[idx]

    if log.count > n_before:
        if own_log:
            log.raise_if_any()
        return None
    return pd.DataFrame(out, columns=list(schema.columns))


def _harmonise_numeric(
    raw: pd.Series,
    feat: Feature,
    fmt: ExportFormat,
    *,
    source: str,
    rows: np.ndarray | None,
    log: ProblemLog,
) -> np.ndarray:
    """One numeric column in the agreed unit: NaN where missing (an NA token or one of the
    site's declared codes); a non-number or a value outside the schema's plausible range is
    logged with its row."""
    local = _local_name(fmt, feat.name)
    declared = _declared_missing(raw, fmt.missing.get(feat.name, ()))
    miss = _numeric_missing(raw) | declared
    if _is_text(raw):
        nums = pd.to_numeric(raw.where(~pd.Series(miss, index=raw.index), None), errors="coerce")
    else:
        nums = raw.astype(np.float64).where(~pd.Series(declared, index=raw.index))
    arr = nums.to_numpy(np.float64, na_value=np.nan)
    log.add_cells(source, np.flatnonzero(~miss & ~np.isfinite(arr)), local,
                  lambda i: f"expected a number, got {raw.iloc[i]!r}",
                  row_of=lambda i: _row_label(rows, i))
    local_unit = fmt.units.get(feat.name)
    converted = local_unit is not None and normalise_unit(local_unit) != normalise_unit(feat.unit)
    if converted:
        arr = convert(arr, local_unit, feat.unit, quantity=feat.quantity or feat.name)
    if feat.min is not None or feat.max is not None:
        with np.errstate(invalid="ignore"):
            outside = np.flatnonzero(feat.out_of_range(arr))

        def message(i: int) -> str:
            value = str(raw.iloc[i]).strip()
            text = (f"{value} {local_unit} (= {arr[i]:.4g} {feat.unit})" if converted
                    else f"{value}")
            hint = ""
            if _is_number(value) and float(value) in _SENTINELS:
                hint = (f"; if {value} means 'not measured' at this site, declare it: "
                        f"missing = {{ {feat.name} = {value} }} for this hospital")
            return (f"{text} is outside the plausible range {feat.range_text} declared in the "
                    f"schema{hint}")

        log.add_cells(source, outside, local, message, row_of=lambda i: _row_label(rows, i))
    return arr


def _local_name(fmt: ExportFormat, agreed: str) -> str:
    for local, a in fmt.rename.items():
        if a == agreed:
            return local
    return agreed


def export_table(table: pd.DataFrame, fmt: ExportFormat, schema: Schema) -> pd.DataFrame:
    """Write a table in the agreed schema in a hospital's own export format (the inverse of
    :func:`harmonise_table`; the format's code and rename tables must be one-to-one)."""
    out = {}
    for feat in schema.features:
        col = table[feat.name]
        if feat.kind == CATEGORICAL:
            encode = {a: loc for loc, a in fmt.codes.get(feat.name, {}).items()}
            out[feat.name] = col.map(encode) if encode else col
        else:
            unit = fmt.units.get(feat.name)
            arr = col.to_numpy(np.float64)
            if unit is not None:
                arr = convert(arr, feat.unit, unit, quantity=feat.quantity or feat.name)
            out[feat.name] = arr
    encode_t = {a: loc for loc, a in fmt.codes.get(schema.target, {}).items()}
    neg = schema.negative if schema.negative is not None else "other"
    pair = np.array([encode_t.get(neg, neg), encode_t.get(schema.positive, schema.positive)], dtype=object)
    out[schema.target] = pair[(table[schema.target].to_numpy() == 1).astype(np.int64)]
    frame = pd.DataFrame(out, columns=list(schema.columns)).reset_index(drop=True)
    encode_names = {a: loc for loc, a in fmt.rename.items()}
    return frame.rename(columns=encode_names)


# -- simulated export styles ---------------------------------------------------------------

_SYNONYMS = {
    "npreg": "pregnancies", "glu": "plasma_glucose", "bp": "diastolic_bp",
    "skin": "triceps_skinfold", "bmi": "body_mass_index", "ped": "pedigree_function",
    "age": "age_years", "type": "diabetic", "glucose": "fasting_glucose",
    "hba1c": "glycated_haemoglobin", "sbp": "systolic_bp", "sex": "gender",
    "polyuria": "polyuria_reported", "polydipsia": "polydipsia_reported",
    "family_history": "family_history_dm", "diabetes": "dm_diagnosis",
}

#: The simulated export styles, in the order hospitals take them.
FORMAT_STYLES = ("si-lab", "registry", "legacy")


def _si_unit(feat) -> str | None:
    q = (feat.quantity or feat.name).lower()
    unit = normalise_unit(feat.unit)
    if q in ("glucose", "glu") and unit == "mg/dL":
        return "mmol/L"
    if q == "hba1c" and unit == "%":
        return "mmol/mol"
    if unit == "mm":
        return "cm"
    if unit == "mmHg":
        return "kPa"
    return None


def simulated_format(schema: Schema, style: str) -> ExportFormat:
    """The export format of one simulated style, for any schema.

    * ``"si-lab"``: SI units (glucose mmol/L, HbA1c mmol/mol IFCC, lengths in cm, pressures in
      kPa), descriptive column names (``glu`` -> ``plasma_glucose``), every category and the
      target coded by position ``0``/``1``/... (target: ``1`` = positive, ``0`` = negative);
    * ``"registry"``: upper-case column names, glucose in mmol/L, categories coded by their
      upper-case first letter where that is unambiguous (``Y``/``N``, ``F``/``M``), target
      ``POS``/``NEG``;
    * ``"legacy"``: column names prefixed ``pt_``, agreed units except age in months,
      categories coded ``1``/``2``/... , target ``DM``/``no DM``.
    """
    if style not in FORMAT_STYLES:
        raise InvalidDataError(f"unknown export style {style!r}; valid: {list(FORMAT_STYLES)}")
    rename: dict[str, str] = {}
    units: dict[str, str] = {}
    codes: dict[str, dict[str, str]] = {}
    for col in schema.columns:
        if style == "si-lab":
            local = _SYNONYMS.get(col, f"{col}_value")
        elif style == "registry":
            local = col.upper()
        else:
            local = f"pt_{col}"
        rename[local] = col
    for feat in schema.features:
        if feat.kind == CATEGORICAL:
            cats = feat.categories
            if style == "si-lab":
                local = [str(i) for i in range(len(cats))]
            elif style == "registry":
                local = [c[:1].upper() for c in cats]
                if len(set(local)) != len(local):
                    local = [c.upper() for c in cats]
            else:
                local = [str(i + 1) for i in range(len(cats))]
            codes[feat.name] = dict(zip(local, cats, strict=True))
        else:
            if style == "si-lab":
                u = _si_unit(feat)
            elif style == "registry":
                u = "mmol/L" if (_si_unit(feat) == "mmol/L") else None
            else:
                u = "months" if normalise_unit(feat.unit) == "years" else None
            if u is not None:
                units[feat.name] = u
    neg = schema.negative if schema.negative is not None else "other"
    target_local = {"si-lab": ("1", "0"), "registry": ("POS", "NEG"), "legacy": ("DM", "no DM")}
    pos_code, neg_code = target_local[style]
    codes[schema.target] = {pos_code: schema.positive, neg_code: neg}
    return ExportFormat(name=style, rename=rename, units=units, codes=codes)
