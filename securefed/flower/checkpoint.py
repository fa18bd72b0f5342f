"""The state of a deployed run after each completed round, written so a crash cannot tear it.

Why.  A SuperLink or ServerApp that dies in round 7 of 10 must not cost rounds 1-6, and the
run that continues must not start its privacy ledger again from zero: epsilon belongs to the
model, and every round that touched the hospitals' data on the way to it counts.

After every completed round the ServerApp writes one checkpoint file holding:

* ``completed``: how many rounds are complete (the next round's index);
* the model parameters (float64, bit for bit);
* the server's random generator (its full bit-generator state);
* the strategy's server-side state: every plain attribute (numbers, strings, arrays,
  JSON-able lists) of the strategy and of each wrapper around it, e.g. FedMedHeter's server
  optimiser moments;
* the DP ledger (``Strategy.privacy_ledger()``: every round's charges), when the strategy
  has one; the continued run hands it back to the strategy (``FederationFacts.privacy_ledger``)
  so that epsilon continues from it;
* the run summary so far (per-round records, contributors, epsilon per round);
* a digest of the run settings that decide the computation, so that a checkpoint is never
  continued under other settings.

It is written to a temporary file in the same folder, flushed to disk (``fsync``) and renamed
over the previous checkpoint (``os.replace``, atomic on POSIX), then the folder is synced: a
reader sees the old checkpoint or the new one, never a torn one.  Arrays are stored as
base64 of their little-endian bytes with dtype and shape, so they come back exactly.

Rounds in flight.  Under local or distributed DP the hospitals' noisy data (their noisy
updates, or the unmasked noisy sum) can reach the server's side before the round completes,
so a crash mid-round may follow a release that the checkpoint's ledger does not hold.  Before
a round's model goes out, the ServerApp therefore records the round and what it will be
charged in a second small file beside the checkpoint (``<checkpoint>.inflight``, written the
same atomic way); a resumed run charges every attempt recorded there that never completed
(conservatively: the attempt may have been cut short before anything left a hospital) and
keeps them recorded until its next checkpoint holds them.  This keeps an honest
coordinator's accounting right through crashes; it does not bind a coordinator that lies,
which can keep whatever ledger it likes: against it, a hospital relies on its own noise
floor (``dp-min-noise-multiplier`` in its node config) and on secure aggregation.

Threat model: the checkpoint lives on the coordinator machine, as the SuperLink's own state
does; it holds the global model and public settings, no hospital's individual update and no
secret.  It is JSON read with ``json`` (no code runs when it is read).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securefed.errors import ConfigurationError

__all__ = ["Checkpoint", "config_digest", "save_checkpoint", "load_checkpoint",
           "strategy_chain", "export_strategy_state", "restore_strategy_state",
           "in_flight_path", "save_in_flight", "load_in_flight"]

FORMAT = "securefed-flower-checkpoint/1"
#: Run-config keys that may change between a run and its continuation (paths, timeouts,
#: the resume flag itself): they do not change what is computed.
NON_COMPUTING_KEYS = frozenset({
    "result-path", "checkpoint-path", "resume", "round-timeout", "straggler-timeout",
    "node-wait-timeout", "rejoin-wait",
})
_SKIP_ATTRS = frozenset({"inner", "ledger", "codec", "compression"})


def config_digest(run_config: Mapping[str, Any]) -> str:
    """SHA-256 of the settings that decide the computation (JSON, sorted keys)."""
    kept = {k: v for k, v in run_config.items() if k not in NON_COMPUTING_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        return {"__array__": base64.b64encode(little.tobytes()).decode("ascii"),
                "dtype": little.dtype.str, "shape": list(arr.shape)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return _encode(value)
    raise TypeError(f"cannot save {type(value).__name__} in a checkpoint")


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__array__" in value:
        raw = base64.b64decode(value["__array__"])
        return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    return value


def strategy_chain(strategy: Any) -> Iterator[Any]:
    """The strategy and every strategy it wraps, outermost first."""
    seen = 0
    obj = strategy
    while obj is not None and seen < 32:
        yield obj
        obj = vars(obj).get("inner")
        seen += 1


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, np.ndarray, np.generic)):
        return True
    if isinstance(value, (list, tuple, dict)):
        try:
            json.dumps(value)
        except TypeError:
            return False
        return True
    return False


def export_strategy_state(strategy: Any) -> list[dict[str, Any]]:
    """The plain attributes of each level of the strategy chain (see the module docstring)."""
    return [{name: _encode(value) for name, value in vars(obj).items()
             if name not in _SKIP_ATTRS and _plain(value)}
            for obj in strategy_chain(strategy)]


def restore_strategy_state(strategy: Any, state: list[Mapping[str, Any]]) -> None:
    """Put :func:`export_strategy_state`'s values back into a strategy built from the same
    run config (a level or attribute the saved state does not know is refused)."""
    chain = list(strategy_chain(strategy))
    if len(chain) != len(state):
        raise ConfigurationError(f"the checkpoint's strategy has {len(state)} levels, this run's "
                                 f"has {len(chain)}; expected the same strategy and wrappers")
    for obj, saved in zip(chain, state, strict=True):
        for name, value in saved.items():
            if name not in vars(obj):
                raise ConfigurationError(f"the checkpoint holds {type(obj).__name__}.{name}, which "
                                         "this run's strategy does not have")
            decoded = _decode(value)
            if isinstance(vars(obj)[name], tuple) and isinstance(decoded, list):
                decoded = tuple(decoded)
            setattr(obj, name, decoded)


@dataclass
class Checkpoint:
    """What a run needs to continue after its ``completed`` rounds."""

    completed: int
    params: np.ndarray
    server_rng: str  # JSON of the bit generator's state
    strategy_state: list[dict[str, Any]]
    ledger: dict[str, Any] | None
    summary: dict[str, Any]
    digest: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "completed": self.completed, "params": _encode(self.params),
            "server_rng": self.server_rng, "strategy_state": self.strategy_state,
            "ledger": self.ledger, "summary": self.summary, "digest": self.digest,
            "extra": self.extra,
        }, default=_json_default)

    @classmethod
    def from_json(cls, text: str, *, source: str = "checkpoint") -> Checkpoint:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{source} is not a checkpoint: {exc}") from exc
        if data.get("format") != FORMAT:
            raise ConfigurationError(f"{source} has format {data.get('format')!r}, expected {FORMAT!r}")
        return cls(completed=int(data["completed"]), params=_decode(data["params"]),
                   server_rng=str(data["server_rng"]), strategy_state=list(data["strategy_state"]),
                   ledger=data["ledger"], summary=dict(data["summary"]), digest=str(data["digest"]),
                   extra=dict(data.get("extra", {})))


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically (temporary file, fsync, rename, fsync of the folder)."""
    return _write_atomic(Path(path), checkpoint.to_json().encode("utf-8"))


def in_flight_path(checkpoint_path: str | Path) -> Path:
    """Where the rounds whose model went out but whose result is not in the checkpoint are
    recorded, beside the checkpoint (see :func:`save_in_flight`)."""
    p = Path(checkpoint_path)
    return p.with_name(p.name + ".inflight")


def save_in_flight(checkpoint_path: str | Path, attempts: list[dict[str, Any]]) -> Path:
    """Record, atomically, the round attempts whose noisy data may have left the hospitals
    (local or distributed DP) and whose charge is not in the checkpoint's ledger yet: each
    ``{"round": r, "entry": <a ledger round's dict>}``.  A resumed run charges them."""
    body = json.dumps({"format": "securefed-inflight-1", "attempts": attempts}, sort_keys=True)
    return _write_atomic(in_flight_path(checkpoint_path), body.encode("utf-8"))


def load_in_flight(checkpoint_path: str | Path) -> list[dict[str, Any]]:
    """The attempts :func:`save_in_flight` recorded (none when there is no such file)."""
    path = in_flight_path(checkpoint_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the rounds in flight, {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != "securefed-inflight-1" \
            or not isinstance(data.get("attempts"), list):
        raise ConfigurationError(f"{path} is not a record of rounds in flight")
    return list(data["attempts"])


def _write_atomic(target: Path, data: bytes) -> Path:
    from securefed.identity import write_private_file  # exclusive 0600 file, fsync, rename

    target.parent.mkdir(parents=True, exist_ok=True)
    return write_private_file(target, data)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read checkpoint {path}: {exc}") from exc
    return Checkpoint.from_json(text, source=str(path))
