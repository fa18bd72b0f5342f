"""Signed apps: the coordinator submits only apps the consortium's key signed.

Why.  Anyone who can reach a SuperLink's Control API can submit an app, and every SuperNode
runs it.  Flower's defence is app verification: a SuperNode started with
``--trusted-entities FILE`` runs an app only if its bundle (FAB) carries an Ed25519
signature by one of the keys in FILE, and answers anything else with "The FAB could not be
verified".  Flower 1.42 attaches signatures to an app only when it is fetched from Flower
Hub (over the internet); an app submitted with ``flwr run <folder>`` carries none, so a
node with trusted entities refuses it.

This module does what Hub does, offline, with Flower's own formats:

1. :func:`build_fab` builds the app bundle with Flower's builder (the bytes are
   deterministic for a given folder);
2. :func:`sign_fab` signs ``timestamp (8 bytes, big-endian) || SHA-256(FAB)`` with the
   consortium's Ed25519 key, the message Flower's SuperNode verifies;
3. :func:`store_signed_app` stores the bundle with its verification record in the
   SuperLink's database (``--database``), as an app of the SuperLink's federation;
4. :func:`start_run` starts a run of that stored app by its hash through the Control API.

The SuperNode then checks the signature itself, with Flower's code, against the public key
the hospital holds.  Signing needs the private key; steps 3-4 need only the signature, so a
consortium that keeps its key off the coordinator machine signs elsewhere
(``securefed deploy sign``) and hands over the signature file.

Threat model: the hospitals trust the holder of the app-signing key to sign only reviewed
apps.  They do not trust the network, the SuperLink's database or whoever can reach the
Control API: none of them can produce a signature, and a bundle changed after signing no
longer matches its SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefed.errors import ConfigurationError, KeyMaterialError

__all__ = [
    "SignedApp",
    "build_fab",
    "sign_fab",
    "verify_signed_app",
    "store_signed_app",
    "start_run",
    "app_id_of",
]


@dataclass(frozen=True)
class SignedApp:
    """A Flower app bundle and its verification record (Flower's format)."""

    fab: bytes
    verifications: dict[str, str]

    @property
    def fab_hash(self) -> str:
        return hashlib.sha256(self.fab).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the bundle and its signature as one JSON file (public: no secret in it)."""
        target = Path(path)
        target.write_text(json.dumps({
            "fab": base64.b64encode(self.fab).decode("ascii"),
            "verifications": self.verifications,
        }), encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | Path) -> SignedApp:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(fab=base64.b64decode(data["fab"]), verifications=dict(data["verifications"]))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"{path} is not a signed app file: {exc}") from exc


def build_fab(app_dir: str | Path) -> bytes:
    """The app's bundle, built by Flower's own builder."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(Path(app_dir))


def app_id_of(fab: bytes) -> str:
    """``@publisher/name`` of a bundle, as the SuperLink files it."""
    from flwr.common.config import get_fab_config, get_metadata_from_config

    fab_id, _ = get_metadata_from_config(get_fab_config(fab))
    return f"@{fab_id}"


def sign_fab(fab: bytes, key: Any, *, key_id: str | None = None,
             signed_at: int | None = None) -> SignedApp:
    """Sign ``fab`` with an Ed25519 key as Flower's app verification expects."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

    from securefed.flower.bundle import APP_SIGNER_ID

    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyMaterialError(f"apps are signed with an Ed25519 key, got {type(key).__name__}")
    when = int(time.time()) if signed_at is None else int(signed_at)
    signature = key.sign(create_message_to_sign(hashlib.sha256(fab).digest(), when))
    record = {"signature": base64.urlsafe_b64encode(signature).decode("ascii").rstrip("="),
              "signed_at": when}
    return SignedApp(fab=fab, verifications={key_id or APP_SIGNER_ID: json.dumps(record),
                                             "valid_license": "Valid"})


def verify_signed_app(app: SignedApp, trusted_entities: str | Path) -> bool:
    """Check ``app`` against a trusted-entities file with the SuperNode's own check."""
    import yaml
    from flwr.supercore.fab import Fab
    from flwr.supernode.start_client_internal import _verify_fab

    entities = yaml.safe_load(Path(trusted_entities).read_text(encoding="utf-8"))
    return bool(_verify_fab(Fab(app.fab_hash, app.fab, dict(app.verifications)), entities))


def store_signed_app(database: str | Path, app: SignedApp) -> str:
    """Store the bundle and its verification record in the SuperLink's database.

    The SuperLink must run with ``--database`` on the same file.  Returns the app id.
    """
    from flwr.common.constant import NOOP_FLWR_AID
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import NOOP_FEDERATION_ID, TaskType
    from flwr.supercore.fab import Fab
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager

    db = str(Path(database).absolute())
    if not Path(db).is_file():
        raise ConfigurationError(f"SuperLink database {db} does not exist; start the SuperLink "
                                 "with --database first")
    state = LinkStateFactory(db, NoOpFederationManager(), ObjectStoreFactory(db)).state()
    app_id = app_id_of(app.fab)
    state.store_app(fab=Fab(app.fab_hash, app.fab, dict(app.verifications)),
                    federation_id=NOOP_FEDERATION_ID, app_id=app_id,
                    app_type=TaskType.SERVER_APP, added_by=NOOP_FLWR_AID)
    return app_id


def start_run(address: str, *, root_certificates: str | Path | None, app: SignedApp,
              run_config: Mapping[str, Any]) -> int:
    """Start a run of the stored ``app`` through the Control API at ``address``.

    ``root_certificates`` is the CA file (``None``: plain HTTP, tests only).  Returns the
    run id.
    """
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.fab import Fab

    client = ControlHttpClient.from_server_address(
        address, root_certificates is None,
        None if root_certificates is None else str(root_certificates), [])
    try:
        request = StartRunRequest(fab=fab_to_proto(Fab(app.fab_hash, b"", {})),
                                  override_config=user_config_to_proto(dict(run_config)),
                                  federation="", app_spec=app_id_of(app.fab))
        response = client.StartRun(request)
    finally:
        client.close()
    if not response.HasField("run_id"):
        raise ConfigurationError(f"the SuperLink at {address} did not start the run of "
                                 f"{app_id_of(app.fab)} (is the app stored in its database?)")
    return int(response.run_id)
