"""HTTPS for the admin UI: its certificate and the TLS settings `vpatch ui` serves with.

- `ui_certificate(state_dir, names)`: the configured certificate is the caller's; without one
  the UI uses `ui-tls.crt`/`ui-tls.key` in its state directory, made on the first start: a
  self-signed ECDSA P-256 certificate for `names` (the listen address, the host name,
  localhost, 127.0.0.1 and ::1), valid CERT_DAYS. The key is created 0600 with O_EXCL (never
  readable by anyone else, not even for a moment) and an existing one is used only when it
  belongs to this user and is 0600 (gateway/statefiles.py `check_secret`), like the session
  secret beside it. A certificate whose key is missing is an error naming both (no silent
  replacement of what admins may have pinned).
- `server_context(cert, key)`: TLS 1.2 or later, the default cipher suites of the ssl module,
  no renegotiation, no compression; TlsError names the file when it cannot be loaded.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import VpatchError
from gateway.statefiles import check_secret, create_file, make_dir, shared_gid

CERT_FILE: Final = "ui-tls.crt"
KEY_FILE: Final = "ui-tls.key"
CERT_DAYS: Final = 3 * 365
# the header every HTTPS response carries: browsers use HTTPS only for a year
HSTS: Final = ("Strict-Transport-Security", "max-age=31536000")


class TlsError(VpatchError):
    """The UI's certificate or key cannot be made or used (names the file and why)."""


def default_names(host: str) -> list[str]:
    """What a self-signed certificate for a UI listening on `host` names."""
    names = [host, socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    return [
        n for i, n in enumerate(names) if n and n not in names[:i] and n not in ("0.0.0.0", "::")
    ]


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _self_signed(names: list[str]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vpatch admin UI {names[0]}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ui_certificate(state_dir: Path, names: list[str]) -> tuple[Path, Path, bool]:
    """(certificate, key, made now) in state_dir: made self-signed for `names` when absent."""
    make_dir(state_dir, shared_gid())
    cert, key = state_dir / CERT_FILE, state_dir / KEY_FILE
    if not key.exists():
        if cert.exists():
            raise TlsError(f"{cert} exists but its key {key} does not; restore the key, or "
                           "delete the certificate to have a new pair generated")  # fmt: skip
        cert_pem, key_pem = _self_signed(names)
        create_file(key, data=key_pem, mode=0o600)  # O_EXCL, 0600 from the first byte
        cert.unlink(missing_ok=True)
        create_file(cert, data=cert_pem, mode=0o644)
        return cert, key, True
    check_secret(key, "the UI's TLS key")
    if not cert.exists():
        raise TlsError(f"{key} exists but its certificate {cert} does not; delete the key to "
                       "have a new pair generated")  # fmt: skip
    return cert, key, False


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server side TLS settings with this certificate and key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise TlsError(f"TLS certificate {cert} with key {key}: {err}") from err
    return ctx


def fingerprint(cert: Path) -> str:
    """The certificate's SHA-256 fingerprint (AA:BB:...), to compare with what a browser shows."""
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    return loaded.fingerprint(hashes.SHA256()).hex(":").upper()
