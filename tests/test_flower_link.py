"""securefed.flower.link: Flower's SuperLink middleware, gated by API path.

The real SuperLink behind the gate (node authentication still refusing unsigned Fleet
requests, the Control layers still acting on Control requests) is exercised with real
processes in tests/test_flower_deploy.py.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("flwr")

from starlette.middleware import Middleware  # noqa: E402

from securefed.errors import ConfigurationError  # noqa: E402
from securefed.flower.link import (  # noqa: E402
    CONTROL_PREFIX,
    FLEET_PREFIX,
    PathGate,
    UnaryDispatch,
    gate_middleware,
    unary_routes,
)


def _flower_layers() -> list[Middleware]:
    import flwr.superlink.main as link_main

    return link_main._get_middleware()


def test_the_six_api_specific_layers_are_gated_and_the_rest_kept_in_order() -> None:
    from flwr.superlink.routers.control.middlewares import (
        ControlAuthenticationMiddleware,
        ControlEventLogMiddleware,
        ControlLicenseMiddleware,
        ControlSensitiveResponseMiddleware,
    )
    from flwr.superlink.routers.fleet.middlewares import FleetEventLogMiddleware
    from flwr.superlink.routers.fleet.node_auth import NodeAuthMiddleware

    original = _flower_layers()
    gated = gate_middleware(original)
    assert len(gated) == len(original)
    prefixes = {ControlSensitiveResponseMiddleware: CONTROL_PREFIX,
                ControlAuthenticationMiddleware: CONTROL_PREFIX,
                ControlLicenseMiddleware: CONTROL_PREFIX, ControlEventLogMiddleware: CONTROL_PREFIX,
                NodeAuthMiddleware: FLEET_PREFIX, FleetEventLogMiddleware: FLEET_PREFIX}
    for before, after in zip(original, gated, strict=True):
        if before.cls in prefixes and prefixes[before.cls] == FLEET_PREFIX:
            assert after.cls is PathGate
            assert after.args == (UnaryDispatch, FLEET_PREFIX, before.cls, *before.args)
            assert after.kwargs == before.kwargs
        elif before.cls in prefixes:
            assert after.cls is PathGate
            assert after.args == (before.cls, prefixes[before.cls], *before.args)
            assert after.kwargs == before.kwargs
        else:  # error translation, protobuf translation: every request still sees them
            assert after.cls is UnaryDispatch
            assert after.args == (before.cls, *before.args) and after.kwargs == before.kwargs
    assert sum(m.cls is PathGate for m in gated) == 6
    assert sum(m.cls is UnaryDispatch for m in gated) == 2
    # the unary calls: every Fleet and Runtime protobuf call, no Control call (whose answers
    # may be streams)
    routes = unary_routes()
    assert ("POST", "/v1/fleet/pull-messages") in routes
    assert ("POST", "/v1/runtime/push-object") in routes
    assert not any(path.startswith(CONTROL_PREFIX) for _, path in routes)


def test_a_middleware_list_of_another_shape_is_refused() -> None:
    original = _flower_layers()
    with pytest.raises(ConfigurationError, match="written for"):
        gate_middleware(original[:-1])  # one layer missing
    with pytest.raises(ConfigurationError, match="written for"):
        gate_middleware([*original, original[-1]])  # one layer twice
    from flwr.supercore.protobuf.translation import ProtobufTranslationMiddleware

    without = [m for m in original if m.cls is not ProtobufTranslationMiddleware]
    with pytest.raises(ConfigurationError, match="translation layers"):
        gate_middleware(without)


class _Recorder:
    """An ASGI layer that notes that it ran, then calls the next layer."""

    seen: list[str] = []

    def __init__(self, app, label: str) -> None:
        self.app, self.label = app, label

    async def __call__(self, scope, receive, send) -> None:
        _Recorder.seen.append(f"{self.label}:{scope['type']}:{scope.get('path', '')}")
        await self.app(scope, receive, send)


def _call(app, scope: dict) -> list[str]:
    reached: list[str] = []

    async def endpoint(scope, receive, send) -> None:
        reached.append(scope.get("path", scope["type"]))

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message) -> None:
        return None

    _Recorder.seen = []
    asyncio.run(app(endpoint)(scope, receive, send))
    assert reached == [scope.get("path", scope["type"])]  # the request always reaches the app
    return _Recorder.seen


def _http(path: str) -> dict:
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
            "query_string": b"", "headers": [(b"host", b"127.0.0.1:9093")],
            "scheme": "https", "server": ("127.0.0.1", 9093), "root_path": ""}


def test_a_gated_layer_runs_for_its_api_only() -> None:
    def control_gate(app):
        return PathGate(app, _Recorder, CONTROL_PREFIX, label="control")

    assert _call(control_gate, _http("/v1/control/start-run")) == ["control:http:/v1/control/start-run"]
    assert _call(control_gate, _http("/v1/fleet/pull-messages")) == []
    assert _call(control_gate, _http("/v1/runtime/push-object")) == []
    # the same test as Flower's own: a path is Control only under "/v1/control/"
    assert _call(control_gate, _http("/v1/control")) == []
    assert _call(control_gate, _http("/v1/controlx/start-run")) == []
    # events other than HTTP requests always go through the layer, which decides itself
    assert _call(control_gate, {"type": "lifespan"}) == ["control:lifespan:"]

    def fleet_gate(app):
        return PathGate(app, _Recorder, FLEET_PREFIX, label="fleet")

    assert _call(fleet_gate, _http("/v1/fleet/pull-messages")) == ["fleet:http:/v1/fleet/pull-messages"]
    assert _call(fleet_gate, _http("/v1/control/start-run")) == []


# --- UnaryDispatch against Starlette's own BaseHTTPMiddleware, request by request ---------

_ROUTE = ("POST", "/v1/fleet/push-object")


def _downstream(kind: str):
    """The next layer: echoes the body it receives (with a header), fails, or answers nothing."""
    async def app(scope, receive, send) -> None:
        if kind == "raise":
            raise ValueError("handler failed")
        if kind == "silent":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status = 200 if kind == "echo" else 418
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/protobuf"),
                                (b"content-length", str(len(body) + 5).encode()),
                                (b"x-inner", scope["path"].encode())]})
        await send({"type": "http.response.body", "body": b"echo:", "more_body": True})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    return app


async def _reading_dispatch(request, call_next):
    """Like Flower's protobuf translation: reads the body first, then looks at the answer."""
    from starlette.responses import Response

    seen = await request.body()
    request.state.note = seen[:3]
    try:
        response = await call_next(request)
    except ValueError as exc:
        return Response(f"caught {exc}".encode(), status_code=500)
    body = b""
    if hasattr(response, "body_iterator"):
        async for chunk in response.body_iterator:
            body += chunk
    else:
        body = response.body
    answer = Response(body + b"|" + request.state.note, status_code=response.status_code)
    answer.headers["x-status-seen"] = str(response.status_code)
    answer.headers["x-inner-seen"] = response.headers.get("x-inner", "")
    return answer


async def _passing_dispatch(request, call_next):
    """Like node authentication: no body read, the answer passed on as it is."""
    if request.headers.get("x-refuse"):
        from starlette.exceptions import HTTPException

        raise HTTPException(status_code=401, detail="refused")
    return await call_next(request)


def _serve(layer, kind: str, body: bytes, path: str = _ROUTE[1], headers=()) -> tuple:
    """What one request through ``layer`` sends back: (status, headers, body), or the
    exception it raised."""
    sent: list[dict] = []
    chunks = [body[:4], body[4:]]

    async def receive():
        if chunks:
            part = chunks.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message) -> None:
        sent.append(message)

    scope = {**_http(path), "headers": [(b"host", b"127.0.0.1:9093"), *headers]}
    try:
        asyncio.run(layer(_downstream(kind))(scope, receive, send))
    except Exception as exc:  # noqa: BLE001 - compared between the two layers
        return (type(exc).__name__, str(exc))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return (start["status"], sorted(start["headers"]),
            b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@pytest.mark.parametrize("dispatch", [_reading_dispatch, _passing_dispatch])
@pytest.mark.parametrize("kind", ["echo", "teapot", "raise", "silent"])
@pytest.mark.parametrize("refuse", [False, True])
def test_unary_dispatch_answers_as_starlettes_middleware_does(dispatch, kind, refuse) -> None:
    from starlette.middleware.base import BaseHTTPMiddleware

    headers = [(b"x-refuse", b"1")] if refuse else []
    body = b"0123456789abcdef"

    def starlette_layer(app):
        return BaseHTTPMiddleware(app, dispatch=dispatch)

    def unary_layer(app):
        return UnaryDispatch(app, BaseHTTPMiddleware, dispatch=dispatch, routes=frozenset({_ROUTE}))

    expected = _serve(starlette_layer, kind, body, headers=headers)
    assert _serve(unary_layer, kind, body, headers=headers) == expected
    if kind == "echo" and not refuse:  # the answer really went through the dispatch
        assert expected[2] == (b"echo:0123456789abcdef|012" if dispatch is _reading_dispatch
                               else b"echo:0123456789abcdef")


def test_unary_dispatch_leaves_other_calls_to_starlettes_middleware() -> None:
    """A call outside the unary routes (a Control call, possibly a stream) goes through
    Starlette's own layer: the dispatch gets its streaming response."""
    from starlette.middleware.base import BaseHTTPMiddleware

    kinds: list[str] = []

    async def noting(request, call_next):
        response = await call_next(request)
        kinds.append(type(response).__name__)
        return response

    def unary_layer(app):
        return UnaryDispatch(app, BaseHTTPMiddleware, dispatch=noting, routes=frozenset({_ROUTE}))

    assert _serve(unary_layer, "echo", b"abc", path="/v1/control/stream-logs")[0] == 200
    assert _serve(unary_layer, "echo", b"abc")[0] == 200
    assert kinds == ["_StreamingResponse", "Response"]
    with pytest.raises(ConfigurationError, match="BaseHTTPMiddleware"):
        UnaryDispatch(_downstream("echo"), _Recorder, label="not a BaseHTTPMiddleware")
