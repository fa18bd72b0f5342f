"""TLS set-up for a Flower deployment: a private certificate authority and a server certificate.

The SuperLink (the coordinating server) presents ``server.pem`` signed by ``ca.pem``; each
hospital's SuperNode is given ``ca.pem`` only (``--root-certificates``) and so accepts no
other server.  The CA's private key ``ca.key`` is needed only to sign new server
certificates: keep it offline, never on a hospital node.

Keys are ECDSA on P-256 and certificates are SHA-256 signed X.509 v3, made with
``cryptography``'s audited primitives; private keys are written with mode ``0600``.

Command line::

    python -m securefed.flower.tls OUT_DIR --host superlink.example.org --host 10.0.0.5

always adds ``127.0.0.1`` and ``localhost`` to the server certificate's subject alternative
names (a client checks the address it dialled against them).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securefed.errors import ConfigurationError
from securefed.identity import write_private_file

__all__ = ["TLSFiles", "write_tls_files", "main"]

_DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the files :func:`write_tls_files` wrote."""

    ca_cert: Path  # give to every SuperNode and to the flwr command line
    ca_key: Path  # keep offline; signs server certificates
    server_cert: Path  # SuperLink --ssl-certfile
    server_key: Path  # SuperLink --ssl-keyfile


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "securefed deployment"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(path, data)


def write_tls_files(
    out_dir: str | Path,
    *,
    hosts: Sequence[str] = (),
    valid_days: int = 365,
    overwrite: bool = False,
) -> TLSFiles:
    """Create ``ca.pem``, ``ca.key``, ``server.pem`` and ``server.key`` in ``out_dir``.

    ``hosts`` are extra DNS names or IP addresses of the SuperLink; ``127.0.0.1`` and
    ``localhost`` are always included.  Refuses to overwrite existing files unless
    ``overwrite=True`` (replacing a CA would lock every hospital out).
    """
    if not (isinstance(valid_days, int) and valid_days >= 1):
        raise ConfigurationError(f"valid_days must be an integer >= 1, got {valid_days!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(ca_cert=out / "ca.pem", ca_key=out / "ca.key",
                     server_cert=out / "server.pem", server_key=out / "server.key")
    existing = [str(p) for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key)
                if p.exists()]
    if existing and not overwrite:
        raise ConfigurationError(f"TLS files already exist: {existing}; pass overwrite=True "
                                 "(--overwrite) to replace them")
    all_hosts = list(dict.fromkeys([*_DEFAULT_HOSTS, *hosts]))
    now = _dt.datetime.now(_dt.timezone.utc)
    start = now - _dt.timedelta(minutes=5)  # tolerate small clock differences
    end = now + _dt.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("securefed deployment CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(all_hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(all_hosts), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.ca_key, ca_key)
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.server_key, server_key)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m securefed.flower.tls",
        description="Create a private CA and a SuperLink server certificate for Flower TLS.",
    )
    parser.add_argument("out_dir", help="folder for ca.pem, ca.key, server.pem, server.key")
    parser.add_argument("--host", action="append", default=[],
                        help="extra DNS name or IP address of the SuperLink (repeatable)")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    files = write_tls_files(args.out_dir, hosts=args.host, valid_days=args.days,
                            overwrite=args.overwrite)
    print(f"CA certificate (give to every SuperNode): {files.ca_cert}")
    print(f"CA private key (keep offline):           {files.ca_key}")
    print(f"SuperLink certificate:                   {files.server_cert}")
    print(f"SuperLink private key:                   {files.server_key}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
