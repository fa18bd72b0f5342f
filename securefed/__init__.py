"""securefed: privacy-preserving federated learning for medical records."""

from securefed.dp import DPSGD, CentralDP, DistributedDP, LocalDP
from securefed.errors import (
    ConfigurationError,
    InvalidDataError,
    KeyMaterialError,
    MessageRejected,
    PrivacyBudgetExceeded,
    ProtocolAbort,
    SecurefedError,
)
from securefed.federated import (
    AggregationChannel,
    FedAvg,
    FedMedHeter,
    FedProx,
    PlainChannel,
    RunResult,
    Strategy,
    run_federated,
)
from securefed.he import CKKSChannel, CKKSKeyHolder, CKKSParameters, CKKSPublicContext
from securefed.models import ModelSpec
from securefed.secagg import SecAggChannel

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SecurefedError", "InvalidDataError", "ConfigurationError", "ProtocolAbort",
    "MessageRejected", "KeyMaterialError", "PrivacyBudgetExceeded",
    "AggregationChannel", "PlainChannel", "FedAvg", "FedMedHeter", "FedProx", "Strategy",
    "RunResult", "run_federated", "ModelSpec", "SecAggChannel",
    "CKKSChannel", "CKKSKeyHolder", "CKKSParameters", "CKKSPublicContext",
    "CentralDP", "LocalDP", "DistributedDP", "DPSGD",
]
