"""The port hospitals reach serves the Fleet API and nothing else.

Why.  A Flower 1.42 SuperLink serves its three APIs on one HTTP port: the Fleet API (what
SuperNodes use), the Control API (submit, stop and list runs, register nodes) and the
Runtime API (what the ServerApp uses).  Its open-source build has no authentication on the
Control API, so whoever could reach the port hospitals dial and held ``ca.pem`` could submit
an app that every SuperNode runs.

The deployment therefore binds the SuperLink to ``127.0.0.1`` on the coordinator machine and
puts this gateway on the address hospitals dial.  The gateway terminates TLS with the
SuperLink's certificate, reads each HTTP/1.1 request with ``h11`` (a maintained HTTP/1.1
state machine), and forwards it over TLS to the SuperLink only when its method and target
are exactly those of a Fleet API call or the health check (:data:`ALLOWED`; no query
string), without its hop-by-hop headers (``Upgrade``, ``Connection`` and those it names).
Everything else, the Control and Runtime APIs included, is answered ``403`` and never
reaches the SuperLink; a request framed twice (``Content-Length`` and
``Transfer-Encoding``) is answered ``400``; a connection idle for :data:`IDLE_TIMEOUT`
seconds is closed, and at most :data:`MAX_CONNECTIONS` are served at once.
The Control API is then usable only from the coordinator machine itself.

Threat model: the network, other hospitals and anyone holding ``ca.pem`` are untrusted and
may send any bytes to the gateway; the coordinator machine (its local users) is trusted.
The gateway holds the SuperLink's TLS key, as the SuperLink does.  It parses requests but
does not interpret Fleet messages: node authentication (signed requests, registered keys)
is still checked by the SuperLink behind it.

Command line::

    python -m securefed.flower.gateway --listen 0.0.0.0:9092 --upstream 127.0.0.1:9093 \
        --certfile server.pem --keyfile server.key --ca ca.pem
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import h11

__all__ = ["ALLOWED", "FLEET_ROUTES", "run_gateway", "main"]

#: The Fleet API routes of Flower 1.42 (``flwr.superlink.routers.fleet``), all POST.
FLEET_ROUTES = (
    "register-node", "activate-node", "deactivate-node", "unregister-node",
    "send-node-heartbeat", "pull-messages", "push-messages", "get-run", "get-fab",
    "push-object", "pull-object", "confirm-message-received",
)
#: (method, path) pairs forwarded to the SuperLink; anything else is refused with 403.
ALLOWED = frozenset({(b"POST", f"/v1/fleet/{r}".encode()) for r in FLEET_ROUTES}
                    | {(b"GET", b"/health")})
_REFUSED_BODY = (b"securefed gateway: this port serves the Fleet API only; the Control and "
                 b"Runtime APIs are reachable from the coordinator machine only\n")
_READ = 65536
#: A connection that sends nothing for this long is closed (SuperNodes poll every second or
#: faster while connected, so only a stalled or hostile client waits this long).
IDLE_TIMEOUT = 120.0
#: Connections served at once; more are closed at once (a cap on slow-client exhaustion).
MAX_CONNECTIONS = 256
#: Hop-by-hop headers (RFC 9110 section 7.6.1): they concern one connection, never forwarded.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"upgrade"})


def _forwardable_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """The request's headers without hop-by-hop ones (and those its Connection header names)."""
    named = {token.strip().lower() for name, value in headers if name == b"connection"
             for token in value.split(b",")}
    return [(name, value) for name, value in headers
            if name not in _HOP_BY_HOP and name not in named]


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await asyncio.wait_for(reader.read(_READ), IDLE_TIMEOUT))
            continue
        return event


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, event: Any) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()


class _Gateway:
    def __init__(self, upstream: tuple[str, int], upstream_ssl: ssl.SSLContext | None,
                 log: Any) -> None:
        self.upstream = upstream
        self.upstream_ssl = upstream_ssl
        self.log = log
        self.refused = 0
        self.open = 0

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]:
        reader, writer = await asyncio.open_connection(
            *self.upstream, ssl=self.upstream_ssl,
            server_hostname=self.upstream[0] if self.upstream_ssl else None)
        return reader, writer, h11.Connection(h11.CLIENT)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_CONNECTIONS:
            writer.close()
            return
        self.open += 1
        try:
            await self._serve(reader, writer)
        finally:
            self.open -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection] | None = None
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    request = await _next_event(conn, reader)
                except h11.RemoteProtocolError:
                    await _send(conn, writer, h11.Response(status_code=400, headers=[
                        ("content-length", "0"), ("connection", "close")]))
                    break
                if not isinstance(request, h11.Request):
                    break  # ConnectionClosed, or nothing more from this client
                names = [name for name, _ in request.headers]
                if b"content-length" in names and b"transfer-encoding" in names:
                    # two framings: a parser behind the gateway could read another request
                    # out of this one's body (RFC 9112 section 6.3); answer 400 and close
                    await _send(conn, writer, h11.Response(status_code=400, headers=[
                        ("content-length", "0"), ("connection", "close")]))
                    break
                if (request.method, request.target) not in ALLOWED:  # no query strings either
                    await self._refuse(conn, reader, writer, request, peer)
                else:
                    if up is None:
                        up = await self._open_upstream()
                    if not await self._forward(conn, reader, writer, request, up):
                        up[1].close()
                        up = None
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, h11.LocalProtocolError,
                h11.RemoteProtocolError, OSError, asyncio.TimeoutError):
            pass
        finally:
            if up is not None:
                up[1].close()
            writer.close()

    async def _refuse(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, request: h11.Request, peer: Any) -> None:
        self.refused += 1
        self.log(f"securefed gateway: refused {request.method.decode(errors='replace')} "
                 f"{request.target[:200].decode(errors='replace')} from {peer}")
        while not isinstance(await _next_event(conn, reader), (h11.EndOfMessage, h11.ConnectionClosed)):
            pass  # read and drop the body
        await _send(conn, writer, h11.Response(status_code=403, headers=[
            ("content-type", "text/plain"), ("content-length", str(len(_REFUSED_BODY)))]))
        await _send(conn, writer, h11.Data(data=_REFUSED_BODY))
        await _send(conn, writer, h11.EndOfMessage())

    async def _forward(self, conn: h11.Connection, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, request: h11.Request,
                       up: tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]) -> bool:
        """Forward one request and its response; False when the upstream link must close."""
        up_reader, up_writer, up_conn = up
        await _send(up_conn, up_writer, h11.Request(method=request.method, target=request.target,
                                                    headers=_forwardable_headers(request.headers)))
        while True:
            event = await _next_event(conn, reader)
            if isinstance(event, h11.Data):
                await _send(up_conn, up_writer, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await _send(up_conn, up_writer, h11.EndOfMessage())
                break
            else:
                return False  # the client went away mid-request
        while True:
            event = await _next_event(up_conn, up_reader)
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                await _send(conn, writer, h11.Response(status_code=event.status_code,
                                                       headers=event.headers, reason=event.reason))
            elif isinstance(event, h11.Data):
                await _send(conn, writer, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await _send(conn, writer, h11.EndOfMessage())
                break
            else:
                return False
        if up_conn.our_state is h11.MUST_CLOSE or up_conn.their_state is h11.MUST_CLOSE:
            return False
        up_conn.start_next_cycle()
        return True


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        from securefed.errors import ConfigurationError

        raise ConfigurationError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


async def serve(*, listen: str, upstream: str, certfile: str | None, keyfile: str | None,
                ca: str | None, ready: Any = None, log: Any = print) -> None:
    """Serve until cancelled.  Without ``certfile`` both sides are plain HTTP (tests only)."""
    server_ssl = client_ssl = None
    if certfile is not None:
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(certfile, keyfile)
        client_ssl = ssl.create_default_context(cafile=ca)
    gateway = _Gateway(_split(upstream), client_ssl, log)
    host, port = _split(listen)
    server = await asyncio.start_server(gateway.handle, host, port, ssl=server_ssl)
    log(f"securefed gateway: Fleet API on {listen} -> {upstream}; Control and Runtime APIs refused")
    if ready is not None:
        ready()
    async with server:
        await server.serve_forever()


def run_gateway(**kwargs: Any) -> None:
    """Run :func:`serve` in this process until SIGTERM or SIGINT."""
    async def runner() -> None:
        task = asyncio.ensure_future(serve(**kwargs))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(runner())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m securefed.flower.gateway",
                                     description="Fleet-only TLS gateway in front of a SuperLink.")
    parser.add_argument("--listen", required=True, help="HOST:PORT hospitals dial")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the SuperLink (loopback)")
    parser.add_argument("--certfile", help="the SuperLink's server.pem")
    parser.add_argument("--keyfile", help="the SuperLink's server.key")
    parser.add_argument("--ca", help="ca.pem, to check the SuperLink behind the gateway")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP on both sides (tests only)")
    args = parser.parse_args(argv)
    if not args.insecure and not (args.certfile and args.keyfile and args.ca):
        parser.error("give --certfile, --keyfile and --ca (or --insecure for a test)")
    run_gateway(listen=args.listen, upstream=args.upstream,
                certfile=None if args.insecure else args.certfile,
                keyfile=None if args.insecure else args.keyfile,
                ca=None if args.insecure else args.ca,
                log=lambda text: print(text, flush=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
