"""The SuperLink's Control API, asked from this process (no ``flwr`` command start-up).

Used on the coordinator machine, over the loopback port only the coordinator can reach
(see :mod:`securefed.flower.gateway`): by ``securefed deploy submit`` to follow and stop a
run, and by :class:`securefed.flower.cluster.LocalCluster` to follow one.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["run_status", "stop_run"]


def _client(address: str, root_certificates: str | Path | None):  # type: ignore[no-untyped-def]
    """Flower's Control API client for ``address`` (``root_certificates=None``: a SuperLink
    without TLS, tests only)."""
    from flwr.supercore.control import ControlHttpClient

    return ControlHttpClient.from_server_address(
        address, root_certificates is None,
        None if root_certificates is None else str(root_certificates), [])


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
    st = runs[run_id].status
    return (f"{st.status}:{st.sub_status}" if st.sub_status else st.status), st.details


def stop_run(address: str, root_certificates: str | Path | None, run_id: int) -> None:
    """Ask the SuperLink to stop a run (its ServerApp too), through the Control API."""
    from flwr.proto.control_pb2 import StopRunRequest

    client = _client(address, root_certificates)
    try:
        client.StopRun(StopRunRequest(run_id=run_id))
    finally:
        client.close()
