"""Read a user's own hospitals from CSV files, checked against a TOML schema file.

Two entry points: :func:`securefed.data.load_federation` reads a federation file (one per
consortium, naming each hospital's files; see :mod:`securefed.data.federation`), and
:func:`load_csv_federation` takes a list of CSV files, one hospital each, named by file stem
(or one CSV file with a site column).  Both read every file completely and check it before
anything is returned; every problem is reported with the file, the row and the column.

Rows are counted as an editor or a spreadsheet shows them: the row number is the line
number in the file, the header line being row 1 and the first patient row 2.  Blank lines
(empty or only spaces) are skipped but still counted, so the numbers stay those of the file;
a record spread over several lines by a quoted line break has the number of its first line.

Problems found: a file that is missing, empty, not in the declared text encoding (the error
names the ``encoding`` option to set) or not split by the declared delimiter (the error names
the delimiter the file seems to use); a row with more or fewer fields than the header; a
missing target or feature column; a non-numeric value in a numeric column; a value outside
the schema's plausible range (``min``/``max``); an unknown category or target code; a missing
target value; an empty hospital.  A hospital whose patients all have the same diagnosis
still loads, with a :class:`~securefed.data.dataset.SingleClassWarning`.  Empty cells, the
tokens of :data:`~securefed.data.formats.NA_TOKENS` (``NA``, ``NaN``, ``?`` ...) and a site's
declared missing codes are missing values, filled later from federated means (see
:mod:`securefed.data.standardise`).

A site that exports differently (other column names, glucose in mmol/L, other codes) is
described in the schema file's ``[sites.<name>]`` table and harmonised on load.
"""

from __future__ import annotations

import codecs
import csv
import io
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from securefed.data.dataset import DataWarning, FederatedDataset, Hospital, SingleClassWarning
from securefed.data.formats import ProblemLog, harmonise_table
from securefed.data.schema import ExportFormat, Schema
from securefed.errors import ConfigurationError, InvalidDataError

__all__ = ["load_csv_federation", "read_csv_table", "CsvTable", "check_encoding",
           "check_delimiter"]

PathLike = str | Path

#: How the error for a wrong encoding or delimiter says where to set it:
#: ``hint("encoding", "cp1252")`` -> ``'pass encoding="cp1252"'``.
OptionHint = Callable[[str, str], str]

_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}


def _api_hint(option: str, value: str) -> str:
    return f"pass {option}={value!r}"


def check_encoding(encoding: str, *, where: str = "encoding") -> str:
    """``encoding`` if Python knows it, else :class:`InvalidDataError` naming it."""
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise InvalidDataError(
            f"{where}: unknown text encoding {encoding!r}; expected a Python codec name such "
            "as 'utf-8', 'cp1252' or 'latin-1'") from None
    return encoding


def check_delimiter(delimiter: str, *, where: str = "delimiter") -> str:
    """``delimiter`` if it is one character other than a quote or a line break."""
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n":
        raise InvalidDataError(
            f"{where}: the delimiter must be one character such as ',' ';' or a tab, "
            f"got {delimiter!r}")
    return delimiter


@dataclass(frozen=True)
class CsvTable:
    """One CSV file as read: every cell as stripped text, and the file row of each record."""

    source: str
    frame: pd.DataFrame
    rows: np.ndarray  # row number in the file (header = row 1) of each record

    def take(self, mask: np.ndarray, *, drop: Sequence[str] = ()) -> tuple[pd.DataFrame, np.ndarray]:
        """The records where ``mask`` holds (with their row numbers), minus ``drop`` columns."""
        idx = np.flatnonzero(mask)
        return (self.frame.iloc[idx].drop(columns=list(drop)).reset_index(drop=True),
                self.rows[idx])


def _suggest_encoding(data: bytes, tried: str) -> str:
    """A likely encoding of ``data``: UTF-8 when it decodes, else Windows-1252 (what Excel
    writes on Western-European Windows), else Latin-1 (which decodes any byte)."""
    for candidate in ("utf-8", "cp1252"):
        if codecs.lookup(candidate).name == codecs.lookup(tried).name:
            continue
        try:
            data.decode(candidate)
        except UnicodeDecodeError:
            continue
        return candidate
    return "latin-1"


def _decode(data: bytes, source: str, encoding: str, log: ProblemLog, hint: OptionHint) -> str | None:
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding  # drop a BOM
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1
        guess = _suggest_encoding(data, encoding)
        log.add(source, row, None,
                f"not {encoding} text (byte 0x{data[exc.start]:02x} cannot be decoded); "
                f"if the file is in another encoding, {hint('encoding', guess)}")
        return None


def _records(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """``(row, cells)`` of every non-blank record; ``row`` is the line where it starts."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    out: list[tuple[int, list[str]]] = []
    previous_end = 0
    for record in reader:
        start, previous_end = previous_end + 1, reader.line_num
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # a blank line
        out.append((start, [cell.strip() for cell in record]))
    return out


def _other_delimiter(header: Sequence[str], delimiter: str, expected: Iterable[str]) -> str | None:
    """The delimiter the header seems to use instead of ``delimiter`` (``None``: it looks right).

    Suspected when none of the expected columns is in the header as read, and splitting it by
    another common delimiter gives several names, one of them expected (or, without expected
    names, when the header is one name that another delimiter splits).
    """
    expected = set(expected)
    if expected & set(header):
        return None
    if not expected and len(header) > 1:
        return None
    line = delimiter.join(header)
    for candidate in _DELIMITER_NAMES:
        if candidate == delimiter:
            continue
        names = [n.strip().strip('"') for n in line.split(candidate)]
        if len(names) > 1 and (not expected or expected & set(names)):
            return candidate
    return None


def read_csv_table(
    path: PathLike,
    log: ProblemLog,
    *,
    encoding: str = "utf-8",
    delimiter: str = ",",
    expected: Iterable[str] = (),
    hint: OptionHint = _api_hint,
) -> CsvTable | None:
    """Read a CSV file with every cell as text (nothing guessed, nothing converted).

    ``expected``: column names the file should have (used to recognise a wrong delimiter).
    ``hint`` says, in an error, where the user sets ``encoding`` or ``delimiter``.  Problems
    go to ``log`` (file and row named) and ``None`` is returned.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        log.add(source, None, None, "file not found")
        return None
    except OSError as exc:
        log.add(source, None, None, f"cannot be read ({exc.strerror or exc})")
        return None
    text = _decode(data, source, encoding, log, hint)
    if text is None:
        return None
    try:
        records = _records(text, delimiter)
    except csv.Error as exc:
        row = text[: text.find("\0")].count("\n") + 1 if "\0" in text else None
        log.add(source, row, None, f"not a readable CSV file ({exc})")
        return None
    if not records:
        log.add(source, None, None, "file is empty (no header line)")
        return None
    header_row, header = records[0]
    other = _other_delimiter(header, delimiter, expected)
    if other is not None:
        log.add(source, header_row, None,
                f"the header reads as {len(header)} column(s) {header[:4]} with "
                f"{_DELIMITER_NAMES.get(delimiter, repr(delimiter))} ({delimiter!r}) as the "
                f"delimiter, but the file looks {_DELIMITER_NAMES[other]}-separated "
                f"({other!r}); {hint('delimiter', other)}")
        return None
    header = [h if h else f"(unnamed column {j + 1})" for j, h in enumerate(header)]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        log.add(source, header_row, dup[0], f"column name appears more than once in the header ({dup})")
        return None
    body = records[1:]
    ragged = [(row, len(cells)) for row, cells in body if len(cells) != len(header)]
    for row, n in ragged[: log.keep]:
        log.add(source, row, None, f"{n} fields, expected {len(header)} as in the header (row {header_row})")
    log.omitted += max(len(ragged) - log.keep, 0)
    if ragged:
        return None
    columns = list(zip(*(cells for _, cells in body), strict=True)) if body else [()] * len(header)
    frame = pd.DataFrame({h: pd.array(list(col), dtype=object) for h, col in zip(header, columns, strict=True)},
                         columns=header).astype(str)
    return CsvTable(source=source, frame=frame, rows=np.array([r for r, _ in body], dtype=np.int64))


def expected_columns(schema: Schema, fmt: ExportFormat) -> tuple[str, ...]:
    """The column names a hospital exporting in ``fmt`` writes (local names where renamed)."""
    local = {agreed: loc for loc, agreed in fmt.rename.items()}
    return tuple(local.get(c, c) for c in schema.columns)


# -- the pieces of a federation ----------------------------------------------------------

@dataclass(frozen=True)
class Part:
    """One hospital's rows, as read, with where they came from and their export format."""

    name: str
    source: str
    table: pd.DataFrame
    rows: np.ndarray
    export_format: ExportFormat


@dataclass(frozen=True)
class HarmonisedPart:
    part: Part
    harmonised: pd.DataFrame


def harmonise_part(part: Part, schema: Schema, log: ProblemLog, *, what: str = "hospital") -> HarmonisedPart | None:
    """Harmonise one part; an empty one is a problem (``what`` names it in the message)."""
    if len(part.table) == 0:
        label = f"hospital {part.name!r}" if what == "hospital" else f"the {what} of {part.name!r}"
        log.add(part.source, None, None, f"{label} is empty (no data rows)")
        return None
    out = harmonise_table(part.table, part.export_format, schema, source=part.source,
                          row_numbers=part.rows, log=log)
    return None if out is None else HarmonisedPart(part, out)


def _parts_by_file(paths: Sequence[Path], tables: dict[Path, CsvTable | None],
                   schema: Schema) -> list[Part]:
    """One hospital per file, named by the file stem."""
    stems = [p.stem for p in paths]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise ConfigurationError(f"two files give the same hospital name {dup}; rename one")
    return [Part(p.stem, t.source, t.frame, t.rows, schema.sites.get(p.stem, ExportFormat()))
            for p, t in tables.items() if t is not None]


def _parts_by_site(paths: Sequence[Path], tables: dict[Path, CsvTable | None], schema: Schema,
                   *, site_column: str, log: ProblemLog) -> list[Part]:
    """One hospital per value of ``site_column``; each site must sit in one file."""
    parts: list[Part] = []
    seen: dict[str, list[str]] = {}
    for table in tables.values():
        if table is None:
            continue
        if site_column not in table.frame.columns:
            log.add(table.source, None, site_column,
                    f"site column missing; columns present: {list(table.frame.columns)}")
            continue
        sites = table.frame[site_column].str.strip()
        log.add_cells(table.source, np.flatnonzero((sites == "").to_numpy()), site_column,
                      lambda i: "site name is empty", row_of=lambda i, t=table: int(t.rows[i]))
        for site in pd.unique(sites[sites != ""]):
            frame, rows = table.take((sites == site).to_numpy(), drop=[site_column])
            parts.append(Part(str(site), table.source, frame, rows,
                              schema.sites.get(str(site), ExportFormat())))
            seen.setdefault(str(site), []).append(table.source)
    for site, files in seen.items():
        if len(files) > 1:
            log.add(files[1], None, site_column,
                    f"site {site!r} appears in several files {files}; give each site one file")
    return parts


def assemble(
    parts: Sequence[HarmonisedPart],
    schema: Schema,
    *,
    tests: dict[str, HarmonisedPart] | None = None,
    test: pd.DataFrame | None = None,
    description: str,
    name: str = "",
) -> FederatedDataset:
    """The dataset of already checked and harmonised parts; warns about one-class hospitals
    and ignored columns.  ``tests`` maps a hospital to its own test part."""
    tests = tests or {}
    hospitals = []
    for hp in parts:
        p = hp.part
        for src, frame in [(p.source, p.table)] + ([(tests[p.name].part.source, tests[p.name].part.table)]
                                                   if p.name in tests else []):
            known = set(expected_columns(schema, p.export_format)) | set(schema.columns)
            unused = [c for c in frame.columns if c not in known]
            if unused:
                warnings.warn(f"{src}: columns not in the schema are ignored: {unused}", DataWarning,
                              stacklevel=3)
        y = hp.harmonised[schema.target].to_numpy()
        if y.min() == y.max():
            label = schema.positive if y[0] == 1 else (schema.negative or "not positive")
            warnings.warn(
                f"{p.source}: hospital {p.name!r} has one class only (all {len(y)} patients "
                f"{schema.target} = {label!r}); it still takes part",
                SingleClassWarning, stacklevel=3,
            )
        own = tests.get(p.name)
        hospitals.append(Hospital(
            name=p.name, table=p.table, export_format=p.export_format, source=p.source,
            row_numbers=p.rows, notes={},
            test_table=None if own is None else own.part.table,
            test_source="" if own is None else own.part.source,
            test_row_numbers=None if own is None else own.part.rows,
        ))
    ds = FederatedDataset(hospitals=tuple(hospitals), schema=schema, test=test,
                          description=description, name=name)
    # harmonised above, with every problem collected; keep the work
    ds.__dict__["harmonised_tables"] = tuple(hp.harmonised for hp in parts)
    ds.__dict__["harmonised_test_tables"] = tuple(
        tests[hp.part.name].harmonised if hp.part.name in tests else None for hp in parts)
    return ds


def load_csv_federation(
    paths_or_single_csv: PathLike | Sequence[PathLike],
    *,
    schema_path: PathLike,
    site_column: str | None = None,
    test_path: PathLike | None = None,
    test_site: str | None = None,
    encoding: str = "utf-8",
    delimiter: str = ",",
) -> FederatedDataset:
    """Read hospitals from CSV files and check them against the schema file.

    ``paths_or_single_csv``: a list of CSV files, one hospital each, named by the file stem
    (``data/clinic-a.csv`` -> ``clinic-a``); or one CSV file with ``site_column`` naming each
    row's hospital (then every file given is split by that column).  ``test_path``: a CSV
    file of held-out patients (in the agreed schema, or in the format of the site named by
    its stem); ``test_site``: with ``site_column``, the site whose rows form the test set.
    Without either, call ``prepare(test_fraction=...)``.  ``encoding`` and ``delimiter``
    apply to every file.  To name hospitals freely and give each its own test file, use a
    federation file and :func:`securefed.data.load_federation`.

    Raises :class:`~securefed.errors.InvalidDataError` listing every problem found (file,
    row, column); returns nothing partially loaded.
    """
    schema = Schema.from_toml(schema_path)
    paths = ([Path(paths_or_single_csv)] if isinstance(paths_or_single_csv, (str, Path))
             else [Path(p) for p in paths_or_single_csv])
    if not paths:
        raise ConfigurationError("no CSV files given; expected at least one path")
    if test_site is not None and site_column is None:
        raise ConfigurationError("test_site needs site_column (the column naming each row's site)")
    check_encoding(encoding)
    check_delimiter(delimiter)
    log = ProblemLog()
    expected = set(schema.columns) | {site_column} - {None}
    for fmt in schema.sites.values():
        expected |= set(expected_columns(schema, fmt))
    tables = {p: read_csv_table(p, log, encoding=encoding, delimiter=delimiter, expected=expected)
              for p in paths}
    if site_column is None:
        parts = _parts_by_file(paths, tables, schema)
        names = {p.stem for p in paths} | ({Path(test_path).stem} if test_path else set())
    else:
        parts = _parts_by_site(paths, tables, schema, site_column=site_column, log=log)
        names = {p.name for p in parts}
        if test_site is not None and test_site not in names and not log.count:
            log.add(", ".join(str(p) for p in paths), None, site_column,
                    f"test_site {test_site!r} has no rows; sites present: {sorted(names)}")
    _unmatched_sites(schema, names, schema_path=schema_path, paths=paths, site_column=site_column,
                     log=log)
    done = [hp for hp in (harmonise_part(p, schema, log) for p in parts) if hp is not None]
    test_table = None
    if test_path is not None:
        tp = Path(test_path)
        t = read_csv_table(tp, log, encoding=encoding, delimiter=delimiter, expected=expected)
        if t is not None:
            test_part = Part(tp.stem, t.source, t.frame, t.rows, schema.sites.get(tp.stem, ExportFormat()))
            hp = harmonise_part(test_part, schema, log, what="test file")
            test_table = None if hp is None else hp.harmonised
    log.raise_if_any()
    if test_site is not None:
        test_table = next(hp.harmonised for hp in done if hp.part.name == test_site)
        done = [hp for hp in done if hp.part.name != test_site]
    if not done:
        raise InvalidDataError(
            f"no training hospital left in {[str(p) for p in paths]} after taking test_site {test_site!r}")
    return assemble(
        done, schema, test=test_table,
        description=f"{len(done)} hospitals from CSV ({', '.join(p.name for p in paths)}), "
                    f"schema {Path(schema_path).name}",
    )


def _unmatched_sites(schema: Schema, names: set[str], *, schema_path: PathLike,
                     paths: Sequence[Path], site_column: str | None, log: ProblemLog) -> None:
    """A ``[sites.X]`` table with no hospital X: a warning for files, an error for a site
    column (the site's rows were expected in the file)."""
    for site in schema.sites:
        if site in names:
            continue
        if site_column is None:
            warnings.warn(f"{schema_path}: [sites.{site}] matches no file; files: "
                          f"{[p.stem for p in paths]}", DataWarning, stacklevel=3)
        elif not log.count:
            log.add(", ".join(str(p) for p in paths), None, site_column,
                    f"hospital {site!r} (declared in {Path(schema_path).name}) has no rows")
