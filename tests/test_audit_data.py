"""The audit on a consortium's own hospitals: securefed audit --data FEDERATION.toml."""

import json
import shutil

import pytest

from evaluation import AuditConfig, run_audit, write_report
from evaluation.cli import main
from securefed.data import load_federation
from securefed.data.heart import heart_federation_path
from securefed.errors import ConfigurationError


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    src = heart_federation_path().parent
    dst = tmp_path_factory.mktemp("fed") / "heart"
    shutil.copytree(src, dst)
    return dst / "federation.toml"


def _config(path, **kw):
    base = dict(algorithms=("centralized", "fedavg"), defenses=("none",), folds=2, rounds=3,
                data=str(path), threats=("curious-server", "outsider-membership"),
                threat_algorithms=("fedavg",), replicates=2,
                threat_params={"curious-server": {"defenses": ["none"], "restarts": 8},
                               "outsider-membership": {"defenses": ["none"], "shadows": 4,
                                                       "rounds": 3, "local_epochs": 10}})
    base.update(kw)
    return AuditConfig(**base)


@pytest.fixture(scope="module")
def audited(federation, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "heart"
    res = run_audit(_config(federation), out, progress=False, workers=1)
    return res, write_report(res, command="securefed audit --data federation.toml"), out


def test_the_hospitals_and_their_test_files_come_from_the_federation_file(audited, federation):
    res, files, out = audited
    ds = load_federation(federation)
    names = [h.name for h in ds.hospitals]
    summary = json.loads((out / "summary.json").read_text())
    assert [h["name"] for h in summary["setup"]["data"]["hospitals"]] == names
    assert str(federation) in summary["setup"]["data"]["source"]
    # every utility run is also evaluated on each hospital's own test file
    g = next(g for g in summary["groups"] if g["algorithm"] == "fedavg")
    assert {k.split(".", 1)[1] for k in g if k.startswith("own.")} == set(names)
    # the external set is the union of the hospitals' test files
    prepared = ds.prepare()
    assert summary["setup"]["data"]["external_test_patients"] == len(prepared.y_test)
    assert len(prepared.y_test) == sum(len(c.y_test) for c in prepared.clients)


def test_the_threats_run_on_a_schema_with_categorical_features(audited):
    res, files, out = audited
    assert all(c["error"] is None for c in res.threat_cells)
    rows = {(r["threat"], r["defense"]): r for r in files.threats}
    server = rows[("curious-server", "none")]
    # the small clinic is still recovered from its update, categorical features included
    assert server["attack"] > server["baseline"]
    cell = next(c for c in res.threat_cells if c["threat"] == "curious-server")
    assert set(cell["details"]["per_feature"]) >= {"sex", "cp"}
    assert rows[("outsider-membership", "none")]["members"] > 0


def test_cells_are_keyed_by_the_datas_content_not_its_path(federation, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(federation.parent, moved)
    a = _config(federation).base_fingerprint()
    assert _config(moved / "federation.toml").base_fingerprint() == a
    csv = moved / "cleveland_train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")  # one patient fewer
    from evaluation.config import _data_fingerprint

    _data_fingerprint.cache_clear()
    assert _config(moved / "federation.toml").base_fingerprint() != a


def test_bundled_data_knobs_and_missing_files_are_refused(federation, tmp_path, capsys):
    with pytest.raises(ConfigurationError, match="shape the bundled Pima split"):
        _config(federation, n_hospitals=4)
    missing = tmp_path / "nowhere.toml"
    assert main(["audit", "--quick", "--data", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"federation file '{missing}' does not exist" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_bad_csv_is_one_line_naming_file_row_and_column(federation, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(federation.parent, bad)
    csv = bad / "hungary_train.csv"
    lines = csv.read_text().splitlines()
    head = lines[0].split(",")
    row = lines[1].split(",")
    row[head.index("age")] = "-40"
    csv.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    out = tmp_path / "o"
    assert main(["audit", "--quick", "--quiet", "--data", str(bad / "federation.toml"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "hungary_train.csv" in err and "age" in err and "-40" in err
    assert not out.exists()  # nothing written before the data is known to be good
