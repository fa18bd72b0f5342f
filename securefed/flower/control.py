"""The SuperLink's Control API, asked from this process (no ``flwr`` command start-up).

Used on the coordinator machine, over the loopback port only the coordinator can reach
(see :mod:`securefed.flower.gateway`): by ``securefed deploy superlink`` to register the
hospitals' node keys, by ``securefed deploy submit`` to follow and stop a run, and by
:class:`securefed.flower.cluster.LocalCluster` for all of these.  Each call is the request the
``flwr`` command line sends for the same action, without starting that command (about 2 s of
CPU each on the 2-core machine).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AlreadyRegistered", "node_statuses", "register_node", "run_status", "run_statuses",
           "stop_run"]


def _client(address: str, root_certificates: str | Path | None):  # type: ignore[no-untyped-def]
    """Flower's Control API client for ``address`` (``root_certificates=None``: a SuperLink
    without TLS, tests only)."""
    from flwr.supercore.control import ControlHttpClient

    return ControlHttpClient.from_server_address(
        address, root_certificates is None,
        None if root_certificates is None else str(root_certificates), [])


def _status_text(status) -> str:  # type: ignore[no-untyped-def]
    """A run's status as ``flwr ls`` shows it: ``"running"``, ``"finished:completed"`` etc."""
    return f"{status.status}:{status.sub_status}" if status.sub_status else status.status


def run_status(address: str, root_certificates: str | Path | None, run_id: int) -> tuple[str, str]:
    """``("finished:completed", details)`` etc. of a run, from the Control API."""
    from flwr.proto.control_pb2 import ListRunsRequest

    client = _client(address, root_certificates)
    try:
        runs = client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict
    finally:
        client.close()
    if run_id not in runs:
        return "", ""
    return _status_text(runs[run_id].status), runs[run_id].status.details


def run_statuses(address: str, root_certificates: str | Path | None) -> dict[int, str]:
    """Every run the SuperLink holds, with its status (``"finished:completed"`` etc.)."""
    from flwr.proto.control_pb2 import ListRunsRequest

    client = _client(address, root_certificates)
    try:
        runs = client.ListRuns(ListRunsRequest()).run_dict
    finally:
        client.close()
    return {int(run_id): _status_text(r.status) for run_id, r in runs.items()}


def stop_run(address: str, root_certificates: str | Path | None, run_id: int) -> None:
    """Ask the SuperLink to stop a run (its ServerApp too), through the Control API."""
    from flwr.proto.control_pb2 import StopRunRequest

    client = _client(address, root_certificates)
    try:
        client.StopRun(StopRunRequest(run_id=run_id))
    finally:
        client.close()


class AlreadyRegistered(RuntimeError):
    """The SuperLink already holds this node public key (a restart on the same database)."""


def register_node(address: str, root_certificates: str | Path | None,
                  public_key_path: str | Path) -> int:
    """Register a SuperNode's public key (an OpenSSH EC key on a NIST curve, as ``flwr supernode
    register`` takes it); the node id the SuperLink gives it.  :class:`AlreadyRegistered` if
    the key is registered already."""
    import httpx
    from flwr.proto.control_pb2 import RegisterNodeRequest

    key = _node_key_bytes(Path(public_key_path))
    client = _client(address, root_certificates)
    try:
        response = client.RegisterNode(RegisterNodeRequest(public_key=key))
    except httpx.HTTPStatusError as err:
        if "already in use" in err.response.text.lower():
            raise AlreadyRegistered(f"the node key {public_key_path} is registered already") from err
        raise
    finally:
        client.close()
    if not response.node_id:
        raise RuntimeError(f"the SuperLink registered no node for {public_key_path}")
    return int(response.node_id)


def _node_key_bytes(path: Path) -> bytes:
    """The key as the SuperLink stores it, after the checks ``flwr supernode register`` makes
    (an OpenSSH elliptic-curve public key on a NIST curve), failing with a
    :class:`~securefed.errors.ConfigurationError` that names the file."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve

    from securefed.errors import ConfigurationError

    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(f"node public key {path}: not readable as an OpenSSH public "
                                 f"key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise ConfigurationError(f"node public key {path}: Flower's node authentication needs "
                                 "an elliptic-curve key on a NIST curve (securefed deploy init "
                                 "makes them)")
    return public_key_to_bytes(key)


def node_statuses(address: str, root_certificates: str | Path | None) -> dict[int, str]:
    """Every registered SuperNode's id and status (``"online"``, ``"offline"``,
    ``"registered"``, ...), as ``flwr supernode ls`` lists them."""
    from flwr.proto.control_pb2 import ListNodesRequest

    client = _client(address, root_certificates)
    try:
        nodes = client.ListNodes(ListNodesRequest()).nodes_info
    finally:
        client.close()
    return {int(n.node_id): str(n.status).lower() for n in nodes}
