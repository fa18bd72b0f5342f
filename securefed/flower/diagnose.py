"""Say why a hospital node cannot reach its SuperLink, before Flower retries forever.

Flower's SuperNode retries a failed connection without end and logs only "Connection attempt
failed".  :func:`check_superlink` makes the same connection once, step by step, and raises
:class:`~securefed.errors.ConfigurationError` with the cause and the fix:

* the host name does not resolve;
* nothing listens on the port (connection refused), or nothing answers (a firewall drops
  the packets);
* TLS mismatch, both ways: the node was started ``--insecure`` against a SuperLink that
  speaks TLS, or with ``--root-certificates`` against one that does not;
* the server's certificate is not signed by the node's ``ca.pem`` (a wrong file, or a
  server pretending to be the SuperLink), or is not valid for the address dialled;
* something answers, but not a SuperLink's health check.

``securefed deploy node`` runs it before it starts the SuperNode.  It sends only a TCP
connection, a TLS handshake and ``GET /health``; no key or data leaves the node.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from securefed.errors import ConfigurationError

__all__ = ["check_superlink"]


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"SuperLink address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _health_request(host: str) -> bytes:
    return (f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").encode("ascii")


def _read_status(sock: socket.socket) -> bytes:
    data = b""
    try:
        while b"\r\n" not in data and len(data) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (OSError, ssl.SSLError):
        pass
    return data


def check_superlink(address: str, *, root_certificates: str | Path | None = None,
                    insecure: bool = False, timeout: float = 5.0) -> str:
    """Connect to ``address`` as a SuperNode would; return ``"ok"`` or raise with the cause.

    Give ``root_certificates`` (the CA file) for TLS, or ``insecure=True`` for plain HTTP.
    """
    if insecure == (root_certificates is not None):
        raise ConfigurationError("give either root_certificates (TLS) or insecure=True, not "
                                 f"both or neither (got root_certificates={root_certificates!r}, "
                                 f"insecure={insecure})")
    host, port = _split(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot reach the SuperLink at {address}: the host name {host!r} "
                                 f"does not resolve ({exc.strerror}); check the address in the "
                                 "node's settings and the machine's DNS") from exc
    family, _, _, _, sockaddr = infos[0]
    raw = socket.socket(family, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    try:
        raw.connect(sockaddr)
    except ConnectionRefusedError as exc:
        raw.close()
        raise ConfigurationError(
            f"cannot reach the SuperLink at {address}: connection refused (nothing listens on "
            f"port {port} of {host}); is the SuperLink running, and is this the port the "
            "coordinator gave (the hospital-facing port)?") from exc
    except TimeoutError as exc:
        raw.close()
        raise ConfigurationError(
            f"cannot reach the SuperLink at {address}: no answer within {timeout:.0f} s; a "
            "firewall between this machine and the SuperLink may drop the packets (the node "
            f"needs outbound TCP to {host}:{port} only)") from exc
    except OSError as exc:
        raw.close()
        raise ConfigurationError(f"cannot reach the SuperLink at {address}: {exc.strerror or exc}") from exc
    try:
        if insecure:
            raw.sendall(_health_request(host))
            reply = _read_status(raw)
            if not reply.startswith(b"HTTP/"):
                raise ConfigurationError(
                    f"TLS mismatch: this node was started with --insecure, but the SuperLink at "
                    f"{address} speaks TLS (it answered the plain-HTTP request "
                    + ("by closing the connection" if not reply else f"with {reply[:8]!r}")
                    + "); start the node with --root-certificates ca.pem (the file "
                    "the coordinator gave) instead of --insecure")
            return _check_status(reply, address)
        ctx = ssl.create_default_context(cafile=str(root_certificates))
        try:
            tls = ctx.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or str(exc)
            if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
                raise ConfigurationError(
                    f"the SuperLink's certificate is not valid for {host!r} ({reason}); dial the "
                    "name the coordinator's certificate was made for, or ask for a certificate "
                    "that lists this address") from exc
            raise ConfigurationError(
                f"the server at {address} presented a certificate that {root_certificates} did "
                f"not sign ({reason}): either this is not the consortium's ca.pem, or the "
                "server is not the consortium's SuperLink; do not connect, ask the coordinator") from exc
        except ssl.SSLError as exc:
            text = f"{exc.reason or ''} {exc}".upper()
            if any(k in text for k in ("WRONG_VERSION_NUMBER", "RECORD_LAYER", "PACKET_LENGTH",
                                       "HTTP_REQUEST", "UNKNOWN_PROTOCOL")):
                raise ConfigurationError(
                    f"TLS mismatch: this node expects TLS, but the SuperLink at {address} does "
                    "not speak TLS (it was started with --insecure); the coordinator must start "
                    "it with its certificates; never run a hospital node without TLS") from exc
            raise ConfigurationError(f"TLS handshake with the SuperLink at {address} failed: "
                                     f"{exc}") from exc
        except (ConnectionError, OSError) as exc:
            raise ConfigurationError(
                f"the SuperLink at {address} closed the connection during the TLS handshake "
                f"({exc}); it may not speak TLS, or it refuses this machine") from exc
        with tls:
            tls.sendall(_health_request(host))
            return _check_status(_read_status(tls), address)
    finally:
        raw.close()


def _check_status(reply: bytes, address: str) -> str:
    line = reply.split(b"\r\n", 1)[0].decode("latin-1", errors="replace")
    parts = line.split()
    if len(parts) >= 2 and parts[1] == "200":
        return "ok"
    raise ConfigurationError(f"a server answers at {address} but not as a SuperLink does (its "
                             f"health check said {line!r}); check the address and port")
