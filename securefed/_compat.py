"""Deprecation shims for names that moved to another module.

A module whose names moved defines ``__getattr__`` that calls :func:`moved`, so old imports
keep working for a release and say where the name lives now.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["moved", "lazy"]


def moved(module: str, name: str, where: Mapping[str, str]) -> Any:
    """Return ``name`` from its new module, warning that ``module.name`` is deprecated.

    Raises :class:`AttributeError` for a name that never lived in ``module``, as a module
    attribute lookup would.
    """
    if name not in where:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    target = where[name]
    warnings.warn(
        f"{module}.{name} moved to {target}.{name}; import it from there",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(target), name)


def lazy(module: str, exports: Mapping[str, str]) -> tuple[Any, Any]:
    """``__getattr__`` and ``__dir__`` for a package that imports its public names on first use.

    ``exports`` maps each public name to the module that defines it.  The package then costs
    nothing to import until a name is used, so ``import securefed.data`` does not load torch
    and ``import securefed`` stays fast (the heavy modules are imported where they are used).
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        globals_ = importlib.import_module(module).__dict__
        globals_[name] = value  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(module).__dict__) | set(exports))

    return __getattr__, __dir__
