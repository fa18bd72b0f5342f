"""securefed: privacy-preserving federated learning for medical records.

The public names below are imported on first use, so ``import securefed`` is cheap and a
program pays for torch, TenSEAL or dp-accounting only when it uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securefed._compat import lazy
from securefed.errors import (
    ConfigurationError,
    InvalidDataError,
    KeyMaterialError,
    MessageRejected,
    PrivacyBudgetExceeded,
    ProtocolAbort,
    SecurefedError,
)

__version__ = "0.1.0"

_EXPORTS = {
    "AggregationChannel": "securefed.channel",
    "PlainChannel": "securefed.channel",
    "FedAvg": "securefed.federated.strategy",
    "FedProx": "securefed.federated.strategy",
    "Strategy": "securefed.federated.strategy",
    "FedMedHeter": "securefed.federated.fedmedheter",
    "RunResult": "securefed.federated.types",
    "run_federated": "securefed.federated.engine",
    "run_centralized": "securefed.federated.centralized",
    "run_algorithm": "securefed.federated.train",
    "algorithm_names": "securefed.federated.train",
    "load_federation": "securefed.data.federation",
    "ModelSpec": "securefed.models",
    "SecAggChannel": "securefed.secagg.channel",
    "CKKSChannel": "securefed.he.channel",
    "CKKSKeyHolder": "securefed.he.keys",
    "CKKSParameters": "securefed.he.keys",
    "CKKSPublicContext": "securefed.he.keys",
    "CentralDP": "securefed.dp.mechanisms",
    "LocalDP": "securefed.dp.mechanisms",
    "DistributedDP": "securefed.dp.distributed",
    "DPSGD": "securefed.dp.dpsgd",
}

__all__ = [
    "__version__",
    "SecurefedError", "InvalidDataError", "ConfigurationError", "ProtocolAbort",
    "MessageRejected", "KeyMaterialError", "PrivacyBudgetExceeded",
    *_EXPORTS,
]
__getattr__, __dir__ = lazy(__name__, _EXPORTS)

if TYPE_CHECKING:  # what a type checker and an IDE see; nothing is imported at run time
    from securefed.channel import AggregationChannel, PlainChannel
    from securefed.data.federation import load_federation
    from securefed.dp.distributed import DistributedDP
    from securefed.dp.dpsgd import DPSGD
    from securefed.dp.mechanisms import CentralDP, LocalDP
    from securefed.federated.centralized import run_centralized
    from securefed.federated.engine import run_federated
    from securefed.federated.fedmedheter import FedMedHeter
    from securefed.federated.strategy import FedAvg, FedProx, Strategy
    from securefed.federated.train import algorithm_names, run_algorithm
    from securefed.federated.types import RunResult
    from securefed.he.channel import CKKSChannel
    from securefed.he.keys import CKKSKeyHolder, CKKSParameters, CKKSPublicContext
    from securefed.models import ModelSpec
    from securefed.secagg.channel import SecAggChannel
