"""The HTTPS inspection plane's per-service configuration (`tls_proxy.services` entries).

What it does: `parse_services(value, where)` reads the list of services a configuration gives
under `tls_proxy.services` into frozen `TlsService` records, and checks each service's
certificate and key at load: `check_keypair(cert, key)` reads both PEM files, refuses a key
that does not belong to the certificate (TlsConfigError naming both files), and returns the
certificate's `CertInfo` (subject, validity dates); an expired or not-yet-valid certificate is
logged as a warning naming its dates (the proxy still starts: refusing would take the service
down on the day it expires). `parse_service` is the check of one entry, shared with the
services edited in the UI and API: `service_from(values)` (absolute paths, ServiceFieldError
naming the field), `service_settings(service)` (the entry back, as stored) and
`from_text(key, text)` (a form field's text as the value the entry would hold).

What it guarantees:
- every value is checked against its bounds; a wrong one raises ConfigError through `where`
  (the configuration's file, line and dotted key);
- two services never claim the same (host, port);
- the versions are mitmproxy's names (`SSL3`, `TLS1`, `TLS1_1`, `TLS1_2`, `TLS1_3`); the client
  floor defaults to TLS 1.2 (clients are offered 1.2 and 1.3 only), the server floor to TLS 1.0
  (what an IIS 6 still speaks);
- certificate and key files are read only when regular files, at most MAX_PEM_BYTES each.
This module imports nothing of the project but gateway.errors (gateway/config.py imports it),
and cryptography only in `check_keypair`: every process imports the configuration, and
cryptography's x509 is about 15 MB of RSS that only a certificate check needs (issue 16).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "BlockAnswer",
    "CertInfo",
    "MAX_SERVICES",
    "SID_HEADER_LIMIT",
    "SID_TLS_REFUSED",
    "ServiceFieldError",
    "TlsConfigError",
    "TlsService",
    "TlsVersion",
    "check_keypair",
    "from_text",
    "parse_service",
    "parse_services",
    "service_from",
    "service_settings",
]

log = logging.getLogger("vpatch.tls")

SID_TLS_REFUSED: Final = 9300030  # a client offered only TLS versions below the floor
SID_HEADER_LIMIT: Final = 9300031  # a request's header fields over the service's bounds
MAX_SERVICES: Final = 64  # proxied services (each has its own proxy processes and ports)
MAX_PROCESSES: Final = 16  # proxy processes per service (one process is one CPU)
MAX_DEPTH: Final = 1 << 26  # bytes of a body inspected
MAX_HEADER_LIMIT: Final = 1 << 20
MAX_PEM_BYTES: Final = 1 << 20  # a certificate chain or a key file read at most


class TlsVersion(enum.Enum):
    """A TLS protocol version, by mitmproxy's name (mitmproxy.net.tls.Version)."""

    SSL3 = "SSL3"
    TLS1 = "TLS1"
    TLS1_1 = "TLS1_1"
    TLS1_2 = "TLS1_2"
    TLS1_3 = "TLS1_3"

    @property
    def code(self) -> int:
        """The version's number on the wire (0x0300 SSL 3.0 ... 0x0304 TLS 1.3)."""
        return _VERSION_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> TlsVersion | None:
        return next((v for v, c in _VERSION_CODES.items() if c == code), None)


_VERSION_CODES: Final = {
    TlsVersion.SSL3: 0x0300,
    TlsVersion.TLS1: 0x0301,
    TlsVersion.TLS1_1: 0x0302,
    TlsVersion.TLS1_2: 0x0303,
    TlsVersion.TLS1_3: 0x0304,
}


class BlockAnswer(enum.Enum):
    """What a client whose request is blocked gets."""

    PAGE = "page"  # a 403 page (the service's `block_page`, or a built-in one), then close
    RESET = "reset"  # the connection is closed without an answer


class TlsConfigError(ConfigError):
    """A service's certificate or key cannot be used (names the files and why); `field` is
    the setting at fault (`cert` or `key`)."""

    def __init__(self, message: str, field: str = "cert") -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[type[TlsConfigError], tuple[str, str]]:
        return type(self), (str(self), self.field)


class ServiceFieldError(ConfigError):
    """A service edited in the UI or API is wrong: `field` names the setting ("" for the
    service as a whole), the message says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[type[ServiceFieldError], tuple[str, str]]:
        return type(self), (self.field, self.reason)


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the UI and `status` show of a service's certificate."""

    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime

    def expired(self, now: datetime) -> bool:
        return not self.not_before <= now <= self.not_after

    def as_dict(self) -> dict[str, str]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class TlsService:
    """One protected web service terminated by the proxy plane."""

    host: str  # the server's address (IPv4 or IPv6), as the client addresses it
    port: int = 443
    cert: Path = Path("server.pem")  # the server's own certificate (PEM, may hold the chain)
    key: Path = Path("server.key")  # its private key (PEM)
    client_min: TlsVersion = TlsVersion.TLS1_2  # clients below: refused with an event
    server_min: TlsVersion = TlsVersion.TLS1  # the lowest version spoken to the server
    server_ciphers: str = ""  # OpenSSL cipher list toward the server ("": mitmproxy's)
    blocked: BlockAnswer = BlockAnswer.PAGE
    block_page: Path | None = None  # HTML answered with 403 (None: a built-in page)
    depth: int = 1 << 20  # body bytes inspected per request and response
    max_header_bytes: int = 65536  # a request whose headers are larger: event and refusal
    max_headers: int = 100  # a request with more header fields: event and refusal
    forwarded: bool = False  # add X-Forwarded-For and Forwarded (the server sees the proxy)
    processes: int = 1  # proxy processes for this service (spread by the kernel redirect)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.host).version

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if self.family == 6 else self.host
        return f"{host}:{self.port}"


# key -> (reader, bound text); readers take (value, fail(reason)) and return the field value
Fail = Callable[[str], ConfigError]


def _int(lo: int, hi: int) -> Callable[[object, Fail], int]:
    def read(value: object, fail: Fail) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise fail(f"expected an integer in {lo}..{hi}, got {value!r}")
        return value

    return read


def _enum(kind: type[enum.Enum]) -> Callable[[object, Fail], Any]:
    def read(value: object, fail: Fail) -> Any:
        try:
            return kind(value)
        except ValueError as err:
            names = ", ".join(str(m.value) for m in kind)
            raise fail(f"{value!r} is not one of {names}") from err

    return read


def _bool(value: object, fail: Fail) -> bool:
    if not isinstance(value, bool):
        raise fail(f"expected true or false, got {value!r}")
    return value


def _host(value: object, fail: Fail) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError as err:
        raise fail(f"{value!r} is not an IPv4 or IPv6 address") from err


def _ciphers(value: object, fail: Fail) -> str:
    if not isinstance(value, str) or len(value) > 2048 or not value.isascii():
        raise fail(f"expected an OpenSSL cipher list, got {value!r}")
    return value


_READERS: Final[Mapping[str, Callable[[object, Fail], Any]]] = {
    "host": _host,
    "port": _int(1, 65535),
    "client_min": _enum(TlsVersion),
    "server_min": _enum(TlsVersion),
    "server_ciphers": _ciphers,
    "blocked": _enum(BlockAnswer),
    "depth": _int(0, MAX_DEPTH),
    "max_header_bytes": _int(1024, MAX_HEADER_LIMIT),
    "max_headers": _int(8, 10000),
    "forwarded": _bool,
    "processes": _int(1, MAX_PROCESSES),
}
_PATHS: Final = ("cert", "key", "block_page")
KEYS: Final = frozenset(_READERS) | frozenset(_PATHS)
INT_KEYS: Final = frozenset({"port", "depth", "max_header_bytes", "max_headers", "processes"})
BOOL_KEYS: Final = frozenset({"forwarded"})


def _at(fail: Callable[[tuple[str, ...], str], ConfigError], path: tuple[str, ...]) -> Fail:
    def at(reason: str) -> ConfigError:
        return fail(path, reason)

    return at


def parse_service(
    item: Mapping[Any, Any],
    fail: Callable[[tuple[str, ...], str], ConfigError],
    resolve: Callable[[tuple[str, ...], object], Path],
) -> TlsService:
    """One service from its mapping (the keys of `tls_proxy.services` entries): every value
    read and bounded, the key checked against the certificate (TlsConfigError), the block
    page found. `fail(path, reason)` makes the error naming the key (path relative to the
    entry; () for the entry as a whole); `resolve(path, value)` turns a path value into a Path.
    The one check of a service, for the configuration file and for the policy store."""
    values: dict[str, Any] = {}
    for key, raw in item.items():
        path = (str(key),)
        if key in _PATHS:
            values[key] = None if raw is None and key == "block_page" else resolve(path, raw)
        elif key in _READERS:
            values[key] = _READERS[key](raw, _at(fail, path))
        else:
            raise fail(path, f"unknown key (allowed: {', '.join(sorted(KEYS))})")
    for needed in ("host", "cert", "key"):
        if needed not in values:
            raise fail((), f"a proxied service needs `{needed}`")
    service = TlsService(**values)
    check_keypair(service.cert, service.key)
    if service.block_page is not None and not service.block_page.is_file():
        raise fail(("block_page",), f"{service.block_page}: no such file")
    return service


MakeError = Callable[[tuple[str, ...], str], ConfigError]
Resolve = Callable[[tuple[str, ...], object], Path]


def _within(where: tuple[str, ...], fail: MakeError, resolve: Resolve) -> tuple[MakeError, Resolve]:
    """`fail` and `resolve` for the entry at `where` (paths relative to it)."""

    def fail_in(path: tuple[str, ...], reason: str) -> ConfigError:
        return fail((*where, *path), reason)

    def resolve_in(path: tuple[str, ...], raw: object) -> Path:
        return resolve((*where, *path), raw)

    return fail_in, resolve_in


def parse_services(
    items: list[object],
    fail: Callable[[tuple[str, ...], str], ConfigError],
    resolve: Callable[[tuple[str, ...], object], Path],
) -> tuple[TlsService, ...]:
    """The services of `tls_proxy.services` (a list of mappings). `fail(path, reason)` makes
    the ConfigError naming the file, line and key; `resolve(path, value)` turns a path value
    into a Path (relative to the configuration file). Certificates and keys are checked."""
    out: list[TlsService] = []
    seen: set[tuple[str, int]] = set()
    for i, item in enumerate(items):
        where = (str(i),)
        if not isinstance(item, Mapping):
            raise fail(where, f"expected a mapping (host, cert, key, ...), got {item!r}")
        try:
            service = parse_service(item, *_within(where, fail, resolve))
        except TlsConfigError as err:
            raise fail(where, str(err)) from err
        if (service.host, service.port) in seen:
            raise fail(where, f"{service.name} is proxied twice")
        seen.add((service.host, service.port))
        out.append(service)
    return tuple(out)


def service_settings(service: TlsService) -> dict[str, Any]:
    """The service as its mapping (what parse_service reads back; JSON-able)."""
    return {
        "host": service.host,
        "port": service.port,
        "cert": str(service.cert),
        "key": str(service.key),
        "client_min": service.client_min.value,
        "server_min": service.server_min.value,
        "server_ciphers": service.server_ciphers,
        "blocked": service.blocked.value,
        "block_page": None if service.block_page is None else str(service.block_page),
        "depth": service.depth,
        "max_header_bytes": service.max_header_bytes,
        "max_headers": service.max_headers,
        "forwarded": service.forwarded,
        "processes": service.processes,
    }


def from_text(key: str, text: str) -> object:
    """A form field's text as the value parse_service reads: integers for the integer keys,
    booleans for the boolean ones (`on`, `true`, `1`, `yes`; empty, `off`, `false`, `0`,
    `no`), null for an empty block page; anything else as given (parse_service names it)."""
    text = text.strip()
    if key in INT_KEYS and text.isdecimal() and len(text) <= 12:
        return int(text)
    if key in BOOL_KEYS:
        lowered = text.lower()
        if lowered in ("on", "true", "1", "yes"):
            return True
        if lowered in ("", "off", "false", "0", "no"):
            return False
    if key == "block_page" and not text:
        return None
    return text


def service_from(values: Mapping[str, object]) -> TlsService:
    """A service edited in the UI or API, checked as a configuration entry is (absolute
    paths only: there is no configuration file to be relative to); ServiceFieldError names
    the field at fault, TlsConfigError's field included."""

    def fail(path: tuple[str, ...], reason: str) -> ConfigError:
        return ServiceFieldError(path[-1] if path else "", reason)

    def resolve(path: tuple[str, ...], raw: object) -> Path:
        if not isinstance(raw, str) or not raw or len(raw) > 4096 or "\0" in raw:
            raise fail(path, f"expected a file path, got {raw!r}")
        if not Path(raw).is_absolute():
            raise fail(path, f"{raw!r}: an absolute path on the gateway is needed")
        return Path(raw)

    try:
        return parse_service(values, fail, resolve)
    except TlsConfigError as err:
        raise ServiceFieldError(err.field, str(err)) from err


def _name(name: x509.Name) -> str:
    return name.rfc4514_string()


def _read_pem(path: Path, what: str, field: str) -> bytes:
    """The file's bytes, at most MAX_PEM_BYTES (a device, a pipe or a huge file is refused)."""
    if path.exists() and not path.is_file():
        raise TlsConfigError(f"{path}: not a regular file: not a PEM {what}", field)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as err:
        raise TlsConfigError(f"{path}: cannot read {what}: {err.strerror}", field) from err
    if len(data) > MAX_PEM_BYTES:
        raise TlsConfigError(f"{path}: larger than {MAX_PEM_BYTES} bytes: not a PEM {what}", field)
    return data


def check_keypair(cert: Path, key: Path, now: datetime | None = None) -> CertInfo:
    """The certificate's CertInfo once `key` is found to be its private key; TlsConfigError
    naming the file otherwise. An expired (or not yet valid) certificate is a warning."""
    from cryptography import x509  # here only: see the module comment
    from cryptography.hazmat.primitives import serialization

    cert_pem = _read_pem(cert, "certificate", "cert")
    key_pem = _read_pem(key, "key", "key")
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        raise TlsConfigError(f"{cert}: not a PEM certificate ({err})") from err
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise TlsConfigError(f"{key}: not an unencrypted PEM private key ({err})", "key") from err
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private.public_key().public_bytes(der, public) != certificate.public_key().public_bytes(
        der, public
    ):
        raise TlsConfigError(f"{key}: this key does not belong to the certificate {cert}", "key")
    info = CertInfo(
        _name(certificate.subject),
        _name(certificate.issuer),
        certificate.not_valid_before_utc,
        certificate.not_valid_after_utc,
    )
    if info.expired(now or datetime.now(UTC)):
        log.warning(
            "%s: certificate %s is valid from %s to %s only: clients will refuse it",
            cert, info.subject, info.not_before.isoformat(), info.not_after.isoformat(),
        )  # fmt: skip
    return info
