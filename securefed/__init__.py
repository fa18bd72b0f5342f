"""securefed: privacy-preserving federated learning for medical records."""

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
from securefed.models import ModelSpec

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SecurefedError", "InvalidDataError", "ConfigurationError", "ProtocolAbort",
    "MessageRejected", "KeyMaterialError", "PrivacyBudgetExceeded",
    "AggregationChannel", "PlainChannel", "FedAvg", "FedMedHeter", "FedProx", "Strategy", "RunResult",
    "run_federated", "ModelSpec",
]
