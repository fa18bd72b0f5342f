"""Load a user's own federation: per-hospital CSV files (or one CSV with a site column) plus
a small TOML schema file.

Every file is read and checked completely before anything is returned, and every problem is
reported with the file, the 1-based data row as in the file (the header line is not counted;
data row 1 is the second line) and the column: a missing target or feature column, a
non-numeric value in a numeric column, an unknown category or target code, a missing target
value, an empty hospital.  A hospital whose patients all have the same diagnosis still loads,
with a :class:`~securefed.data.dataset.SingleClassWarning`.  Empty cells and the tokens in
:data:`~securefed.data.formats.NA_TOKENS` (``NA``, ``NaN``, ``?`` ...) in a feature column
are missing values, filled later from federated means (see :mod:`securefed.data.standardise`).

A site that exports differently (other column names, glucose in mmol/L, other codes) is
described in the schema file's ``[sites.<name>]`` table and harmonised on load.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from securefed.data.dataset import DataWarning, FederatedDataset, Hospital, SingleClassWarning
from securefed.data.formats import ProblemLog, harmonise_table
from securefed.data.schema import ExportFormat, Schema
from securefed.errors import ConfigurationError, InvalidDataError

__all__ = ["load_csv_federation", "read_csv_text"]

PathLike = str | Path


def read_csv_text(path: Path, log: ProblemLog) -> pd.DataFrame | None:
    """A CSV file with every cell as text (nothing guessed, nothing converted)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                           skipinitialspace=True)
    except FileNotFoundError:
        log.add(str(path), None, None, "file not found")
    except pd.errors.EmptyDataError:
        log.add(str(path), None, None, "file is empty (no header line)")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        log.add(str(path), None, None, f"not a readable CSV file ({exc})")
    return None


def load_csv_federation(
    paths_or_single_csv: PathLike | Sequence[PathLike],
    *,
    schema_path: PathLike,
    site_column: str | None = None,
    test_path: PathLike | None = None,
    test_site: str | None = None,
) -> FederatedDataset:
    """Read hospitals from CSV files and check them against the schema file.

    ``paths_or_single_csv``: a list of CSV files, one hospital each, named by the file stem
    (``data/clinic-a.csv`` -> ``clinic-a``); or one CSV file with ``site_column`` naming each
    row's hospital (then every file given is split by that column).  ``test_path``: a CSV
    file of held-out patients (in the agreed schema, or in the format of the site named by
    its stem); ``test_site``: with ``site_column``, the site whose rows form the test set.
    Without either, call ``prepare(test_fraction=...)``.

    Raises :class:`~securefed.errors.InvalidDataError` listing every problem found (file,
    row, column); returns nothing partially loaded.
    """
    schema = Schema.from_toml(schema_path)
    if isinstance(paths_or_single_csv, (str, Path)):
        paths = [Path(paths_or_single_csv)]
    else:
        paths = [Path(p) for p in paths_or_single_csv]
    if not paths:
        raise ConfigurationError("no CSV files given; expected at least one path")
    if test_site is not None and site_column is None:
        raise ConfigurationError("test_site needs site_column (the column naming each row's site)")
    log = ProblemLog()
    frames = {p: read_csv_text(p, log) for p in paths}

    # (hospital name, source file, table, file row numbers)
    parts: list[tuple[str, str, pd.DataFrame, np.ndarray]] = []
    if site_column is None:
        stems = [p.stem for p in paths]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise ConfigurationError(f"two files give the same hospital name {dup}; rename one")
        for p, df in frames.items():
            if df is None:
                continue
            parts.append((p.stem, str(p), df, np.arange(1, len(df) + 1)))
        for site in schema.sites:
            if site not in stems and (test_path is None or Path(test_path).stem != site):
                warnings.warn(f"{schema_path}: [sites.{site}] matches no file; files: {stems}",
                              DataWarning, stacklevel=2)
    else:
        seen: dict[str, list[str]] = {}
        for p, df in frames.items():
            if df is None:
                continue
            if site_column not in df.columns:
                log.add(str(p), None, site_column,
                        f"site column missing; columns present: {list(df.columns)}")
                continue
            sites = df[site_column].str.strip()
            for i in np.flatnonzero((sites == "").to_numpy())[: log.show]:
                log.add(str(p), int(i) + 1, site_column, "site name is empty")
            for site in pd.unique(sites[sites != ""]):
                rows = np.flatnonzero((sites == site).to_numpy())
                parts.append((str(site), str(p), df.iloc[rows].drop(columns=[site_column])
                              .reset_index(drop=True), rows + 1))
                seen.setdefault(str(site), []).append(str(p))
        for site, files in seen.items():
            if len(files) > 1:
                log.add(files[1], None, site_column,
                        f"site {site!r} appears in several files {files}; give each site one file")
        for site in schema.sites:
            if site not in seen and log.problems == []:
                log.add(", ".join(str(p) for p in paths), None, site_column,
                        f"hospital {site!r} (declared in {Path(schema_path).name}) has no rows")
        if test_site is not None and test_site not in seen and not log.problems:
            log.add(", ".join(str(p) for p in paths), None, site_column,
                    f"test_site {test_site!r} has no rows; sites present: {sorted(seen)}")

    harmonised: list[tuple[str, str, pd.DataFrame, np.ndarray, pd.DataFrame | None]] = []
    for name, source, df, rows in parts:
        if len(df) == 0:
            log.add(source, None, None, f"hospital {name!r} is empty (no data rows)")
            continue
        fmt = schema.sites.get(name, ExportFormat())
        out = harmonise_table(df, fmt, schema, source=source, row_numbers=rows, log=log)
        harmonised.append((name, source, df, rows, out))

    test_table = None
    if test_path is not None:
        tp = Path(test_path)
        tdf = read_csv_text(tp, log)
        if tdf is not None:
            if len(tdf) == 0:
                log.add(str(tp), None, None, "test file has no data rows")
            else:
                test_table = harmonise_table(tdf, schema.sites.get(tp.stem, ExportFormat()),
                                             schema, source=str(tp), log=log)
    log.raise_if_any()

    hospitals, tables = [], []
    extra_cols: dict[str, list[str]] = {}
    for name, source, df, rows, out in harmonised:
        assert out is not None
        if test_site is not None and name == test_site:
            test_table = out
            continue
        fmt = schema.sites.get(name, ExportFormat())
        known = set(schema.columns) | set(fmt.rename)
        unused = [c for c in df.columns if c not in known]
        if unused:
            extra_cols[source] = unused
        y = out[schema.target].to_numpy()
        if y.min() == y.max():
            label = schema.positive if y[0] == 1 else (schema.negative or "not positive")
            warnings.warn(
                f"{source}: hospital {name!r} has one class only (all {len(y)} patients "
                f"{schema.target} = {label!r}); it still takes part",
                SingleClassWarning, stacklevel=2,
            )
        hospitals.append(Hospital(name=name, table=df, export_format=fmt, source=source,
                                  row_numbers=rows, notes={}))
        tables.append(out)
    if not hospitals:
        raise InvalidDataError(
            f"no training hospital left in {[str(p) for p in paths]} after taking test_site {test_site!r}"
        )
    for source, cols in extra_cols.items():
        warnings.warn(f"{source}: columns not in the schema are ignored: {cols}", DataWarning,
                      stacklevel=2)
    ds = FederatedDataset(
        hospitals=tuple(hospitals),
        schema=schema,
        test=test_table,
        description=f"{len(hospitals)} hospitals from CSV ({', '.join(p.name for p in paths)}), "
                    f"schema {Path(schema_path).name}",
    )
    ds.__dict__["harmonised_tables"] = tuple(tables)  # already harmonised above; keep the work
    return ds
