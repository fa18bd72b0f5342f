"""A consortium's own hospitals, described in one federation file.

A federation file (TOML) names the agreed schema file and, for each hospital, its training
CSV file and optionally its own test CSV file; paths are relative to the federation file::

    name = "heart"                  # optional: the data set's name in results
    schema = "schema.toml"
    encoding = "utf-8"              # optional default for every file (default utf-8)
    delimiter = ","                 # optional default for every file (default ",")

    [hospitals.north]
    train = "north_train.csv"
    test = "north_test.csv"         # optional: this hospital's own held-out patients

    [hospitals.south]
    train = "exports/south.csv"
    encoding = "cp1252"             # this hospital's files are Windows-1252
    delimiter = ";"
    missing = { chol = 0 }          # at this site a cholesterol of 0 means "not measured"

Hospital names come from this file (the ``[hospitals.NAME]`` keys), never from file names;
their order is the order of the file.  A hospital's format is the schema's ``[sites.NAME]``
table when there is one; ``missing`` adds the hospital's own codes for "not measured".

:func:`load_federation` returns a :class:`~securefed.data.dataset.FederatedDataset` whose
:meth:`~securefed.data.dataset.FederatedDataset.prepare` evaluates on the union of the
hospitals' test files and keeps each hospital's own test patients beside its training rows.
Every file is read and checked before anything is returned (see :mod:`securefed.data.csvio`
for the problems found and how rows are numbered).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from securefed.data.csvio import (
    HarmonisedPart,
    Part,
    assemble,
    check_delimiter,
    check_encoding,
    expected_columns,
    harmonise_part,
    read_csv_table,
)
from securefed.data.dataset import DataWarning, FederatedDataset
from securefed.data.formats import ProblemLog
from securefed.data.schema import ExportFormat, Schema, check_site_format, parse_missing_codes
from securefed.errors import InvalidDataError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

__all__ = ["HospitalFiles", "FederationFile", "load_federation"]

_TOP_KEYS = {"name", "schema", "encoding", "delimiter", "hospitals"}
_HOSPITAL_KEYS = {"train", "test", "encoding", "delimiter", "missing"}


@dataclass(frozen=True)
class HospitalFiles:
    """One hospital of a federation file: its files and how to read them."""

    name: str
    train: Path
    test: Path | None = None
    encoding: str = "utf-8"
    delimiter: str = ","
    missing: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: whether ``encoding`` was set for this hospital (then an ``encoding`` override
    #: given to :meth:`FederationFile.from_toml` does not replace it)
    own_encoding: bool = False

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.train,) if self.test is None else (self.train, self.test)


@dataclass(frozen=True)
class FederationFile:
    """A parsed federation file (module docstring); paths are absolute."""

    path: Path
    name: str
    schema: Path
    hospitals: tuple[HospitalFiles, ...]

    @classmethod
    def from_toml(cls, path: str | Path, *, encoding: str | None = None) -> FederationFile:
        """Parse and check a federation file.

        ``encoding`` (the command line's ``--encoding``) replaces the file's default
        encoding, but not an encoding set for one hospital.  Raises
        :class:`~securefed.errors.InvalidDataError` naming the file and the key at fault.
        """
        path = Path(path)
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise InvalidDataError(f"{path}: federation file not found") from None
        except IsADirectoryError:
            raise InvalidDataError(
                f"{path}: is a directory; expected a federation file such as "
                f"{path / 'federation.toml'}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidDataError(f"{path}: not valid TOML ({exc})") from None
        except UnicodeDecodeError as exc:
            raise InvalidDataError(f"{path}: a TOML file must be UTF-8 text ({exc})") from None
        try:
            return cls._from_dict(raw, path=path, encoding=encoding)
        except InvalidDataError as exc:
            raise InvalidDataError(f"{path}: {exc}") from None

    @classmethod
    def _from_dict(cls, raw: Mapping[str, Any], *, path: Path, encoding: str | None) -> FederationFile:
        unknown = set(raw) - _TOP_KEYS
        if unknown:
            raise InvalidDataError(f"unknown top-level keys {sorted(unknown)}; expected "
                                   f"{sorted(_TOP_KEYS)}")
        base = path.resolve().parent
        schema = raw.get("schema")
        if not isinstance(schema, str) or not schema:
            raise InvalidDataError(f"'schema' must name the schema file (schema = \"schema.toml\"), "
                                   f"got {schema!r}")
        default_encoding = check_encoding(
            encoding if encoding is not None else _text(raw, "encoding", "utf-8", where="encoding"),
            where="encoding")
        default_delimiter = check_delimiter(_text(raw, "delimiter", ",", where="delimiter"),
                                            where="delimiter")
        hospitals_raw = raw.get("hospitals")
        if not isinstance(hospitals_raw, Mapping) or not hospitals_raw:
            raise InvalidDataError("no hospitals; expected a [hospitals.NAME] table with "
                                   "train = \"FILE.csv\" for each hospital")
        hospitals = [_hospital(str(name), spec, base=base, encoding=default_encoding,
                               delimiter=default_delimiter)
                     for name, spec in hospitals_raw.items()]
        files = [f for h in hospitals for f in h.files]
        dup = sorted({str(f) for f in files if files.count(f) > 1})
        if dup:
            raise InvalidDataError(f"the same file is named twice: {dup}; a patient must be "
                                   "in one hospital's training or test file only")
        default_name = base.name if path.name == "federation.toml" else path.stem
        name = _text(raw, "name", default_name, where="name")
        return cls(path=path, name=name, schema=base / schema, hospitals=tuple(hospitals))

    def fingerprint(self) -> dict[str, str]:
        """SHA-256 of the federation file, the schema and every CSV file, keyed by their paths
        relative to the federation file's folder, so a result records exactly which data
        produced it (and moving the folder changes nothing)."""
        base = self.path.resolve().parent
        out = {}
        for p in (self.path.resolve(), self.schema, *(f for h in self.hospitals for f in h.files)):
            key = os.path.relpath(p, base)
            try:
                out[key] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            except OSError:
                out[key] = "unreadable"
        return out


def _hospital(name: str, spec: Any, *, base: Path, encoding: str, delimiter: str) -> HospitalFiles:
    """One ``[hospitals.NAME]`` table, checked; file defaults come from the top level."""
    where = f"[hospitals.{name}]"
    if not name.strip():
        raise InvalidDataError("a hospital name is empty; expected [hospitals.NAME]")
    if not isinstance(spec, Mapping):
        raise InvalidDataError(f"{where} must be a table with train = \"FILE.csv\", got {spec!r}")
    extra = set(spec) - _HOSPITAL_KEYS
    if extra:
        raise InvalidDataError(f"{where}: unknown keys {sorted(extra)}; expected "
                               f"{sorted(_HOSPITAL_KEYS)}")
    train = spec.get("train")
    if not isinstance(train, str) or not train:
        raise InvalidDataError(f"{where}: 'train' must name the training CSV file, got {train!r}")
    test = spec.get("test")
    if test is not None and (not isinstance(test, str) or not test):
        raise InvalidDataError(f"{where}: 'test' must name a CSV file, got {test!r}")
    return HospitalFiles(
        name=name,
        train=base / train,
        test=None if test is None else base / test,
        encoding=check_encoding(_text(spec, "encoding", encoding, where=where),
                                where=f"{where} encoding"),
        delimiter=check_delimiter(_text(spec, "delimiter", delimiter, where=where),
                                  where=f"{where} delimiter"),
        missing=parse_missing_codes(spec.get("missing", {}), where=where),
        own_encoding="encoding" in spec,
    )


def _text(spec: Mapping[str, Any], key: str, default: str, *, where: str) -> str:
    value = spec.get(key, default)
    if not isinstance(value, str):
        raise InvalidDataError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _hint_for(fed: FederationFile, hospital: str) -> Callable[[str, str], str]:
    """Where a user of this federation file sets ``encoding`` or ``delimiter``."""
    def hint(option: str, value: str) -> str:
        extra = f" (securefed train: or --{option} {value})" if option == "encoding" else ""
        return (f"set {option} = {json.dumps(value)} under [hospitals.{hospital}] in "
                f"{fed.path.name}{extra}")
    return hint


def load_federation(path: str | Path, *, encoding: str | None = None) -> FederatedDataset:
    """Read and check every hospital of a federation file (module docstring).

    ``encoding`` replaces the file's default text encoding (not one set per hospital).
    Returns a :class:`~securefed.data.dataset.FederatedDataset` named by the file's ``name``
    whose hospitals carry their own test patients; raises
    :class:`~securefed.errors.InvalidDataError` listing every problem (file, row, column),
    with nothing partially loaded.
    """
    fed = FederationFile.from_toml(path, encoding=encoding)
    schema = Schema.from_toml(fed.schema)
    log = ProblemLog()
    trains: list[HarmonisedPart] = []
    tests: dict[str, HarmonisedPart] = {}
    for h in fed.hospitals:
        fmt = _format_of(schema, h, fed)
        expected = expected_columns(schema, fmt)
        for role, file in (("train", h.train), ("test", h.test)):
            if file is None:
                continue
            table = read_csv_table(file, log, encoding=h.encoding, delimiter=h.delimiter,
                                   expected=expected, hint=_hint_for(fed, h.name))
            if table is None:
                continue
            part = Part(h.name, table.source, table.frame, table.rows, fmt)
            done = harmonise_part(part, schema, log, what="hospital" if role == "train" else "test file")
            if done is not None:
                (trains.append(done) if role == "train" else tests.__setitem__(h.name, done))
    names = {h.name for h in fed.hospitals}
    for site in schema.sites:
        if site not in names:
            warnings.warn(f"{fed.schema}: [sites.{site}] matches no hospital of {fed.path.name}; "
                          f"hospitals: {sorted(names)}", DataWarning, stacklevel=2)
    log.raise_if_any()
    n_test = sum(len(t.harmonised) for t in tests.values())
    return assemble(
        trains, schema, tests=tests, name=fed.name,
        description=f"{fed.name}: {len(trains)} hospitals from {fed.path.name} "
                    f"({sum(len(t.harmonised) for t in trains)} training patients, {n_test} test "
                    f"patients from {len(tests)} hospitals' test files), schema {fed.schema.name}",
    )


def _format_of(schema: Schema, h: HospitalFiles, fed: FederationFile) -> ExportFormat:
    """The schema's format for this hospital, plus the hospital's own missing codes."""
    fmt = schema.sites.get(h.name, ExportFormat())
    if not h.missing:
        return fmt
    merged = replace(fmt, name=fmt.name if not fmt.is_agreed else f"hospital {h.name}",
                     missing={**fmt.missing, **h.missing})
    try:
        check_site_format(schema, h.name, merged)
    except InvalidDataError as exc:
        raise InvalidDataError(f"{fed.path}: {str(exc).replace(f'[sites.{h.name}]', f'[hospitals.{h.name}]')}") from None
    return merged
