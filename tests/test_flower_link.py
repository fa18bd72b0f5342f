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
from securefed.flower.link import CONTROL_PREFIX, FLEET_PREFIX, PathGate, gate_middleware  # noqa: E402


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
        if before.cls in prefixes:
            assert after.cls is PathGate
            assert after.args == (before.cls, prefixes[before.cls], *before.args)
            assert after.kwargs == before.kwargs
        else:  # error translation, protobuf translation: every request still sees them
            assert after is before
    assert sum(m.cls is PathGate for m in gated) == 6


def test_a_middleware_list_of_another_shape_is_refused() -> None:
    original = _flower_layers()
    with pytest.raises(ConfigurationError, match="written for"):
        gate_middleware(original[:-1])  # one layer missing
    with pytest.raises(ConfigurationError, match="written for"):
        gate_middleware([*original, original[-1]])  # one layer twice


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
