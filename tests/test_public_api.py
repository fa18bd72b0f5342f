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
    assert 0.6 < float(acc) <= 1.0 and int(nbytes) > 0
