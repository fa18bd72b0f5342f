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

The layers that a Fleet or Runtime request still passes through (error translation,
protobuf translation, and for Fleet requests node authentication and Fleet event logs) run
their own ``dispatch`` code under :class:`UnaryDispatch` for the unary protobuf calls of
those two APIs (``flwr.supercore.protobuf.translation.PROTOBUF_REQUEST_TYPES``, the calls a
round is made of): the next layer's answer is collected whole and handed to ``dispatch`` as
a response, instead of being streamed to it through a task group, a memory stream and a
task per layer.  ``dispatch`` sees the same request, the same body (replayed to the next
layer when it read it), the same status and headers, and the same exceptions.  Control API
calls, whose answers may be streams (``flwr log``), and any other request keep Starlette's
own ``BaseHTTPMiddleware``.

Threat model: the same as the SuperLink's own.  The gate trusts nothing in a request but
its path, the one thing the skipped layers themselves look at before passing it on; the
unary dispatch runs every layer's own checks on every request it handles.
:func:`gate_middleware` refuses to start (``ConfigurationError``) when Flower's list of
layers is not the one this was written for, rather than guess.

Command line: ``python -m securefed.flower.link <flower-superlink arguments>``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["CONTROL_PREFIX", "FLEET_PREFIX", "PathGate", "UnaryDispatch", "gate_middleware",
           "main", "unary_routes"]

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


def unary_routes() -> frozenset[tuple[str, str]]:
    """``(method, path)`` of the Fleet and Runtime API's protobuf calls, each answered with one
    protobuf message (Flower streams answers on Control API routes only)."""
    from flwr.supercore.protobuf.translation import PROTOBUF_REQUEST_TYPES

    return frozenset(key for key in PROTOBUF_REQUEST_TYPES
                     if key[1].startswith((FLEET_PREFIX, "/v1/runtime/")))


class UnaryDispatch:
    """A ``BaseHTTPMiddleware`` layer (``inner(app, *args, **kwargs)``) whose ``dispatch`` runs
    without Starlette's response streaming for the calls in ``routes``.

    For those calls, ``call_next`` runs the next layer to its end, collecting what it sends,
    and returns it as one :class:`starlette.responses.Response` with the status and the raw
    headers the next layer sent; a body that ``dispatch`` read is replayed to the next layer;
    an exception of the next layer propagates out of ``call_next`` as it does with Starlette.
    Every other request (and every non-HTTP event) goes through the layer itself.
    """

    def __init__(self, app: Any, inner: Any, *args: Any,
                 routes: frozenset[tuple[str, str]] | None = None, **kwargs: Any) -> None:
        from starlette.datastructures import URL
        from starlette.middleware.base import BaseHTTPMiddleware
        from starlette.requests import Request
        from starlette.responses import Response

        from securefed.errors import ConfigurationError

        # looked up once here, not on every request
        self._url, self._request, self._response = URL, Request, Response
        self.app = app
        self.layer = inner(app, *args, **kwargs)
        if not isinstance(self.layer, BaseHTTPMiddleware):
            raise ConfigurationError(f"UnaryDispatch wraps BaseHTTPMiddleware layers, not {inner!r}")
        self.dispatch = self.layer.dispatch_func
        self.routes = unary_routes() if routes is None else routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] != "http"
                or (scope["method"], self._url(scope=scope).path) not in self.routes):
            await self.layer(scope, receive, send)
            return
        response = await self.dispatch(self._request(scope, receive), self._call_next(receive))
        await response(scope, receive, send)

    def _call_next(self, receive: Any) -> Any:
        async def call_next(request: Any) -> Any:
            body: bytes | None = getattr(request, "_body", None)  # what request.body() read
            if body is None and getattr(request, "_stream_consumed", False):
                raise RuntimeError("the request body was streamed before call_next; it cannot "
                                   "be passed on")
            replayed = body is None

            async def next_receive() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            start: dict | None = None
            chunks: list[bytes] = []

            async def collect(message: Any) -> None:
                nonlocal start
                kind = message["type"]
                if kind == "http.response.start":
                    start = message
                elif kind == "http.response.body":
                    chunks.append(message.get("body", b""))
                elif kind != "http.response.debug":
                    raise RuntimeError(f"unexpected ASGI message {kind!r} on a unary call")

            await self.app(request.scope, next_receive, collect)
            if start is None:
                raise RuntimeError("No response returned.")
            response = self._response(b"".join(chunks), status_code=start["status"])
            response.raw_headers = list(start.get("headers", []))
            return response

        return call_next


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
    behind a :class:`PathGate` for its API's prefix, and the layers that Fleet and Runtime
    calls pass through (the Fleet-only ones, error and protobuf translation) dispatching
    those calls through :class:`UnaryDispatch`; the order kept.

    Raises ``ConfigurationError`` unless each of the six layers and the two translation layers
    appears exactly once (another Flower version would need this re-read, not guessed at).
    """
    from starlette.middleware import Middleware

    from securefed.errors import ConfigurationError

    gated = _gated_classes()
    seen = [m.cls for m in middleware if m.cls in gated]
    if sorted(c.__name__ for c in seen) != sorted(c.__name__ for c in gated):
        raise ConfigurationError(
            "the SuperLink's middleware is not the one securefed.flower.link was written for "
            f"(Flower 1.42): found {[getattr(m.cls, '__name__', m.cls) for m in middleware]}")
    from flwr.supercore.error.http import http_error_translator
    from flwr.supercore.protobuf.translation import ProtobufTranslationMiddleware
    from starlette.middleware.base import BaseHTTPMiddleware

    translators = [m for m in middleware
                   if (m.cls is BaseHTTPMiddleware and m.kwargs.get("dispatch") is http_error_translator)
                   or m.cls is ProtobufTranslationMiddleware]
    if len(translators) != 2 or len({m.cls for m in translators}) != 2:
        raise ConfigurationError(
            "the SuperLink's error and protobuf translation layers are not the ones "
            "securefed.flower.link was written for (Flower 1.42)")
    out = []
    for m in middleware:
        if m.cls in gated and gated[m.cls] == FLEET_PREFIX:
            out.append(Middleware(PathGate, UnaryDispatch, gated[m.cls], m.cls, *m.args, **m.kwargs))
        elif m.cls in gated:
            out.append(Middleware(PathGate, m.cls, gated[m.cls], *m.args, **m.kwargs))
        elif any(m is t for t in translators):
            out.append(Middleware(UnaryDispatch, m.cls, *m.args, **m.kwargs))
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
