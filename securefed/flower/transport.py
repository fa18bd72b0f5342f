"""How securefed's messages ride on Flower messages, and how a node keeps state between them.

Every securefed message is serialised with :func:`securefed.wire.pack` (the same
bytes the simulation counts) and carried as one ``bytes`` value of a Flower ``ConfigRecord``
named ``"securefed"``.  So what travels is exactly what the simulation measures, plus
Flower's own framing, and the protocol code never depends on Flower's record types.

Flower starts a fresh ClientApp process for every message, so whatever a node must remember
between messages (its random generator, a strategy's client state, a secure-aggregation
state machine) is saved in ``context.state``, which the node's SuperNode keeps in its own
memory: it never leaves the hospital's machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from securefed.errors import InvalidDataError
from securefed.wire import pack, unpack

__all__ = [
    "RECORD",
    "make_content",
    "read_content",
    "save_blob",
    "load_blob",
    "pack_state",
    "unpack_state",
    "exchange",
    "Reply",
]

RECORD = "securefed"
_JSON_PREFIX = "json:"


def make_content(fields: Mapping[str, Any]) -> Any:
    """A Flower ``RecordDict`` carrying ``pack(fields)``."""
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({RECORD: ConfigRecord({"blob": pack(fields)})})


def read_content(content: Any) -> tuple[dict[str, Any], int]:
    """``(fields, number of bytes)`` of a Flower ``RecordDict`` made by :func:`make_content`."""
    try:
        blob = content.config_records[RECORD]["blob"]
    except (KeyError, AttributeError) as exc:
        raise InvalidDataError(f"message carries no {RECORD!r} record: {exc!r}") from exc
    if not isinstance(blob, bytes):
        raise InvalidDataError(f"{RECORD!r} record holds {type(blob).__name__}, expected bytes")
    return unpack(blob), len(blob)


def save_blob(state: Any, key: str, blob: bytes) -> None:
    """Keep ``blob`` in a node's ``context.state`` under ``key``."""
    from flwr.app import ConfigRecord

    state[key] = ConfigRecord({"blob": blob})


def load_blob(state: Any, key: str) -> bytes | None:
    """The blob saved under ``key``, or ``None`` when there is none yet."""
    record = state.config_records.get(key) if hasattr(state, "config_records") else None
    if record is None:
        return None
    blob = record.get("blob")
    return blob if isinstance(blob, bytes) else None


def pack_state(state: Mapping[str, Any]) -> bytes:
    """Serialise a strategy's ``client_state`` dict.

    Arrays, bytes, numbers and strings are stored as they are; other JSON-able values
    (lists, dicts, ``None``) as JSON text.  Anything else is refused with its name.
    """
    fields: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, (np.ndarray, bytes, bool, int, float, str, np.integer, np.floating)):
            fields[key] = value
        else:
            try:
                fields[_JSON_PREFIX + key] = json.dumps(value)
            except TypeError as exc:
                raise InvalidDataError(
                    f"client state {key!r} of type {type(value).__name__} cannot be saved "
                    "between messages; use arrays, numbers, strings or JSON-able values"
                ) from exc
    return pack(fields)


def unpack_state(blob: bytes | None) -> dict[str, Any]:
    """Inverse of :func:`pack_state` (an empty dict for ``None``)."""
    if blob is None:
        return {}
    out: dict[str, Any] = {}
    for key, value in unpack(blob).items():
        if key.startswith(_JSON_PREFIX):
            out[key[len(_JSON_PREFIX):]] = json.loads(value)
        else:
            out[key] = value
    return out


#: Back-off while a message's objects are still on their way: first retry after this many
#: seconds, doubling up to the second value (Flower 1.42: 1 s doubling up to 10 s).
OBJECT_RETRY = (0.05, 0.2)


def fast_object_pulls(module: Any) -> None:
    """Make ``module.pull_objects`` (Flower's object puller, as that module calls it) retry
    an object that has not arrived yet after 50 ms, doubling up to 0.2 s.

    Why: a Flower message travels as a head announcing it and then its objects, each a
    request of its own.  The receiver (SuperNode, ClientApp or ServerApp) is handed the
    message as soon as the head is in and then pulls the objects; one that is not there
    yet is asked for again after a back-off that starts at 1 s in Flower.  The sender's
    objects follow within tens of milliseconds, so that second cost most message round
    trips a second, and a round waits for its slowest node.  Here every party that
    securefed starts asks again sooner; an object is still pulled until it arrives or
    Flower's overall pull deadline passes, and nothing else about the pull changes.
    Calling it twice is harmless.
    """
    current = module.pull_objects
    original = getattr(current, "__wrapped__", current)
    first, cap = OBJECT_RETRY

    def pull_objects(*args: Any, **kwargs: Any) -> Any:
        # callers pass Flower's defaults explicitly, so they are overridden here
        kwargs["initial_backoff"] = min(float(kwargs.get("initial_backoff", first)), first)
        kwargs["backoff_cap"] = min(float(kwargs.get("backoff_cap", cap)), cap)
        return original(*args, **kwargs)

    pull_objects.__wrapped__ = original  # type: ignore[attr-defined]
    module.pull_objects = pull_objects


class Reply:
    """One node's answer to a message: its fields, or the reason it has none."""

    def __init__(self, node_id: int, fields: dict[str, Any] | None, nbytes: int,
                 error: str | None) -> None:
        self.node_id = node_id
        self.fields = fields
        self.nbytes = nbytes
        self.error = error

    @property
    def ok(self) -> bool:
        return self.fields is not None


def exchange(
    grid: Any,
    outgoing: Mapping[int, Mapping[str, Any]],
    *,
    message_type: str,
    group_id: str,
    timeout: float,
    straggler_timeout: float | None = None,
    enough: Callable[[Mapping[int, Reply]], bool] | None = None,
    poll_interval: float = 0.1,
    max_poll_interval: float = 0.3,
) -> tuple[dict[int, Reply], dict[int, int]]:
    """Send ``outgoing[node_id]`` to each node and collect the replies until ``timeout``.

    ``straggler_timeout``: once the first reply is in, wait at most this long for the others
    (nodes work in parallel, so a node much later than the first has most likely failed).
    ``enough(replies)``: stop waiting as soon as it returns true.

    Returns ``(replies by node id, bytes sent by node id)``.  A node that does not answer in
    time, or answers with an error, gets a :class:`Reply` whose ``error`` says why; the
    caller decides whether the protocol can go on without it.  (Flower's own
    ``send_and_receive`` sleeps 3 s between polls; here the pause starts at
    ``poll_interval`` and grows by half after each empty poll up to ``max_poll_interval``,
    so quick replies are seen quickly and a long stage does not load the SuperLink.  A
    stage of secure aggregation takes one to three seconds on loopback: with a cap of
    1 s a reply waited about half a second on average for the next poll, once per message
    round trip; 0.3 s costs a few more polls per stage.)
    """
    from flwr.app import Message

    messages = []
    sent: dict[int, int] = {}
    for node_id, fields in outgoing.items():
        content = make_content(fields)
        sent[node_id] = len(content.config_records[RECORD]["blob"])
        messages.append(Message(content=content, dst_node_id=node_id, message_type=message_type,
                                group_id=group_id, ttl=max(timeout * 2, 60.0)))
    ids = list(grid.push_messages(messages))
    pending = {mid: msg.metadata.dst_node_id for mid, msg in zip(ids, messages, strict=True)}
    replies: dict[int, Reply] = {}
    deadline = time.monotonic() + timeout
    first_reply: float | None = None
    pause = poll_interval
    while pending:
        got = 0
        for msg in grid.pull_messages(list(pending)):
            got += 1
            node_id = pending.pop(msg.metadata.reply_to_message_id, None)
            if node_id is None:
                continue
            if msg.has_error():
                replies[node_id] = Reply(node_id, None, 0, f"node error: {msg.error.reason}")
                continue
            try:
                fields, nbytes = read_content(msg.content)
            except InvalidDataError as exc:
                replies[node_id] = Reply(node_id, None, 0, f"unreadable reply: {exc}")
                continue
            replies[node_id] = Reply(node_id, fields, nbytes, None)
        now = time.monotonic()
        if replies and first_reply is None:
            first_reply = now
        if not pending or now > deadline or (enough is not None and enough(replies)):
            break
        if straggler_timeout is not None and first_reply is not None \
                and now - first_reply > straggler_timeout:
            break
        pause = poll_interval if got else min(pause * 1.5, max_poll_interval)
        time.sleep(pause)
    for node_id in pending.values():
        replies[node_id] = Reply(node_id, None, 0, "no reply in time")
    return replies, sent
