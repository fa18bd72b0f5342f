"""``flower-superlink`` whose request middleware is skipped where it would do nothing.

Why.  A Flower 1.42 SuperLink serves the Fleet, Runtime and Control APIs from one Starlette
application wrapped in eight ``BaseHTTPMiddleware`` layers, and each layer costs every
request a task group, a memory stream and a task of its own, whether or not it acts on it.
Four of them act on Control API requests only (``/v1/control/...``: account
authentication, the licence check, event logs and no-cache headers on sensitive
responses) and two on Fleet API requests only (``/v1/fleet/...``: node authentication and
Fleet event logs); for any other path their own code hands the request straight to the
next layer.  In a deployment every secure round is a few hundred Fleet and Runtime
requests, and the SuperLink, one Python process, is what the round waits for.

What this changes.  Each of those six layers is put behind :class:`PathGate`, a plain ASGI
callable that sends a request whose path is outside the layer's API directly to the next
layer, and any other request (and every non-HTTP event) through the layer unchanged.  The
path is read as the layers read it (``starlette.datastructures.URL(scope=scope).path``,
which is what ``request.url.path`` is), so a request skips a layer only where that
layer's own first test would have passed it on.  Nothing else is changed: the Fleet layers
still authenticate every Fleet request, the error translation and protobuf translation
layers still see every request, and the Control layers still see every Control request.

Threat model: the same as the SuperLink's own.  The gate trusts nothing in a request but
its path, the one thing the skipped layers themselves look at before passing it on.
:func:`gate_middleware` refuses to start (``ConfigurationError``) when Flower's list of
layers is not the one this was written for, rather than guess.

Command line: ``python -m securefed.flower.link <flower-superlink arguments>``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["CONTROL_PREFIX", "FLEET_PREFIX", "PathGate", "gate_middleware", "main"]

CONTROL_PREFIX = "/v1/control/"
FLEET_PREFIX = "/v1/fleet/"


class PathGate:
    """An ASGI layer that runs ``inner`` (built around ``app``) only for paths under
    ``prefix``; any other HTTP request goes straight to ``app``."""

    def __init__(self, app: Any, inner: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        from starlette.datastructures import URL

        self._url = URL
        self.app = app
        self.prefix = prefix
        self.inner = inner(app, *args, **kwargs)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._url(scope=scope).path.startswith(self.prefix):
            await self.app(scope, receive, send)
        else:
            await self.inner(scope, receive, send)


def _gated_classes() -> dict[type, str]:
    from flwr.superlink.routers.control.middlewares import (
        ControlAuthenticationMiddleware,
        ControlEventLogMiddleware,
        ControlLicenseMiddleware,
        ControlSensitiveResponseMiddleware,
    )
    from flwr.superlink.routers.fleet.middlewares import FleetEventLogMiddleware
    from flwr.superlink.routers.fleet.node_auth import NodeAuthMiddleware

    return {
        ControlSensitiveResponseMiddleware: CONTROL_PREFIX,
        ControlAuthenticationMiddleware: CONTROL_PREFIX,
        ControlLicenseMiddleware: CONTROL_PREFIX,
        ControlEventLogMiddleware: CONTROL_PREFIX,
        NodeAuthMiddleware: FLEET_PREFIX,
        FleetEventLogMiddleware: FLEET_PREFIX,
    }


def gate_middleware(middleware: Sequence[Any]) -> list[Any]:
    """Flower's SuperLink middleware list with each Control-only and Fleet-only layer put
    behind a :class:`PathGate` for its API's prefix; every other layer, and the order, kept.

    Raises ``ConfigurationError`` unless each of the six layers appears exactly once (another
    Flower version would need this re-read, not guessed at).
    """
    from starlette.middleware import Middleware

    from securefed.errors import ConfigurationError

    gated = _gated_classes()
    seen = [m.cls for m in middleware if m.cls in gated]
    if sorted(c.__name__ for c in seen) != sorted(c.__name__ for c in gated):
        raise ConfigurationError(
            "the SuperLink's middleware is not the one securefed.flower.link was written for "
            f"(Flower 1.42): found {[getattr(m.cls, '__name__', m.cls) for m in middleware]}")
    out = []
    for m in middleware:
        if m.cls in gated:
            out.append(Middleware(PathGate, m.cls, gated[m.cls], *m.args, **m.kwargs))
        else:
            out.append(m)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flower-superlink`` with :func:`gate_middleware` applied to its application."""
    import flwr.superlink.main as link_main
    from flwr.superlink.cli import flower_superlink

    original = link_main._get_middleware

    def gated() -> list[Any]:
        return gate_middleware(original())

    link_main._get_middleware = gated  # type: ignore[attr-defined]
    sys.argv = ["flower-superlink", *(sys.argv[1:] if argv is None else argv)]
    result = flower_superlink()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
