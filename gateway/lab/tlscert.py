"""A self-signed server certificate for the lab and the tests (never for production).

`write_server_cert(directory, address)` writes server.pem and server.key (RSA 2048, SHA-256)
for `address` (subjectAltName IP and DNS "vpatch-lab"), `basicConstraints CA:FALSE` (clients
and mitmproxy refuse a CA certificate as a server's), valid from a day ago for `days` days
(negative: already expired). Guarantees: the key file is written mode 0600.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

__all__ = ["write_server_cert"]


def write_server_cert(
    directory: Path, address: str, days: int = 3650, name: str = "server"
) -> tuple[Path, Path]:
    """(certificate path, key path) of a new self-signed certificate for `address`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vpatch-lab {address}")])
    now = datetime.now(UTC)
    start, end = (now - timedelta(days=1), now + timedelta(days=days))
    if days < 0:
        start, end = now + timedelta(days=days * 2), now + timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address)), x509.DNSName("vpatch-lab")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path
