import json

import numpy as np
import pytest

from evaluation import AuditConfig, load_config, plan_cells, run_audit
from evaluation.config import from_mapping
from evaluation.runner import CELLS, _folds_for, load_results
from securefed.errors import ConfigurationError
from securefed.federated import FedAvg, run_federated

SMALL = dict(algorithms=("centralized", "fedavg"), defenses=("none",), folds=2, rounds=2)


def _config(**kw):
    return AuditConfig(**{**SMALL, **kw})


def test_cells_are_written_as_they_finish_and_an_interrupted_audit_resumes(tmp_path):
    cfg = _config()
    seen = []

    def stop_after_two(cell, record):
        seen.append(cell.cell_id)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_audit(cfg, tmp_path, progress=False, on_cell=stop_after_two)
    lines = (tmp_path / CELLS).read_text().splitlines()
    assert [json.loads(x)["cell_id"] for x in lines] == seen
    # a write torn by the interruption is cut off and that cell is redone
    with (tmp_path / CELLS).open("a") as fh:
        fh.write('{"cell_id": "torn')
    rerun = []
    res = run_audit(cfg, tmp_path, progress=False, on_cell=lambda c, r: rerun.append(c.cell_id))
    assert res.resumed == 2
    assert len(rerun) == len(plan_cells(cfg)) - 2
    assert not set(rerun) & set(seen)
    assert len(res.cells) == len(plan_cells(cfg))
    assert all(c["error"] is None for c in res.cells)
    # a third run does no work and returns the same cells
    again = run_audit(cfg, tmp_path, progress=False, on_cell=lambda c, r: pytest.fail("reran"))
    assert [c["cell_id"] for c in again.cells] == [c["cell_id"] for c in res.cells]
    assert len(load_results(tmp_path).cells) == len(res.cells)


def test_cell_records_hold_utility_costs_and_history(tmp_path):
    res = run_audit(_config(algorithms=("fedavg",)), tmp_path, progress=False)
    c = res.cells[0]
    assert set(c["metrics"]) == {"loss", "accuracy", "auc", "f1"}
    assert set(c["per_hospital_accuracy"]) == {"hospital-0", "hospital-1", "hospital-2"}
    # independent reference: the same fold trained by the engine directly, scored with numpy
    cfg = _config(algorithms=("fedavg",))
    folds, spec = _folds_for(cfg)
    fold = folds[c["fold"]]
    run = run_federated(fold.data, strategy=FedAvg(**cfg.hyper().local()), model=spec,
                        rounds=cfg.rounds, seed=c["seed"], clients_per_round=None)
    w, b = run.final_params[:-1], run.final_params[-1]
    X_ext, y_ext = fold.external
    assert c["external"]["accuracy"] == pytest.approx(
        float(np.mean(((X_ext @ w + b) > 0) == (y_ext > 0.5))), abs=1e-6)  # float32 metric; one patient is 3e-3
    assert len(c["history"]["test_accuracy"]) == 2
    assert c["bytes_up"] == sum(c["history"]["bytes_up"]) > 0
    assert {"local_training", "channel", "evaluation"} <= set(c["times"])


def test_an_output_directory_of_another_audit_is_not_overwritten_silently(tmp_path):
    run_audit(_config(algorithms=("fedavg",)), tmp_path, progress=False)
    before = (tmp_path / CELLS).read_text()
    with pytest.raises(ConfigurationError, match="holds the results of another audit.*rounds"):
        run_audit(_config(algorithms=("fedavg",), rounds=3), tmp_path, progress=False)
    assert (tmp_path / CELLS).read_text() == before
    run_audit(_config(algorithms=("fedavg",), rounds=3), tmp_path, progress=False, overwrite=True)
    assert (tmp_path / CELLS).read_text() != before


def test_a_foreign_non_empty_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="not empty and holds no audit manifest"):
        run_audit(_config(), tmp_path, progress=False)


def test_extending_the_matrix_reuses_the_cells_already_run(tmp_path):
    run_audit(_config(algorithms=("fedavg",)), tmp_path, progress=False)
    res = run_audit(_config(algorithms=("fedavg", "fedprox")), tmp_path, progress=False)
    assert res.resumed == 2 and len(res.cells) == 4


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigurationError, match=r"unknown algorithm 'fedavgg'; valid: centralized, fedavg, "):
        _config(algorithms=("fedavgg",))
    with pytest.raises(ConfigurationError, match=r"unknown defense 'secagggg'; valid: none, "):
        _config(defenses=("secagggg",))
    with pytest.raises(ConfigurationError, match=r"unknown audit attack 'nope'; valid: gradient-inversion, "):
        _config(attacks=("nope",))


def test_config_file_typos_are_rejected_with_the_key_named(tmp_path):
    good = tmp_path / "a.toml"
    good.write_text('algorithms = ["fedavg"]\nfolds = 3\nrounds = 4\n'
                    '[algorithm_params.fedavg]\nserver_learning_rate = 0.5\n')
    cfg = load_config(good)
    assert cfg.folds == 3 and cfg.algorithm_params["fedavg"]["server_learning_rate"] == 0.5
    bad = tmp_path / "b.toml"
    bad.write_text('algorithms = ["fedavg"]\nrouns = 4\n')
    with pytest.raises(ConfigurationError, match="unknown key 'rouns'"):
        load_config(bad)
    bad.write_text('algorithms = ["fedprox"]\n[algorithm_params.fedprox]\nproximal_muu = 0.1\n')
    with pytest.raises(ConfigurationError, match="proximal_muu"):
        load_config(bad)
    with pytest.raises(ConfigurationError, match="folds must be an integer >= 2, got 1"):
        from_mapping({"folds": 1})
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_heterogeneity_setting_is_validated_and_reaches_the_data(tmp_path):
    from evaluation.runner import audit_dataset

    iid = audit_dataset(_config(heterogeneity="none"))
    skewed = audit_dataset(_config(heterogeneity={"quantity_skew": 0.9}))
    assert len({c.num_examples for c in iid.clients}) <= 2  # equal split up to one patient
    assert max(c.num_examples for c in skewed.clients) > max(c.num_examples for c in iid.clients)
    with pytest.raises(ConfigurationError, match="heterogeneity must be 'default', 'none'"):
        _config(heterogeneity="strong")
    with pytest.raises(ConfigurationError, match="heterogeneity"):
        _config(heterogeneity={"quantity_skw": 0.5})


def test_the_written_config_file_reproduces_the_audit(tmp_path):
    from evaluation import write_report

    cfg = _config(algorithms=("fedavg",), batch_size=None, attack_folds=None)
    res = run_audit(cfg, tmp_path, progress=False)
    write_report(res)
    again = load_config(tmp_path / "audit.toml")
    assert again.base_fingerprint() == cfg.base_fingerprint()
    assert again.batch_size is None
    assert run_audit(again, tmp_path, progress=False).resumed == len(res.cells)
