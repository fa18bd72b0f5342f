"""Federation files: hospital names and paths from the file, per-hospital test sets, and a
clear, exactly worded error for each kind of bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from securefed.data import FederationFile, load_federation
from securefed.errors import InvalidDataError

SCHEMA = """
[target]
name = "dx"
positive = "yes"
negative = "no"

[features.age]
type = "numeric"
unit = "years"
min = 0
max = 120

[features.ward]
type = "categorical"
categories = ["cardiology", "médecine", "surgery"]

[features.chol]
type = "numeric"
unit = "mg/dL"
min = 80
max = 700
"""

NORTH = """
age,ward,chol,dx
50,cardiology,200,no
61,surgery,250,yes
44,médecine,180,no
70,cardiology,300,yes
"""
SOUTH = """
age,ward,chol,dx
40,surgery,190,no
66,cardiology,280,yes
58,médecine,,no
"""
NORTH_TEST = """
age,ward,chol,dx
90,surgery,650,yes
30,cardiology,100,no
"""
SOUTH_TEST = """
age,ward,chol,dx
52,médecine,220,yes
"""


@pytest.fixture
def fed(tmp_path):
    """A two-hospital federation in ``tmp_path/consortium``; returns a writer for its files."""
    root = tmp_path / "consortium"
    (root / "exports").mkdir(parents=True)

    def write(name: str, text: str | bytes) -> Path:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return p

    write("schema.toml", SCHEMA)
    write("exports/site-a.csv", NORTH)
    write("exports/site-b.csv", SOUTH)
    write("exports/site-a-test.csv", NORTH_TEST)
    write("exports/site-b-test.csv", SOUTH_TEST)
    write("federation.toml", """
        schema = "schema.toml"
        [hospitals.north]
        train = "exports/site-a.csv"
        test = "exports/site-a-test.csv"
        [hospitals.south]
        train = "exports/site-b.csv"
        test = "exports/site-b-test.csv"
        """)
    return root, write


def _pooled(root: Path, names: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(root / n) for n in names], ignore_index=True)


def test_names_come_from_the_file_and_paths_from_its_folder(fed, tmp_path, monkeypatch):
    root, _ = fed
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the federation file, not here
    ds = load_federation("consortium/federation.toml")
    assert ds.names == ("north", "south")  # not the CSV stems site-a / site-b
    assert ds.sizes == (4, 3)
    assert ds.name == "consortium"  # the folder of a file called federation.toml
    assert ds.hospitals[0].source == str(root.resolve() / "exports" / "site-a.csv")
    assert [h.test_size for h in ds.hospitals] == [2, 1]


def test_prepare_gives_per_hospital_tests_and_their_union_standardised_from_training_rows(fed):
    root, _ = fed
    prepared = load_federation(root / "federation.toml").prepared()
    data = prepared.arrays
    assert data.feature_names == ("age", "ward=cardiology", "ward=médecine", "ward=surgery", "chol")
    train = _pooled(root, ["exports/site-a.csv", "exports/site-b.csv"])
    # reference: pooled mean and population sd of the training rows only (test rows excluded)
    for col, j in (("age", 0), ("chol", 4)):
        values = train[col].dropna().to_numpy(float)
        assert prepared.standardiser.mean[j] == pytest.approx(values.mean(), rel=1e-12)
        assert prepared.standardiser.scale[j] == pytest.approx(values.std(ddof=0), rel=1e-12)

    def expected(rows: pd.DataFrame) -> np.ndarray:
        age = (rows["age"] - train["age"].mean()) / train["age"].std(ddof=0)
        chol_mean = train["chol"].mean()  # pandas skips the missing value, as the sums do
        chol = ((rows["chol"] - chol_mean) / train["chol"].std(ddof=0)).fillna(0.0)
        wards = [(rows["ward"] == w).astype(float) for w in ("cardiology", "médecine", "surgery")]
        return np.column_stack([age, *wards, chol]).astype(np.float32)

    north_test = pd.read_csv(root / "exports/site-a-test.csv")
    south_test = pd.read_csv(root / "exports/site-b-test.csv")
    north, south = data.clients
    np.testing.assert_allclose(north.X_test, expected(north_test), rtol=1e-6)
    np.testing.assert_array_equal(north.y_test, [1, 0])
    np.testing.assert_allclose(south.X_test, expected(south_test), rtol=1e-6)
    np.testing.assert_allclose(data.X_test, np.vstack([north.X_test, south.X_test]))
    np.testing.assert_array_equal(data.y_test, [1, 0, 1])
    np.testing.assert_allclose(south.X, expected(pd.read_csv(root / "exports/site-b.csv")), rtol=1e-6)


def test_a_hospital_without_test_file_contributes_no_test_patients(fed):
    root, write = fed
    write("federation.toml", """
        schema = "schema.toml"
        [hospitals.north]
        train = "exports/site-a.csv"
        test = "exports/site-a-test.csv"
        [hospitals.south]
        train = "exports/site-b.csv"
        """)
    data = load_federation(root / "federation.toml").prepare()
    assert data.clients[1].X_test is None and len(data.y_test) == 2


def test_schema_site_format_applies_by_hospital_name(fed):
    root, write = fed
    write("schema.toml", SCHEMA + '\n[sites.south]\nrename = { years = "age" }\n'
                                  'codes.dx = { "1" = "yes", "0" = "no" }\n')
    write("exports/site-b.csv", "years,ward,chol,dx\n40,surgery,190,0\n66,cardiology,280,1\n")
    write("exports/site-b-test.csv", "years,ward,chol,dx\n52,médecine,220,1\n")
    ds = load_federation(root / "federation.toml")
    assert list(ds.harmonised_tables[1]["dx"]) == [0, 1]
    assert list(ds.harmonised_test_tables[1]["age"]) == [52.0]


def _error(path) -> InvalidDataError:
    with pytest.raises(InvalidDataError) as err:
        load_federation(path)
    return err.value


def test_value_outside_the_plausible_range(fed):
    root, write = fed
    write("exports/site-a.csv", NORTH.replace("61,surgery", "-40,surgery"))
    msg = str(_error(root / "federation.toml"))
    assert msg == (f"{root.resolve() / 'exports/site-a.csv'}, row 3, column 'age': -40 is outside "
                   "the plausible range [0, 120] years declared in the schema")


def test_site_missing_code_declared_per_hospital(fed):
    root, write = fed
    write("exports/site-b.csv", SOUTH.replace("190", "0").replace("280", "0"))
    err = _error(root / "federation.toml")
    assert err.count == 2
    assert str(err.problems[0]) == (
        f"{root.resolve() / 'exports/site-b.csv'}, row 2, column 'chol': 0 is outside the "
        "plausible range [80, 700] mg/dL declared in the schema; if 0 means 'not measured' at "
        "this site, declare it: missing = { chol = 0 } for this hospital")
    write("federation.toml", (root / "federation.toml").read_text().replace(
        'test = "exports/site-b-test.csv"', 'test = "exports/site-b-test.csv"\nmissing = { chol = 0 }'))
    ds = load_federation(root / "federation.toml")
    assert ds.harmonised_tables[1]["chol"].isna().tolist() == [True, True, True]
    assert ds.harmonised_tables[0]["chol"].isna().sum() == 0  # north keeps its own codes
    assert ds.formats == ("agreed", "hospital south")


def test_wrong_delimiter_is_named(fed):
    root, write = fed
    write("exports/site-a.csv", NORTH.replace(",", ";"))
    assert str(_error(root / "federation.toml")) == (
        f"{root.resolve() / 'exports/site-a.csv'}, row 1: the header reads as 1 column(s) "
        "['age;ward;chol;dx'] with comma (',') as the delimiter, but the file looks "
        "semicolon-separated (';'); set delimiter = \";\" under [hospitals.north] in "
        "federation.toml")
    text = (root / "federation.toml").read_text()
    write("federation.toml", text.replace('train = "exports/site-a.csv"',
                                          'train = "exports/site-a.csv"\ndelimiter = ";"'))
    write("exports/site-a-test.csv", NORTH_TEST.replace(",", ";"))
    assert load_federation(root / "federation.toml").sizes == (4, 3)


def test_non_utf8_file_names_the_encoding_option(fed):
    root, write = fed
    write("exports/site-b.csv", textwrap.dedent(SOUTH).lstrip("\n").encode("cp1252"))
    assert str(_error(root / "federation.toml")) == (
        f"{root.resolve() / 'exports/site-b.csv'}, row 4: not utf-8 text (byte 0xe9 cannot be "
        "decoded); if the file is in another encoding, set encoding = \"cp1252\" under "
        "[hospitals.south] in federation.toml (securefed train: or --encoding cp1252)")
    write("exports/site-b-test.csv", textwrap.dedent(SOUTH_TEST).lstrip("\n").encode("cp1252"))
    text = (root / "federation.toml").read_text()
    write("federation.toml", text + 'encoding = "cp1252"\n')  # south's table is the last one
    ds = load_federation(root / "federation.toml")
    assert ds.harmonised_tables[1]["ward"].astype(str).tolist() == ["surgery", "cardiology", "médecine"]
    # the override of the command line does not replace an encoding set for one hospital
    assert load_federation(root / "federation.toml", encoding="utf-8").sizes == (4, 3)


def test_rows_are_file_lines_with_blank_lines_and_quoted_line_breaks(fed):
    root, write = fed
    write("exports/site-a.csv",  # bytes: written exactly as given
          ("\nage,ward,chol,dx\n\n50,cardiology,200,no\n   \n61,surgery,abc,yes\n"
           '44,"médecine",180,no\n70,cardiology,"3\n00",yes\n52,surgery,xyz,no\n').encode())
    err = _error(root / "federation.toml")
    src = root.resolve() / "exports/site-a.csv"
    # line 1 blank, header line 2, blank lines 3 and 5; the record starting on line 8 spans
    # two lines (a quoted line break), so the next record is on line 10
    assert [str(p) for p in err.problems] == [
        f"{src}, row 6, column 'chol': expected a number, got 'abc'",
        f"{src}, row 8, column 'chol': expected a number, got '3\\n00'",
        f"{src}, row 10, column 'chol': expected a number, got 'xyz'",
    ]


def test_error_count_counts_every_bad_cell(fed):
    root, write = fed
    rows = "\n".join(f"{'x' if i % 2 else 50},cardiology,{'y' if i < 59 else 200},no"
                     for i in range(100))
    write("exports/site-a.csv", "age,ward,chol,dx\n" + rows + "\n61,surgery,250,yes\n")
    err = _error(root / "federation.toml")
    # 50 non-numeric ages (odd i) and 59 non-numeric cholesterol values (i < 59)
    assert err.count == 109 and len(err.problems) == 109
    msg = str(err)
    assert msg.startswith("109 problems in the input data, first: ")
    assert msg.endswith("  ... and 89 more") and msg.count("\n") == 21


def test_rows_with_the_wrong_number_of_fields(fed):
    root, write = fed
    write("exports/site-b.csv", SOUTH.replace("66,cardiology,280,yes", "66,cardiology,yes"))
    assert str(_error(root / "federation.toml")) == (
        f"{root.resolve() / 'exports/site-b.csv'}, row 3: 3 fields, expected 4 as in the "
        "header (row 1)")


def test_every_file_is_checked_before_anything_is_returned(fed):
    root, write = fed
    write("exports/site-a-test.csv", NORTH_TEST.replace("30,cardiology", "30,oncology"))
    (root / "exports/site-b.csv").unlink()
    err = _error(root / "federation.toml")
    assert [str(p) for p in err.problems] == [
        f"{root.resolve() / 'exports/site-a-test.csv'}, row 3, column 'ward': unknown category "
        "'oncology'; expected one of ['cardiology', 'médecine', 'surgery']",
        f"{root.resolve() / 'exports/site-b.csv'}: file not found",
    ]


@pytest.mark.parametrize("text,message", [
    ('schema = "schema.toml"\n', "no hospitals; expected a [hospitals.NAME] table"),
    ('schema = "schema.toml"\n[hospitals.a]\ntest = "x.csv"\n',
     "[hospitals.a]: 'train' must name the training CSV file, got None"),
    ('schema = "schema.toml"\n[hospitals.a]\ntrain = "x.csv"\nsite = 1\n',
     "[hospitals.a]: unknown keys ['site']; expected ['delimiter', 'encoding', 'missing', 'test', 'train']"),
    ('schema = "schema.toml"\n[hospitals.a]\ntrain = "x.csv"\n[hospitals.b]\ntrain = "x.csv"\n',
     "the same file is named twice"),
    ('schema = "schema.toml"\nencoding = "klingon"\n[hospitals.a]\ntrain = "x.csv"\n',
     "encoding: unknown text encoding 'klingon'"),
    ('schema = "schema.toml"\n[hospitals.a]\ntrain = "x.csv"\ndelimiter = ";;"\n',
     "[hospitals.a] delimiter: the delimiter must be one character"),
    ('schema = "schema.toml"\n[hospitals.a]\ntrain = "x.csv"\nmissing = { chol = [] }\n',
     "[hospitals.a] missing.chol: give at least one code"),
    ('[hospitals.a]\ntrain = "x.csv"\n', "'schema' must name the schema file"),
])
def test_bad_federation_files(tmp_path, text, message):
    p = tmp_path / "fed.toml"
    p.write_text(text)
    with pytest.raises(InvalidDataError) as err:
        FederationFile.from_toml(p)
    assert str(err.value).startswith(f"{p}: ") and message in str(err.value)


def test_missing_codes_for_the_target_are_refused(fed):
    root, write = fed
    text = (root / "federation.toml").read_text()
    write("federation.toml", text + 'missing = { dx = "?" }\n')
    with pytest.raises(InvalidDataError, match=r"\[hospitals.south\] missing codes given for \['dx'\]"):
        load_federation(root / "federation.toml")


def test_schema_ranges_are_checked(tmp_path):
    from securefed.data import Schema

    p = tmp_path / "s.toml"
    p.write_text('[target]\nname="dx"\npositive="y"\n[features.a]\nmin=5\nmax=1\n')
    with pytest.raises(InvalidDataError, match=r"\[features.a\]: feature 'a': min 5 is above max 1"):
        Schema.from_toml(p)
    p.write_text('[target]\nname="dx"\npositive="y"\n[features.a]\ntype="categorical"\n'
                 'categories=["x","y"]\nmin=0\n')
    with pytest.raises(InvalidDataError, match="min given for a categorical feature"):
        Schema.from_toml(p)


def test_check_command_lists_every_problem_or_the_summary(fed, capsys):
    from securefed.data.__main__ import main

    root, write = fed
    assert main(["--check", str(root / "federation.toml")]) == 0
    out = capsys.readouterr().out
    assert "north" in out and "test_patients" in out
    write("exports/site-b.csv", SOUTH.replace("40,", "-1,").replace("66,", "abc,"))
    assert main(["--check", str(root / "federation.toml")]) == 2
    src = root.resolve() / "exports/site-b.csv"
    assert capsys.readouterr().out.splitlines() == [
        "2 problems in the input data:",
        f"  {src}, row 2, column 'age': -1 is outside the plausible range [0, 120] years declared "
        "in the schema; if -1 means 'not measured' at this site, declare it: missing = { age = -1 } "
        "for this hospital",
        f"  {src}, row 3, column 'age': expected a number, got 'abc'",
    ]
