"""The Vagrant lab (vagrant/Vagrantfile) really runs: three QEMU (TCG) guests under libvirt, the
client reaches the server's nginx, Samba (SMB1) and BIND through the gateway VM's bridge, and
the gateway VM resets the self-test exploit and logs it.

Run by (docs/lab.md, "Vagrant lab"; 14 minutes measured on a loaded 2-core machine):

    scripts/install-vagrant.sh && vagrant/build-box.sh
    VPATCH_SLOW=1 PYTHONPATH=$PWD .venv/bin/python -m pytest tests/lab/test_vagrant.py -v -s

The test starts virtlogd and libvirtd itself inside a network namespace it creates (libvirt
adds iptables rules and bridges; none of that may reach the root namespace) and runs vagrant in
that namespace too; it builds the box when vagrant/build-box.sh's output is missing. Everything
it made (guests, networks, storage pool, daemons, namespace, work dir) is removed at the end,
also on failure. Refuses to run while a libvirtd is already running on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.lab.netns import netns_add, netns_delete, netns_pids, pid_alive, stop_pids

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(3600)]  # about 15 min

REPO = Path(__file__).resolve().parents[2]
BOX_FILE = Path(os.environ.get("VPATCH_BOX_FILE", "/var/cache/vpatch-box/vpatch-debian12.box"))
BOX_NAME = "vpatch/debian12"
LIBVIRT_URI = "qemu:///system"
LAB_NETWORKS = ("vpatch-mgmt", "vpatch-client-side", "vpatch-server-side")
LIBVIRTD_PID_FILE = Path("/run/libvirtd.pid")
BOX_BUILD_TIMEOUT_S = 3600
UP_TIMEOUT_S = 3600
SSH_TIMEOUT_S = 300
DAEMON_START_S = 60
EXPLOIT_PATH = "/VPATCH-TEST-EXPLOIT-7f3a"  # rules/vpatch-test-split.yaml, id 9000100
EXPLOIT_RULE_ID = "9000100"


@dataclass(frozen=True, slots=True)
class VagrantLab:
    """Where one run's libvirt and Vagrant live: namespace, work dir, environment."""

    ns: str
    work: Path
    prefix: str
    pool: str
    env: dict[str, str]

    def run(
        self, *argv: str, timeout: float = SSH_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """argv inside the lab's namespace with its environment; output kept for messages."""
        proc = subprocess.run(["ip", "netns", "exec", self.ns, *argv], env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=False)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)!r} exited {proc.returncode}:\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def ssh(self, vm: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("vagrant", "ssh", vm, "-c", command, check=check)

    def virsh(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.run("virsh", "-c", LIBVIRT_URI, *args, check=check, timeout=120)


def start_daemon(ns: str, argv: list[str], log: Path) -> int:
    with log.open("ab") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    return proc.pid


def libvirtd_running() -> bool:
    try:
        pid = int(LIBVIRTD_PID_FILE.read_text().strip())
    except (OSError, ValueError):
        return False
    return pid_alive(pid)


def require_tools() -> None:
    missing = [t for t in ("vagrant", "virsh", "qemu-system-x86_64", "mmdebstrap")
               if shutil.which(t) is None]  # fmt: skip
    missing += [t for t in ("libvirtd", "virtlogd") if shutil.which(t, path="/usr/sbin") is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/install-vagrant.sh first")
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True,
                             timeout=120, check=False)  # fmt: skip
    if "vagrant-libvirt" not in plugins.stdout:
        pytest.fail("the vagrant-libvirt plugin is missing: run scripts/install-vagrant.sh")


def ensure_box() -> None:
    if BOX_FILE.is_file():
        return
    started = time.monotonic()
    subprocess.run([str(REPO / "vagrant" / "build-box.sh"), str(BOX_FILE)], check=True,
                   timeout=BOX_BUILD_TIMEOUT_S)  # fmt: skip
    print(f"box built in {time.monotonic() - started:.0f} s: {BOX_FILE}")


def teardown(lab: VagrantLab, daemons: list[int]) -> None:
    """Remove every guest, network, volume and the pool this run made, then the daemons."""
    if daemons and all(pid_alive(pid) for pid in daemons):
        lab.run("vagrant", "destroy", "-f", check=False, timeout=600)
        names = lab.virsh("list", "--all", "--name").stdout.split()
        for name in (n for n in names if n.startswith(lab.prefix)):
            lab.virsh("destroy", name)
            lab.virsh("undefine", name, "--remove-all-storage", "--nvram")
        for net in LAB_NETWORKS:
            lab.virsh("net-destroy", net)
            lab.virsh("net-undefine", net)
        vols = lab.virsh("vol-list", lab.pool, "--name").stdout.split()
        for vol in vols:
            lab.virsh("vol-delete", vol, "--pool", lab.pool)
        lab.virsh("pool-destroy", lab.pool)
        lab.virsh("pool-undefine", lab.pool)
    stop_pids(daemons, grace=10)
    stop_pids(netns_pids(lab.ns), grace=10)  # dnsmasq, a QEMU left by a failed destroy
    netns_delete(lab.ns)
    shutil.rmtree(lab.work, ignore_errors=True)


@pytest.fixture(scope="module")
def vagrant_lab() -> Iterator[VagrantLab]:
    """libvirtd + virtlogd in a namespace of their own, the box added, `vagrant up` done."""
    if os.geteuid() != 0:
        pytest.skip("needs root (libvirtd, network namespaces)")
    require_tools()
    if libvirtd_running():
        pytest.fail(f"a libvirtd is already running ({LIBVIRTD_PID_FILE}): stop it first")
    ensure_box()
    tag = f"vptvg{os.getpid()}"
    work = Path("/var/tmp") / tag
    (work / "console").mkdir(parents=True)
    for d in (work, work / "console"):
        d.chmod(0o777)  # QEMU (user libvirt-qemu) writes the serial console logs there
    (work / "pool").mkdir(mode=0o711)
    env = dict(os.environ, VAGRANT_HOME=str(work / "vagrant.d"),
               VAGRANT_CWD=str(REPO / "vagrant"), VAGRANT_DOTFILE_PATH=str(work / "dotfile"),
               VAGRANT_DEFAULT_PROVIDER="libvirt", VAGRANT_CHECKPOINT_DISABLE="1",
               VPATCH_LIBVIRT_POOL=tag, VPATCH_LIBVIRT_PREFIX=f"{tag}_",
               VPATCH_CONSOLE_DIR=str(work / "console"))  # fmt: skip
    lab = VagrantLab(ns=tag, work=work, prefix=f"{tag}_", pool=tag, env=env)
    netns_add(tag)
    daemons: list[int] = []
    try:
        if Path("/proc/sys/net/bridge").exists():
            # libvirt's host bridges in this namespace must not push lab frames through iptables
            lab.run("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0")
            lab.run("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-ip6tables=0")
        daemons.append(start_daemon(tag, ["virtlogd"], work / "virtlogd.log"))
        daemons.append(start_daemon(tag, ["libvirtd"], work / "libvirtd.log"))
        deadline = time.monotonic() + DAEMON_START_S
        while lab.virsh("version").returncode != 0:
            assert all(pid_alive(pid) for pid in daemons), (work / "libvirtd.log").read_text()
            assert time.monotonic() < deadline, "libvirtd did not answer within 60 s"
            time.sleep(0.5)
        lab.virsh("pool-define-as", tag, "dir", "--target", str(work / "pool"), check=True)
        lab.virsh("pool-start", tag, check=True)
        started = time.monotonic()
        lab.run("vagrant", "box", "add", "--name", BOX_NAME, str(BOX_FILE), timeout=1200)
        up = lab.run("vagrant", "up", "--provider=libvirt", timeout=UP_TIMEOUT_S, check=False)
        print(f"vagrant up: exit {up.returncode} after {time.monotonic() - started:.0f} s")
        print(up.stdout[-6000:], up.stderr[-3000:])
        assert up.returncode == 0, "vagrant up failed (output above; consoles in the work dir)"
        yield lab
    finally:
        teardown(lab, daemons)


def test_lab_serves_through_the_gateway_and_blocks_the_exploit(vagrant_lab: VagrantLab) -> None:
    lab = vagrant_lab
    # the client's way to the server is its lab port, and the gateway bridges without addresses
    route = lab.ssh("client", "ip -o route get 198.18.0.20").stdout
    assert "dev eth1" in route, route
    bridge = lab.ssh("gateway", "ip -o addr show dev br0; ip -o link show master br0").stdout
    assert " inet " not in bridge and "eth1" in bridge and "eth2" in bridge, bridge

    page = lab.ssh("client", "curl -sS --max-time 30 http://198.18.0.20/").stdout
    assert "vpatch lab server" in page, page
    smb = lab.ssh("client", "smbclient -N //198.18.0.20/public -m NT1 "
                  "--option='client min protocol=NT1' -c 'get readme.txt -'").stdout  # fmt: skip
    assert "Hello from the vpatch lab vm server." in smb, smb
    dig = lab.ssh("client", "dig +time=5 +tries=3 @198.18.0.20 server.lab.test A +short")
    assert dig.stdout.strip().splitlines()[-1] == "198.18.0.20", dig.stdout

    exploit = lab.ssh(
        "client",
        f"curl -sS --max-time 30 -o /dev/null -w '%{{http_code}}' http://198.18.0.20{EXPLOIT_PATH}",
        check=False,
    )
    # reset by the gateway: curl fails (56 reset, 52 empty reply) and no HTTP status came back
    assert exploit.returncode in (52, 56), (exploit.returncode, exploit.stdout, exploit.stderr)
    events = lab.ssh("gateway", "sudo cat /var/log/vpatch/eve.json").stdout
    assert EXPLOIT_RULE_ID in events and "198.18.0.10" in events, events[-3000:]
    # the server never saw the request line carrying the marker
    access = lab.ssh("server", "sudo cat /var/lib/vpatch-lab/nginx/access.log").stdout
    assert EXPLOIT_PATH not in access and "GET / " in access, access[-2000:]
