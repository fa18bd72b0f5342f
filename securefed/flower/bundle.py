"""One folder per party: what the coordinator and each hospital need to take part.

``securefed deploy init --hospitals north,south,east --host superlink.example.org --out DIR``
writes::

    DIR/coordinator/
        coordinator.json        the deployment (address, ports, hospitals and their client ids)
        tls/ca.pem, ca.key      the private certificate authority (ca.key: keep offline)
        tls/server.pem, .key    the SuperLink's certificate
        app-signing.key         the consortium's Ed25519 app-signing key (mode 0600)
        trusted-entities.yaml   its public key, as Flower's --trusted-entities reads it
        nodes/<name>.pub        each hospital's node public key, registered at start
        roster.json             the hospitals' pinned identity roster (with --roster)
    DIR/hospitals/<name>/
        node.json               this hospital's settings (SuperLink address, client id, data)
        roster.json             the same roster (with --roster)
        ca.pem                  the CA certificate: the only server this node accepts
        node.key, node.pub      this hospital's node key (private key mode 0600)
        trusted-entities.yaml   the consortium's app-signing public key

and a hospital starts with one command, ``securefed deploy node --bundle DIR/hospitals/north``
(after setting ``data-path``/``schema-path`` in ``node.json``, or with ``--data`` and
``--schema``).

What each key does and who holds it (the threat model of the deployment; see
docs/deployment.md, "What each hospital trusts"):

* **Node keys** (ECDSA P-384, OpenSSH format as Flower requires).  The SuperLink runs with
  ``--enable-supernode-auth`` and accepts only the node keys registered by the coordinator
  from ``coordinator/nodes/``.  Each private key goes to its hospital only.  A registered
  key keeps its Flower node id, so a restarted node is the same node to the ServerApp.
* **The app-signing key** (Ed25519, OpenSSH).  Every SuperNode runs with
  ``--trusted-entities`` naming its public key, so it runs only an app whose bundle (FAB) is
  signed by it; an app submitted by anyone else is answered with Flower's "FAB could not be
  verified" error, and no code of it runs at the hospital.  The key signs apps on the
  coordinator machine by default; a consortium that does not trust the coordinator's
  machine keeps it elsewhere and hands the coordinator only the signature
  (``securefed deploy sign``).
* **TLS** (ECDSA P-256, :mod:`securefed.flower.tls`).  Hospitals hold only ``ca.pem``.
* **Identity keys** for secure aggregation against a deviating server
  (:mod:`securefed.identity`, ``securefed keys identity``) are *not* made here: the server
  must never hold a hospital's identity key, so the hospitals make them (or a party they
  trust does) and only the public roster is handed to ``make_consortium(roster=...)``; it is
  copied to every folder, and each hospital names its own identity file when it starts
  (``securefed deploy node --identity-key``).

Key generation uses ``cryptography`` (OpenSSL) and the OS CSPRNG; private keys are written
with mode 0600 and never overwritten silently.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from securefed.errors import ConfigurationError, KeyMaterialError
from securefed.identity import write_private_file

__all__ = [
    "APP_SIGNER_ID",
    "Coordinator",
    "Hospital",
    "write_node_key",
    "write_signing_key",
    "make_consortium",
    "load_coordinator",
    "load_hospital",
]

#: The public key id of the consortium's app-signing key in trusted-entities files and in
#: a signed app's verification record (Flower's ids read ``fpk_<name>``).
APP_SIGNER_ID = "fpk_securefed_consortium"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    if os.path.lexists(path) and not overwrite:  # a dangling symbolic link counts too
        raise ConfigurationError(f"{path} already exists; refusing to overwrite a private key "
                                 "(pass overwrite=True / --overwrite to replace it)")
    write_private_file(path, data)


def write_node_key(private_path: str | Path, public_path: str | Path, *,
                   overwrite: bool = False) -> str:
    """A SuperNode authentication key pair: ECDSA P-384, OpenSSH format (what Flower reads).

    Returns the public key line (what the coordinator registers with
    ``flwr supernode register``).
    """
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(Path(private_path), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()), overwrite=overwrite)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode("ascii")
    Path(public_path).write_text(public + "\n", encoding="ascii")
    return public


def write_signing_key(private_path: str | Path, trusted_path: str | Path, *,
                      overwrite: bool = False) -> str:
    """The consortium's app-signing key (Ed25519, OpenSSH) and the trusted-entities file.

    Returns the public key line written to ``trusted_path`` under :data:`APP_SIGNER_ID`.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    _write_private(Path(private_path), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()), overwrite=overwrite)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode("ascii")
    write_trusted_entities(trusted_path, public)
    return public


def write_trusted_entities(path: str | Path, public_line: str) -> None:
    """Flower's ``--trusted-entities`` YAML: ``{key id: 'ssh-ed25519 ...'}``."""
    if not public_line.startswith("ssh-ed25519 "):
        raise KeyMaterialError(f"an app-signing key must be ssh-ed25519, got {public_line[:20]!r}")
    Path(path).write_text(f"{APP_SIGNER_ID}: '{public_line.strip()}'\n", encoding="ascii")


def load_signing_key(path: str | Path) -> ed25519.Ed25519PrivateKey:
    """The app-signing key written by :func:`write_signing_key`."""
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyMaterialError(f"cannot read the app-signing key {path}: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyMaterialError(f"{path} holds a {type(key).__name__}, expected an Ed25519 key")
    return key


@dataclass(frozen=True)
class Hospital:
    """One hospital's bundle folder, read from its ``node.json``."""

    folder: Path
    name: str
    client_id: int
    superlink: str  # host:port the node dials
    node_config: dict[str, Any]  # passed as --node-config (client-id, data-path, ...)

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def node_key(self) -> Path:
        return self.folder / "node.key"

    @property
    def trusted_entities(self) -> Path:
        return self.folder / "trusted-entities.yaml"


@dataclass(frozen=True)
class Coordinator:
    """The coordinator's bundle folder, read from its ``coordinator.json``."""

    folder: Path
    host: str  # the name hospitals dial
    port: int  # the hospital-facing (Fleet-only) port
    hospitals: tuple[tuple[str, int], ...]  # (name, client id)

    @property
    def tls_dir(self) -> Path:
        return self.folder / "tls"

    @property
    def signing_key(self) -> Path:
        return self.folder / "app-signing.key"

    @property
    def trusted_entities(self) -> Path:
        return self.folder / "trusted-entities.yaml"

    @property
    def roster(self) -> Path | None:
        """The server's copy of the pinned roster (``secagg-roster``), when there is one."""
        path = self.folder / "roster.json"
        return path if path.is_file() else None

    def node_public_keys(self) -> dict[str, Path]:
        return {name: self.folder / "nodes" / f"{name}.pub" for name, _ in self.hospitals}


def make_consortium(
    out_dir: str | Path,
    *,
    hospitals: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 9092,
    node_configs: Mapping[str, Mapping[str, Any]] | None = None,
    roster: str | Path | None = None,
    overwrite: bool = False,
) -> tuple[Coordinator, list[Hospital]]:
    """Write the coordinator's folder and one folder per hospital (see the module docstring).

    ``hospitals`` are names; client ids are their positions.  ``node_configs`` may give a
    hospital's data settings (``data-path``/``schema-path`` or a bundled ``partition-id``).
    """
    from securefed.flower.tls import write_tls_files

    names = list(hospitals)
    if not names:
        raise ConfigurationError("hospitals must name at least one hospital, got none")
    for name in names:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigurationError(f"hospital names are letters, digits, '_', '.', '-', got {name!r}")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"hospital names must be unique, got {names}")
    if not (isinstance(port, int) and 0 < port < 65536):
        raise ConfigurationError(f"port must be in 1..65535, got {port!r}")
    roster_text = None
    if roster is not None:
        from securefed.identity import Roster

        pinned = Roster.load(roster)
        listed = [pinned.name_of(c) for c in pinned.client_ids]
        if listed != names:
            raise ConfigurationError(f"the roster lists hospitals {listed} (client-id order), "
                                     f"the consortium {names}; expected the same, in order")
        roster_text = Path(roster).read_text(encoding="utf-8")
    out = Path(out_dir).absolute()
    coord_dir = out / "coordinator"
    (coord_dir / "nodes").mkdir(parents=True, exist_ok=True)
    write_tls_files(coord_dir / "tls", hosts=[host], overwrite=overwrite)
    signing_public = write_signing_key(coord_dir / "app-signing.key",
                                       coord_dir / "trusted-entities.yaml", overwrite=overwrite)
    coordinator = Coordinator(folder=coord_dir, host=host, port=port,
                              hospitals=tuple((n, i) for i, n in enumerate(names)))
    (coord_dir / "coordinator.json").write_text(json.dumps({
        "host": host, "port": port,
        "hospitals": [{"name": n, "client-id": i} for i, n in enumerate(names)],
    }, indent=1) + "\n", encoding="utf-8")
    if roster_text is not None:
        (coord_dir / "roster.json").write_text(roster_text, encoding="utf-8")
    ca_pem = (coord_dir / "tls" / "ca.pem").read_bytes()
    result = []
    for cid, name in enumerate(names):
        folder = out / "hospitals" / name
        folder.mkdir(parents=True, exist_ok=True)
        public = write_node_key(folder / "node.key", folder / "node.pub", overwrite=overwrite)
        (coord_dir / "nodes" / f"{name}.pub").write_text(public + "\n", encoding="ascii")
        (folder / "ca.pem").write_bytes(ca_pem)
        write_trusted_entities(folder / "trusted-entities.yaml", signing_public)
        config = {"client-id": cid, **dict((node_configs or {}).get(name, {}))}
        if roster_text is not None:
            (folder / "roster.json").write_text(roster_text, encoding="utf-8")
            config.setdefault("roster", "roster.json")  # relative: the folder moves to the hospital
        config.setdefault("name", name)
        settings = {"name": name, "superlink": f"{host}:{port}", "node-config": config}
        (folder / "node.json").write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
        result.append(load_hospital(folder))
    return coordinator, result


#: Node-config keys that hold file paths; relative ones are resolved against the bundle.
_PATH_KEYS = ("roster", "identity-key", "data-path", "schema-path")


def load_hospital(folder: str | Path) -> Hospital:
    """Read a hospital's bundle folder (checks that the files it needs are there).

    Paths in its ``node-config`` that are relative (the roster, as written by
    :func:`make_consortium`) are relative to the folder, so the bundle still works after it
    is copied to the hospital's machine."""
    folder = Path(folder).absolute()
    try:
        data = json.loads((folder / "node.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"{folder} is not a hospital bundle (node.json: {exc})") from exc
    for name in ("ca.pem", "node.key", "trusted-entities.yaml"):
        if not (folder / name).is_file():
            raise ConfigurationError(f"hospital bundle {folder} lacks {name}")
    config = dict(data.get("node-config", {}))
    for key in _PATH_KEYS:  # a relative path in node.json is relative to the bundle folder
        value = config.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            config[key] = str(folder / value)
    return Hospital(folder=folder, name=str(data["name"]), client_id=int(config["client-id"]),
                    superlink=str(data["superlink"]), node_config=config)


def load_coordinator(folder: str | Path) -> Coordinator:
    """Read the coordinator's bundle folder."""
    folder = Path(folder).absolute()
    try:
        data = json.loads((folder / "coordinator.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"{folder} is not a coordinator bundle (coordinator.json: {exc})") from exc
    return Coordinator(folder=folder, host=str(data["host"]), port=int(data["port"]),
                       hospitals=tuple((str(h["name"]), int(h["client-id"])) for h in data["hospitals"]))
