"""A raw HTTPS client for the lab tests: exact request bytes over real TLS.

Run inside the client namespace (`ip netns exec NS python -m gateway.testing.tls_client HOST
PORT [MIN] [MAX]`), it reads a JSON list of hex-encoded requests on stdin, sends each on its
own TLS connection (certificate not verified: the lab's is self-signed; versions between MIN
and MAX, names of ssl.TLSVersion, default TLSv1_2..TLSv1_3) and prints a JSON list with, per
request, the response's status code, 0 when the connection closed without an answer (a reset
or an alert), -1 when the TLS handshake failed, -2 when TCP could not connect. Test tooling,
never used by the gateway.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys


def exchange(host: str, port: int, request: bytes, context: ssl.SSLContext) -> int:
    """The status code of the answer to `request` (0: none; -1: no handshake; -2: the TCP
    connection was refused or timed out)."""
    try:
        raw = socket.create_connection((host, port), timeout=10)
    except OSError:
        return -2
    with raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=None)
        except (ssl.SSLError, OSError):
            return -1
        with tls:
            try:
                tls.sendall(request)
                data = b""
                while b"\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except (ssl.SSLError, OSError):
                return 0
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def main(argv: list[str]) -> int:
    host, port = argv[1], int(argv[2])
    low = ssl.TLSVersion[argv[3]] if len(argv) > 3 else ssl.TLSVersion.TLSv1_2
    high = ssl.TLSVersion[argv[4]] if len(argv) > 4 else ssl.TLSVersion.TLSv1_3
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if low < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version, context.maximum_version = low, high
    requests = [bytes.fromhex(h) for h in json.load(sys.stdin)]
    json.dump([exchange(host, port, r, context) for r in requests], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
