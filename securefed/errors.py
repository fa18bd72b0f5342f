"""The exception tree of securefed.

::

    SecurefedError
    ├── InvalidDataError          bad or inconsistent input data (file, row, column named)
    ├── ConfigurationError        bad arguments or configuration values
    ├── ProtocolAbort             a cryptographic protocol round could not complete
    │   └── MessageRejected       one message was refused (wrong stage/round/sender, tampered)
    ├── KeyMaterialError          wrong, missing or misplaced key material
    └── PrivacyBudgetExceeded     a run would spend more privacy budget than allowed

Every message names the value received and the value expected.
"""

from __future__ import annotations

__all__ = [
    "SecurefedError",
    "InvalidDataError",
    "ConfigurationError",
    "ProtocolAbort",
    "MessageRejected",
    "KeyMaterialError",
    "PrivacyBudgetExceeded",
]


class SecurefedError(Exception):
    """Root of every error raised on purpose by securefed."""


class InvalidDataError(SecurefedError, ValueError):
    """Input data is malformed: the message names the file, row and column where known."""


class ConfigurationError(SecurefedError, ValueError):
    """An argument or configuration value is outside what is accepted."""


class ProtocolAbort(SecurefedError, RuntimeError):
    """A protocol round was aborted (for example fewer survivors than the threshold)."""


class MessageRejected(ProtocolAbort):
    """A single protocol message was refused: wrong stage, round, sender, or failed integrity."""


class KeyMaterialError(SecurefedError, ValueError):
    """Key material is missing, malformed, or held by a party that must not hold it."""


class PrivacyBudgetExceeded(SecurefedError, RuntimeError):
    """Continuing would exceed the configured (epsilon, delta) budget.

    ``partial`` carries whatever was trained before the run stopped (a ``RunResult``
    or ``None``), so that the work is not lost.
    """

    def __init__(self, message: str, *, partial: object | None = None) -> None:
        super().__init__(message)
        self.partial = partial
