"""The public surface: exported names are exactly the intended ones, and the README's
library example runs as written."""

import re
from pathlib import Path

import securefed

EXPECTED = {
    "__version__",
    "SecurefedError", "InvalidDataError", "ConfigurationError", "ProtocolAbort",
    "MessageRejected", "KeyMaterialError", "PrivacyBudgetExceeded",
    "AggregationChannel", "PlainChannel", "FedAvg", "FedMedHeter", "FedProx", "Strategy",
    "RunResult", "run_federated", "run_centralized", "run_algorithm", "algorithm_names",
    "load_federation", "ModelSpec", "SecAggChannel",
    "CKKSChannel", "CKKSKeyHolder", "CKKSParameters", "CKKSPublicContext",
    "CentralDP", "LocalDP", "DistributedDP", "DPSGD",
}


def test_exported_names_are_the_intended_ones():
    assert set(securefed.__all__) == EXPECTED
    for name in securefed.__all__:
        assert hasattr(securefed, name), name


def test_error_tree_has_one_root():
    for name in ("InvalidDataError", "ConfigurationError", "ProtocolAbort", "MessageRejected",
                 "KeyMaterialError", "PrivacyBudgetExceeded"):
        assert issubclass(getattr(securefed, name), securefed.SecurefedError)


def test_readme_library_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    acc, nbytes = capsys.readouterr().out.split()
    from securefed.data import pima_federation

    data = pima_federation(seed=0)
    majority = max(data.y_test.mean(), 1 - data.y_test.mean())
    assert float(acc) > majority  # better than always guessing the majority class
    # 20 rounds of at least 2 contributors (dropout rate 0.1), each masked vector at least
    # 4 bytes per parameter (logistic regression: d + 1 parameters)
    d = data.num_features + 1
    assert 20 * 2 * 4 * d <= int(nbytes)
