"""The CSV federation loader: the shipped example, and a clear error for each bad input."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from securefed.data import (
    DataWarning,
    Schema,
    SingleClassWarning,
    load_csv_federation,
)
from securefed.errors import ConfigurationError, InvalidDataError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
CLINICS = [EXAMPLES / f"clinic-{c}.csv" for c in "abc"]
SCHEMA = EXAMPLES / "schema.toml"

SMALL_SCHEMA = """
[target]
name = "dx"
positive = "yes"
negative = "no"

[features.age]
type = "numeric"
unit = "years"

[features.sex]
type = "categorical"
categories = ["female", "male"]

[features.glucose]
type = "numeric"
unit = "mg/dL"
quantity = "glucose"
"""


@pytest.fixture
def small(tmp_path):
    """Write a schema and CSV files; returns a helper that writes one file per call."""
    (tmp_path / "schema.toml").write_text(SMALL_SCHEMA)

    def write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.write_text(text.strip() + "\n")
        return p

    return tmp_path / "schema.toml", write


GOOD_A = """
age,sex,glucose,dx
50,female,100,no
61,male,150,yes
"""
GOOD_B = """
age,sex,glucose,dx
40,male,90,no
70,female,180,yes
55,female,,no
"""


def test_example_federation_loads_and_harmonises():
    ds = load_csv_federation(CLINICS, schema_path=SCHEMA, test_path=EXAMPLES / "test.csv")
    assert ds.names == ("clinic-a", "clinic-b", "clinic-c")
    assert ds.sizes == (40, 40, 40)
    assert ds.formats == ("agreed", "site clinic-b", "site clinic-c")
    b = ds.harmonised_tables[1]
    # clinic-b exports glucose in mmol/L and HbA1c in mmol/mol; harmonised into mg/dL and %
    assert 60 < b["glucose"].median() < 160 and 4 < b["hba1c"].median() < 8
    assert set(b["sex"].astype(str)) == {"female", "male"}
    data = ds.prepare()
    assert len(data.clients) == 3 and data.X_test.shape == (120, 9)
    assert data.feature_names[1] == "sex=male"


def test_one_csv_with_site_column(small):
    schema, write = small
    p = write("all.csv", "site,age,sex,glucose,dx\n"
                         "north,50,female,100,no\nsouth,40,male,90,no\n"
                         "north,61,male,150,yes\nsouth,70,female,180,yes\n"
                         "held,33,male,120,no\nheld,66,female,200,yes\n")
    ds = load_csv_federation(p, schema_path=schema, site_column="site", test_site="held")
    assert ds.names == ("north", "south") and ds.sizes == (2, 2)
    np.testing.assert_array_equal(ds.hospitals[0].row_numbers, [2, 4])
    assert len(ds.test) == 2
    data = ds.prepare()
    assert data.X_test.shape == (2, 3)


def test_missing_target_column(small):
    schema, write = small
    a = write("a.csv", GOOD_A)
    b = write("b.csv", "age,sex,glucose\n40,male,90\n")
    with pytest.raises(InvalidDataError) as err:
        load_csv_federation([a, b], schema_path=schema)
    msg = str(err.value)
    assert "b.csv" in msg and "column 'dx'" in msg and "target column missing" in msg


def test_non_numeric_value_names_file_row_and_column(small):
    schema, write = small
    a = write("a.csv", GOOD_A)
    b = write("b.csv", GOOD_B.replace("70,female,180", "70,female,high"))
    with pytest.raises(InvalidDataError, match=r"b\.csv, row 3, column 'glucose': expected a number, got 'high'"):
        load_csv_federation([a, b], schema_path=schema)


def test_unknown_category(small):
    schema, write = small
    a = write("a.csv", GOOD_A.replace("61,male", "61,mail"))
    with pytest.raises(InvalidDataError,
                       match=r"a\.csv, row 3, column 'sex': unknown category 'mail'; expected one of \['female', 'male'\]"):
        load_csv_federation([a], schema_path=schema)


def test_unknown_target_code_and_missing_target(small):
    schema, write = small
    a = write("a.csv", "age,sex,glucose,dx\n50,female,100,maybe\n61,male,150,\n")
    with pytest.raises(InvalidDataError) as err:
        load_csv_federation([a], schema_path=schema)
    msg = str(err.value)
    assert "a.csv, row 2, column 'dx': unknown target code 'maybe'" in msg
    assert "a.csv, row 3, column 'dx': target value missing" in msg
    assert len(err.value.problems) == 2


def test_empty_hospital(small):
    schema, write = small
    a = write("a.csv", GOOD_A)
    b = write("b.csv", "age,sex,glucose,dx")
    with pytest.raises(InvalidDataError, match=r"b\.csv: hospital 'b' is empty \(no data rows\)"):
        load_csv_federation([a, b], schema_path=schema)
    empty = write("c.csv", "")
    with pytest.raises(InvalidDataError, match=r"c\.csv: file is empty"):
        load_csv_federation([a, empty], schema_path=schema)


def test_empty_site_declared_in_schema(small, tmp_path):
    schema, write = small
    schema.write_text(SMALL_SCHEMA + '\n[sites.east]\ncodes.sex = { F = "female", M = "male" }\n')
    p = write("all.csv", "site,age,sex,glucose,dx\nnorth,50,female,100,no\nnorth,61,male,150,yes\n")
    with pytest.raises(InvalidDataError, match=r"hospital 'east' .* has no rows"):
        load_csv_federation(p, schema_path=schema, site_column="site")


def test_site_column_problems(small):
    schema, write = small
    p = write("all.csv", "site,age,sex,glucose,dx\nnorth,50,female,100,no\n,61,male,150,yes\n")
    with pytest.raises(InvalidDataError, match=r"all\.csv, row 3, column 'site': site name is empty"):
        load_csv_federation(p, schema_path=schema, site_column="site")
    with pytest.raises(InvalidDataError, match=r"all\.csv, column 'hospital': site column missing"):
        load_csv_federation(p, schema_path=schema, site_column="hospital")


def test_one_class_hospital_is_a_warning_not_an_error(small):
    schema, write = small
    a = write("a.csv", GOOD_A)
    b = write("b.csv", "age,sex,glucose,dx\n40,male,90,no\n41,female,95,no\n")
    with pytest.warns(SingleClassWarning, match=r"b\.csv: hospital 'b' has one class only"):
        ds = load_csv_federation([a, b], schema_path=schema)
    assert ds.sizes == (2, 2)


def test_nothing_half_loaded_and_every_problem_listed(small):
    schema, write = small
    a = write("a.csv", GOOD_A)
    b = write("b.csv", GOOD_B.replace("40,male", "forty,male").replace("55,female", "55,x"))
    c = write("c.csv", "age,sex,glucose\n1,male,2\n")
    with pytest.raises(InvalidDataError) as err:
        load_csv_federation([a, b, c], schema_path=schema)
    problems = err.value.problems
    where = {(Path(p.source).name, p.row, p.column) for p in problems}
    assert where == {("b.csv", 2, "age"), ("b.csv", 4, "sex"), ("c.csv", None, "dx")}
    assert str(err.value).startswith("3 problems in the input data")


def test_missing_values_are_loaded_as_missing(small):
    schema, write = small
    a, b = write("a.csv", GOOD_A), write("b.csv", GOOD_B.replace("40,male", "NA,male"))
    ds = load_csv_federation([a, b], schema_path=schema)
    assert ds.harmonised_tables[1]["glucose"].isna().sum() == 1
    assert ds.harmonised_tables[1]["age"].isna().sum() == 1
    data = ds.prepare(test_fraction=0.5, seed=0)
    assert all(np.isfinite(c.X).all() for c in data.clients)


def test_no_test_set_needs_test_fraction(small):
    schema, write = small
    ds = load_csv_federation([write("a.csv", GOOD_A), write("b.csv", GOOD_B)], schema_path=schema)
    with pytest.raises(ConfigurationError, match="no test set"):
        ds.prepare()
    data = ds.prepare(test_fraction=0.5, seed=1)
    assert sum(c.num_examples for c in data.clients) + len(data.y_test) == 5


def test_extra_columns_are_reported(small):
    schema, write = small
    a = write("a.csv", "id,age,sex,glucose,dx\n1,50,female,100,no\n2,61,male,150,yes\n")
    with pytest.warns(DataWarning, match=r"a\.csv: columns not in the schema are ignored: \['id'\]"):
        load_csv_federation([a], schema_path=schema)


def test_site_format_is_harmonised(small, tmp_path):
    schema, write = small
    schema.write_text(SMALL_SCHEMA + '\n[sites.b]\nrename = { glc = "glucose", outcome = "dx" }\n'
                      'units = { glucose = "mmol/L" }\ncodes.sex = { F = "female", M = "male" }\n'
                      'codes.dx = { "1" = "yes", "0" = "no" }\n')
    a = write("a.csv", GOOD_A)
    b = write("b.csv", "age,sex,glc,outcome\n40,M,5.0,0\n70,F,10.0,1\n")
    ds = load_csv_federation([a, b], schema_path=schema)
    t = ds.harmonised_tables[1]
    np.testing.assert_allclose(t["glucose"], [90.078, 180.156])
    assert list(t["dx"]) == [0, 1] and list(t["sex"].astype(str)) == ["male", "female"]
    bad = write("b.csv", "age,sex,glc,outcome\n40,male,5.0,0\n70,F,10.0,1\n")
    with pytest.raises(InvalidDataError, match=r"b\.csv, row 2, column 'sex': unknown category 'male'; expected one of \['F', 'M'\]"):
        load_csv_federation([a, bad], schema_path=schema)


@pytest.mark.parametrize("text,match", [
    ("[target]\nname='dx'\n", "must give 'name' and 'positive'"),
    ("[target]\nname='dx'\npositive='y'\n", "needs a \\[features.<name>\\] table"),
    ("[target]\nname='dx'\npositive='y'\n[features.a]\ntype='text'\n", "type must be 'numeric' or 'categorical', got 'text'"),
    ("[target]\nname='dx'\npositive='y'\n[features.a]\ntype='categorical'\ncategories=['x']\n", "at least 2 categories"),
    ("[target\n", "not valid TOML"),
    ("[target]\nname='dx'\npositive='y'\n[features.a]\n[sites.s]\nunits={b='kg'}\n", "units given for \\['b'\\]"),
])
def test_bad_schema_files(tmp_path, text, match):
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(InvalidDataError, match=match):
        Schema.from_toml(p)


def test_example_schema_parses():
    s = Schema.from_toml(SCHEMA)
    assert s.target == "diabetes" and s.positive == "yes"
    assert s.feature("glucose").unit == "mg/dL" and s.feature("sex").categories == ("female", "male")
    assert s.sites["clinic-b"].units == {"glucose": "mmol/L", "hba1c": "mmol/mol"}


def test_example_files_unchanged_by_loading(tmp_path):
    for p in CLINICS:
        shutil.copy(p, tmp_path / p.name)
    before = [p.read_bytes() for p in CLINICS]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_csv_federation(CLINICS, schema_path=SCHEMA)
    assert [p.read_bytes() for p in CLINICS] == before
