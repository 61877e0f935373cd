"""The lab's legacy-server stand-ins, run inside the server namespace: nginx (HTTP on 80), Samba
smbd with SMB1 enabled (445 and 139, guest share `public`) and BIND named (authoritative zone
`lab.test.`, no recursion); plus the gateway process (`vpatch run`) in the gateway namespace.

Guarantees: every service has its own configuration, pid, log and data files under the lab's
state dir and never reads or writes the system's /etc configs (nginx gets -c/-p/-e, smbd -s with
every directory overridden, named -c with its own directory, pid and key files) or touches system
services. Each is started in the foreground under `ip netns exec` so the PID we record is the
daemon itself. Readiness (that very PID holding every listening socket it should have, so a port
held by someone else never counts) is polled with a bounded wait (START_TIMEOUT_S); a failure to
start raises LabError quoting the tail of the service's log.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.config import BUNDLED_RULES, load_config
from gateway.database import policy_target
from gateway.errors import LabError
from gateway.lab.netns import netns_exec, netns_popen, pid_alive, pid_cmdline
from gateway.lab.tlscert import write_server_cert
from gateway.lab.topology import LabSpec
from gateway.policy.accounts import Accounts, new_password
from gateway.policy.store import Store

# Longest wait for a service to listen (or the gateway to open its control socket).
START_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.05
# Bytes of a log file quoted when a service fails.
LOG_TAIL_BYTES = 1500
BENCH_FILE_SIZE = 1024  # /1k.bin served by nginx for the benchmarks
SERVICES = ("nginx", "smbd", "named")
GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class ServiceDef:
    """How to start one service: its argv and the listening sockets that mean 'ready'."""

    name: str
    argv: tuple[str, ...]
    tcp_ports: tuple[int, ...]
    udp_ports: tuple[int, ...]


def binary(name: str) -> str:
    """Absolute path of program name (PATH, then /usr/sbin and /sbin); LabError if missing."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise LabError(
            f"program {name!r} not found (PATH and /usr/sbin); "
            "run scripts/install.sh to install the lab's packages"
        )
    return found


def pid_file(spec: LabSpec, service: str) -> Path:
    return spec.state_dir / "pids" / f"{service}.pid"


def log_file(spec: LabSpec, service: str) -> Path:
    return spec.state_dir / "logs" / f"{service}.log"


def read_pid(path: Path) -> int | None:
    """The PID in a pid file, or None if it is missing or not a number."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_ours(pid: int, spec: LabSpec) -> bool:
    """True when pid is alive and its command line names this lab's state dir.

    Every process the lab starts carries a path under state_dir in its argv, so a recycled PID
    from a stale pid file is never mistaken for ours.
    """
    marker = str(spec.state_dir)
    return pid_alive(pid) and any(marker in arg for arg in pid_cmdline(pid))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


# --- nginx ----------------------------------------------------------------------------------


def write_nginx(spec: LabSpec) -> ServiceDef:
    base = spec.state_dir / "nginx"
    html = base / "html"
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    _write(
        html / "index.html",
        "<!doctype html>\n<html><head><title>vpatch lab server</title></head>\n"
        f"<body><h1>vpatch lab server</h1><p>lab {spec.name}, {spec.mode} mode</p></body>"
        "</html>\n",
    )
    (html / "1k.bin").write_bytes(bytes(range(256)) * (BENCH_FILE_SIZE // 256))
    (html / "1k.bin").chmod(0o644)
    cert, key = lab_cert(spec)
    conf = base / "nginx.conf"
    _write(
        conf,
        f"""# vpatch lab nginx ({spec.name}); generated, do not edit.
worker_processes auto;
daemon off;
master_process on;
pid {base}/nginx.pid;
error_log {base}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    types {{ text/html html; application/octet-stream bin; }}
    default_type application/octet-stream;
    access_log {base}/access.log;
    client_body_temp_path {base}/tmp/body;
    proxy_temp_path {base}/tmp/proxy;
    fastcgi_temp_path {base}/tmp/fastcgi;
    uwsgi_temp_path {base}/tmp/uwsgi;
    scgi_temp_path {base}/tmp/scgi;
    keepalive_requests 100000;
    server {{
        listen 80 default_server;
        listen [::]:80 default_server;
        root {html};
        index index.html;
    }}
    # the legacy HTTPS server: TLS 1.0 only, as an IIS 6 (the HTTPS plane bridges it)
    server {{
        listen 443 ssl default_server;
        listen [::]:443 ssl default_server;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1;
        ssl_ciphers "ECDHE-RSA-AES256-SHA:AES256-SHA:@SECLEVEL=0";
        root {html};
        index index.html;
    }}
}}
""",
    )
    for d in (spec.state_dir, base, html):
        d.chmod(0o755)  # the workers (user nobody) read the pages
    argv = (binary("nginx"), "-c", str(conf), "-p", str(base), "-e", str(base / "error.log"))
    return ServiceDef("nginx", argv, (80, 443), ())


def lab_cert(spec: LabSpec) -> tuple[Path, Path]:
    """The lab server's certificate and key (<state_dir>/tls/server.pem, .key), made once."""
    directory = spec.state_dir / "tls"
    cert, key = directory / "server.pem", directory / "server.key"
    if not (cert.exists() and key.exists()):
        write_server_cert(directory, spec.server_addr)
    directory.chmod(0o755)  # nginx's master reads the key as root; the workers never do
    return cert, key


# --- Samba ----------------------------------------------------------------------------------


def write_smbd(spec: LabSpec) -> ServiceDef:
    base = spec.state_dir / "samba"
    dirs = {
        key: base / key
        for key in (
            "private",
            "lock",
            "state",
            "cache",
            "pid",
            "ncalrpc",
            "binddns",
            "log",
            "public",
        )
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    dirs["private"].chmod(0o700)
    dirs["public"].chmod(0o755)
    _write(dirs["public"] / "readme.txt", f"Hello from the vpatch lab {spec.name} server.\n")
    conf = base / "smb.conf"
    _write(
        conf,
        f"""# vpatch lab smbd ({spec.name}); generated, do not edit.
[global]
    server role = standalone server
    workgroup = VPATCHLAB
    netbios name = LABSERVER
    server string = vpatch lab legacy server
    # SMB1 on purpose: the lab stands in for servers that still speak it.
    server min protocol = NT1
    server max protocol = SMB3
    smb ports = 445 139
    disable netbios = yes
    map to guest = Bad User
    guest account = nobody
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    private dir = {dirs["private"]}
    lock directory = {dirs["lock"]}
    state directory = {dirs["state"]}
    cache directory = {dirs["cache"]}
    pid directory = {dirs["pid"]}
    ncalrpc dir = {dirs["ncalrpc"]}
    binddns dir = {dirs["binddns"]}
    passdb backend = tdbsam:{dirs["private"]}/passdb.tdb
    log file = {dirs["log"]}/log.%m
    max log size = 1000
    usershare path =

[public]
    path = {dirs["public"]}
    comment = vpatch lab public share
    guest ok = yes
    read only = yes
    browseable = yes
""",
    )
    argv = (binary("smbd"), "--foreground", "--no-process-group", "--debug-stdout", "-s", str(conf))
    return ServiceDef("smbd", argv, (445, 139), ())


# --- BIND -----------------------------------------------------------------------------------

ZONE = "lab.test."


def zone_text(spec: LabSpec) -> str:
    """The lab.test. zone: SOA, NS, and A/AAAA records for the lab's hosts."""
    return f"""$TTL 300
@       IN SOA  ns.lab.test. hostmaster.lab.test. ( 1 3600 600 86400 300 )
        IN NS   ns.lab.test.
        IN TXT  "vpatch lab {spec.name}"
ns      IN A    {spec.server_addr}
ns      IN AAAA {spec.server_addr6}
server  IN A    {spec.server_addr}
server  IN AAAA {spec.server_addr6}
www     IN CNAME server
client  IN A    {spec.client_addr}
client  IN AAAA {spec.client_addr6}
@       IN MX   10 server.lab.test.
"""


def write_named(spec: LabSpec) -> ServiceDef:
    base = spec.state_dir / "named"
    base.mkdir(parents=True, exist_ok=True)
    _write(base / "lab.test.zone", zone_text(spec))
    conf = base / "named.conf"
    _write(
        conf,
        f"""// vpatch lab named ({spec.name}); generated, do not edit.
options {{
    directory "{base}";
    pid-file "{base}/named.pid";
    session-keyfile "{base}/session.key";
    managed-keys-directory "{base}";
    listen-on port 53 {{ any; }};
    listen-on-v6 port 53 {{ any; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
}};
controls {{ }};
zone "{ZONE}" {{ type primary; file "{base}/lab.test.zone"; }};
""",
    )
    # -g: foreground, all logging to stderr (our log file); runs as root in the lab namespace.
    argv = (binary("named"), "-g", "-c", str(conf))
    return ServiceDef("named", argv, (53,), (53,))


WRITERS: dict[str, Callable[[LabSpec], ServiceDef]] = {
    "nginx": write_nginx,
    "smbd": write_smbd,
    "named": write_named,
}


# --- starting and waiting -------------------------------------------------------------------


def listening(ns: str | None) -> tuple[set[int], set[int]]:
    """(TCP ports, UDP ports) with a listening socket in namespace ns."""
    proc = netns_exec(ns, ["ss", "-H", "-l", "-n", "-t", "-u"], check=False)
    tcp: set[int] = set()
    udp: set[int] = set()
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        port = parts[4].rsplit(":", 1)[-1]
        if port.isdigit():
            (tcp if parts[0] == "tcp" else udp).add(int(port))
    return tcp, udp


_SS_PID = re.compile(r"pid=(\d+)")


def listening_owners(ns: str | None) -> dict[tuple[str, int], set[int]]:
    """{("tcp"|"udp", port): PIDs holding a listening socket on it} in namespace ns.

    Readiness checks use this rather than listening(): a port already held by another process
    (a second instance, a leftover) must not make a service that is about to fail look ready.
    """
    proc = netns_exec(ns, ["ss", "-H", "-l", "-n", "-t", "-u", "-p"], check=False)
    owners: dict[tuple[str, int], set[int]] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        port = parts[4].rsplit(":", 1)[-1]
        if port.isdigit():
            key = ("tcp" if parts[0] == "tcp" else "udp", int(port))
            owners.setdefault(key, set()).update(int(pid) for pid in _SS_PID.findall(line))
    return owners


def log_tail(path: Path) -> str:
    try:
        data = path.read_bytes()[-LOG_TAIL_BYTES:]
    except OSError:
        return "(no log)"
    return data.decode(errors="replace").strip() or "(empty log)"


def start_background(
    spec: LabSpec, ns: str | None, name: str, argv: Sequence[str], env: dict[str, str] | None = None
) -> int:
    """Start argv in ns with output to logs/<name>.log; record and return its PID."""
    log = log_file(spec, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = netns_popen(ns, list(argv), stdout=out, stderr=subprocess.STDOUT, env=env)
    pidf = pid_file(spec, name)
    pidf.parent.mkdir(parents=True, exist_ok=True)
    pidf.write_text(f"{proc.pid}\n")
    return proc.pid


def start_services(
    spec: LabSpec,
    names: Sequence[str] = SERVICES,
    timeout: float = START_TIMEOUT_S,
    *,
    here: bool = False,
) -> dict[str, int]:
    """Write configs, start the services in the server namespace (here=True: in the current
    namespace, the Vagrant lab's server VM), wait until all listen."""
    ns = None if here else spec.server_ns
    where = "this machine" if here else spec.server_ns
    defs = [WRITERS[name](spec) for name in names]
    pids = {d.name: start_background(spec, ns, d.name, d.argv) for d in defs}
    deadline = time.monotonic() + timeout
    pending = list(defs)
    while pending:
        owners = listening_owners(ns)
        for d in list(pending):
            if not pid_alive(pids[d.name]):
                raise LabError(
                    f"{d.name} exited during start-up in {where} "
                    f"(log {log_file(spec, d.name)}): {log_tail(log_file(spec, d.name))}"
                )
            wanted = [("tcp", port) for port in d.tcp_ports]
            wanted += [("udp", port) for port in d.udp_ports]
            if all(pids[d.name] in owners.get(key, ()) for key in wanted):
                pending.remove(d)
        if not pending:
            break
        if time.monotonic() > deadline:
            names_left = ", ".join(d.name for d in pending)
            raise LabError(
                f"{names_left} not listening after {timeout:.0f}s in "
                f"{where}; see {spec.state_dir / 'logs'}"
            )
        time.sleep(POLL_INTERVAL_S)
    return pids


# --- the gateway ----------------------------------------------------------------------------


def gateway_config_path(spec: LabSpec) -> Path:
    return spec.state_dir / "gateway.yaml"


def control_socket_path(spec: LabSpec) -> Path:
    return spec.state_dir / "control.sock"


def gateway_config(spec: LabSpec) -> dict[str, object]:
    """The lab gateway's configuration: protect the lab server, keep every file in the state
    dir (keys as in docs/architecture.md, "config.py")."""
    config: dict[str, object] = {
        "protected_hosts": [spec.server_addr, spec.server_addr6],
        "queues": {"first": 0, "count": 2},
        "fail_policy": "open",
        "events": {
            "sqlite": str(spec.state_dir / "events.db"),
            "jsonl": str(spec.state_dir / "eve.json"),
        },
        "control": {"socket": str(control_socket_path(spec))},
        "policy": {"database": str(spec.state_dir / "vpatch.db")},
    }
    # the pack (the bundled one unless the spec names rules) plus a local directory an admin
    # drops rule files into, then `vpatch rules reload` (docs/lab.md)
    config["rules"] = [*(spec.rules or [str(BUNDLED_RULES)]), str(local_rules_dir(spec))]
    # nginx's HTTPS, one service per server address (IPv4, IPv6): the HTTPS plane needs the
    # proxy's address of that family on the bridge ("-": none, the family is not proxied)
    hosts = [addr for addr, bridge in ((spec.server_addr, spec.bridge_ip),
             (spec.server_addr6, spec.bridge_ip6)) if bridge != "-"]  # fmt: skip
    if hosts:
        cert, key = lab_cert(spec)
        config["tls_proxy"] = {
            "services": [{"host": host, "port": 443, "cert": str(cert), "key": str(key),
                          "server_min": "TLS1"} for host in hosts],
        }  # fmt: skip
    return config


def local_rules_dir(spec: LabSpec) -> Path:
    return spec.state_dir / "rules.d"


def write_gateway_config(spec: LabSpec) -> Path:
    """Write gateway_config(spec) to <state_dir>/gateway.yaml."""
    path = gateway_config_path(spec)
    header = (
        f"# vpatch gateway config for lab {spec.name} ({spec.mode} mode); "
        "generated by `vpatch lab up`.\n"
    )
    _write(path, header + yaml.safe_dump(gateway_config(spec), sort_keys=False))
    return path


def start_gateway(spec: LabSpec, timeout: float = START_TIMEOUT_S) -> int:
    """Start `python -m gateway.cli run -c <state_dir>/gateway.yaml` in the gateway namespace,
    under gateway/lab/keeper.py (restarted when killed or crashed; the PID is the keeper's).

    Ready when the control socket appears; LabError (with the log tail) if the process exits or
    the socket does not appear within timeout seconds.
    """
    conf = write_gateway_config(spec)
    local_rules_dir(spec).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # under a keeper that restarts a killed or crashed gateway, as systemd does (keeper.py)
    run = [sys.executable, "-m", "gateway.cli", "run", "-c", str(conf)]
    argv = [sys.executable, "-m", "gateway.lab.keeper", *run]
    pid = start_background(spec, spec.gw_ns, GATEWAY, argv, env=env)
    sock = control_socket_path(spec)
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if not pid_alive(pid):
            raise LabError(
                f"gateway (`vpatch run -c {conf}`) exited during start-up in "
                f"{spec.gw_ns}: {log_tail(log_file(spec, GATEWAY))}"
            )
        if time.monotonic() > deadline:
            raise LabError(
                f"gateway did not open its control socket {sock} within "
                f"{timeout:.0f}s; see {log_file(spec, GATEWAY)}"
            )
        time.sleep(POLL_INTERVAL_S)
    return pid


# --- the admin UI ---------------------------------------------------------------------------

UI = "ui"
DEFAULT_UI_LISTEN = "127.0.0.1:8443"


def start_ui(
    spec: LabSpec, listen: str = DEFAULT_UI_LISTEN, timeout: float = START_TIMEOUT_S
) -> str:
    """Start `vpatch ui` for the lab's gateway config in the machine's own namespace, listening on
    loopback only; return the password of the `admin` account it set (shown once).

    The UI reaches the gateway through the control socket (a file in the state dir) and the
    SQLite stores, so it needs no address in the lab. Plain HTTP on loopback (`--insecure-http`,
    which `vpatch ui` allows on loopback only): the session cookie is sent without the Secure
    flag, lab use only.
    """
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise LabError(f"--ui-listen {listen!r}: expected HOST:PORT")
    conf = gateway_config_path(spec)
    if not conf.exists():
        write_gateway_config(spec)
    password = new_password()
    store = Store(policy_target(load_config(conf)))
    try:
        accounts = Accounts(store)
        if accounts.get_user("admin") is None:
            accounts.create_user("admin", password, "admin", "vpatch lab up")
        else:
            accounts.set_password("admin", password, "vpatch lab up")
    finally:
        store.close()
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-m", "gateway.cli", "ui", "-c", str(conf), "--listen", listen,
            "--insecure-http"]  # fmt: skip
    log = log_file(spec, UI)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    pidf = pid_file(spec, UI)
    pidf.parent.mkdir(parents=True, exist_ok=True)
    pidf.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while True:
        if not pid_alive(proc.pid):
            raise LabError(f"admin UI (`vpatch ui --listen {listen}`) exited: {log_tail(log)}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return password
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LabError(f"admin UI not listening on {listen} within {timeout:.0f}s; see {log}")
        time.sleep(POLL_INTERVAL_S)
