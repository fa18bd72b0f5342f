"""One shape for every family of named parts: strategies, DP mechanisms, defenses, attacks,
audit algorithms and audit attacks.

Each family keeps one :class:`Registry` and exposes the same three module-level functions,
named after the family: ``register_<kind>(name, entry)`` (or ``@register_<kind>(name)`` as a
decorator), ``<kind>_names()`` (a tuple, in registration order) and ``get_<kind>(name)``.
An unknown name is a :class:`~securefed.errors.ConfigurationError` that lists the valid ones.

Parameters passed to a registered factory are checked against its signature *before* the
call (:func:`check_parameters`), so a misspelt option is reported by name while a
``TypeError`` raised inside a constructor still surfaces as the bug it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

from securefed.errors import ConfigurationError

__all__ = ["Registry", "accepted_parameters", "check_parameters"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` names the family in error messages).

    >>> reg: Registry[int] = Registry("number")
    >>> reg.register("one", 1)
    1
    >>> @reg.register("two")
    ... def _two() -> int:
    ...     return 2
    >>> reg.names()
    ('one', 'two')
    >>> reg.get("three")
    Traceback (most recent call last):
    ...
    securefed.errors.ConfigurationError: unknown number 'three'; valid: one, two
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, entry: None = None, *, replace: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T, *, replace: bool = False) -> T: ...

    def register(self, name: str, entry: T | None = None, *, replace: bool = False) -> Any:
        """Add ``entry`` under ``name``; without ``entry``, return a decorator that adds it."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if entry is None:
            def decorate(obj: T) -> T:
                return self.register(name, obj, replace=replace)

            return decorate
        if name in self._entries and not replace and self._entries[name] is not entry:
            raise ConfigurationError(
                f"{self.kind} {name!r} is already registered; pass replace=True to replace it")
        self._entries[name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def get(self, name: str) -> T:
        """The entry registered as ``name``."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self._entries) or '(none)'}"
            ) from None

    def build(self, name: str, /, *args: Any, **params: Any) -> Any:
        """Call the factory registered as ``name`` with ``params``, checked by name first."""
        factory = self.get(name)
        if not callable(factory):
            raise ConfigurationError(f"{self.kind} {name!r} is not a factory")
        check_parameters(factory, params, what=f"{self.kind} {name!r}")
        return factory(*args, **params)

    def items(self) -> tuple[tuple[str, T], ...]:
        return tuple(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def accepted_parameters(factory: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword names ``factory`` accepts, or ``None`` if it takes any keyword.

    For a class, ``**kwargs`` in ``__init__`` is followed up the base classes (a wrapper that
    passes ``**kwargs`` on to its parent accepts the parent's names).  A factory whose
    signature cannot be read is a :class:`ConfigurationError`, never "accepts nothing".
    """
    names: set[str] = set()
    if isinstance(factory, type):
        chain: Iterable[Any] = [c.__init__ for c in factory.__mro__
                                if "__init__" in vars(c) and c is not object]
    else:
        chain = [factory]
    for fn in chain:
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"cannot read the parameters of {factory!r}: {exc}") from exc
        var_kw = False
        for p in params.values():
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
            elif p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self":
                names.add(p.name)
        if not var_kw:
            return frozenset(names)
    return None  # ``**kwargs`` all the way down: whatever it does with them is its own rule


def check_parameters(factory: Callable[..., Any], params: Mapping[str, Any], *, what: str) -> None:
    """Refuse keyword ``params`` that ``factory`` does not take, naming them and the valid ones."""
    accepted = accepted_parameters(factory)
    if accepted is None:
        return
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigurationError(
            f"{what} has no parameter(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(accepted)) or '(none)'}")
