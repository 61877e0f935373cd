"""A real browser against the real stack: headless Chromium (Debian's package) driven by
Selenium through Debian's chromedriver, `vpatch ui` (waitress, on 127.0.0.1) and `vpatch run`
in the namespace lab, sharing one configuration, policy store and control socket.

The browser logs in, adds a syslog alert channel (to a local datagram socket) with the form and
presses "Send test", sets rule 9000100 (rules/vpatch-test-split.yaml) to `off` for the lab's
server host (the marker request from the client namespace then passes), then to `prevent`
(the next marker request is reset, and its alert reaches the syslog socket through the
gateway's dispatcher), adds a firewall deny with the form (it shows up in the gateway's kernel
rules), opens the dashboard (refreshed by its script; health cards and charts, also in a
phone-size window), the firewall, alerts and events pages, and saves screenshots under
artifacts/screenshots/ (tests/webui/test_browser_ui.py shoots every page without the lab).
Everything it started (browser, UI, gateway) is stopped by PID and the kernel rules removed,
also on failure."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.control.server import control_request
from gateway.policy.accounts import Accounts
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.testing.inline import READY_TIMEOUT_S, REPO, in_ns, package_env, running_gateway

MARKER_CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.create_connection((sys.argv[1], 80), timeout=5)
    s.sendall(
        b"GET /VPATCH-TEST-EXPLOIT-7f3a HTTP/1.1\\r\\n"
        b"Host: lab\\r\\nConnection: close\\r\\n\\r\\n"
    )
    try:
        data = s.recv(4096)
        print("EOF" if not data else "DATA " + data.split(b"\\r\\n")[0].decode())
    except ConnectionResetError:
        print("RESET")
    except OSError as err:
        print("ERROR", err)
    """
)


def marker(lab: Any) -> str:
    """The lab's exploit marker request from the client namespace: DATA ..., RESET or ERROR."""
    r = in_ns(lab.client_ns, [sys.executable, "-c", MARKER_CLIENT, lab.server_addr], timeout=20)
    return r.stdout.strip() or r.stderr.strip()


pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = REPO / "artifacts" / "screenshots"
PASSWORD = "browser-admin-pw-1"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
                # the UI's self-signed certificate (webui/tls.py), made at its first start
                "--ignore-certificate-errors")  # fmt: skip
WAIT = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("chromium and chromium-driver (Debian packages) are not installed")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()  # ends chromedriver and the browser it started


class UnixSyslog:
    """A datagram socket standing in for /dev/log: collects what the gateway sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[bytes] = []

    def wait_for(self, needle: bytes, timeout: float = WAIT) -> bytes | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((m for m in self.messages if needle in m), None)
            if found is not None:
                return found
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(65535))
        return None


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[UnixSyslog]:
    rec = UnixSyslog(tmp_path / "syslog.sock")
    try:
        yield rec
    finally:
        rec.sock.close()


def submit(browser: Any, wait: Any, button: Any) -> Any:
    """Click a submit button, wait until its page is gone, return the next page's flash."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    def page_gone(_driver: Any) -> bool:
        try:
            button.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException:
            # chromedriver answers "unhandled inspector error" while the old document is being
            # torn down (neither stale nor present yet): ask again on the next poll
            return False
        return False

    button.click()
    wait.until(page_gone)
    return wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "p.flash")))


def gw_rules(lab: Any) -> str:
    return in_ns(lab.gw_ns, ["iptables-save", "-t", "filter"]).stdout


def shot(driver: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def test_browser_toggles_rule_on_running_gateway(
    lab: Any, tmp_path: Path, browser: Any, syslog: UnixSyslog
) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    policy_db = tmp_path / "vpatch.db"
    sock = tmp_path / "control.sock"
    events_db = tmp_path / "events.db"
    cfg = {
        "protected_hosts": [lab.server_addr],
        "rules": [str(REPO / "rules" / "vpatch-test-split.yaml")],
        "queues": {"first": 0, "count": 1},
        "events": {"sqlite": str(events_db), "jsonl": None},
        "control": {"socket": str(sock)},
        "policy": {"database": str(policy_db)},
    }
    with Store(policy_db) as store:
        Accounts(store).create_user("admin", PASSWORD, "admin", "test")
        host = Hosts(store).save_host(lab.server_addr, "test", name="legacy web server")
    port = _free_port()
    base = f"https://127.0.0.1:{port}"  # HTTPS by default, Secure cookies, HSTS
    ui_log = tmp_path / "ui.log"
    ui: subprocess.Popen[bytes] | None = None
    with contextlib.ExitStack() as stack:
        gw = stack.enter_context(running_gateway(lab, tmp_path, cfg))  # stopped on exit
        with ui_log.open("wb") as out:
            ui = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "ui", "-c", str(gw.config), "--listen",
                 f"127.0.0.1:{port}"],
                stdout=out, stderr=subprocess.STDOUT, env=package_env(),
            )  # fmt: skip
        stack.callback(_stop, ui)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                # verified against the certificate the UI made (FileNotFoundError until then)
                tls = ssl.create_default_context(cafile=policy_db.parent / "ui-tls.crt")
                urllib.request.urlopen(base + "/auth/login", timeout=2, context=tls).close()
                break
            except OSError:
                assert ui.poll() is None, ui_log.read_text()
                assert time.monotonic() < deadline, ui_log.read_text()
                time.sleep(0.1)
        # a transient chromedriver error between two documents is retried, not fatal
        wait = WebDriverWait(browser, WAIT, ignored_exceptions=(WebDriverException,))

        browser.get(base + "/")
        wait.until(ec.presence_of_element_located((By.NAME, "username")))
        shot(browser, "01-login")
        browser.find_element(By.NAME, "username").send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "span.user")))
        assert "admin (admin)" in browser.find_element(By.CSS_SELECTOR, "span.user").text

        # an alert channel through the form: syslog (RFC 5424) to a local datagram socket,
        # which the gateway's dispatcher (in the gateway namespace) reaches through the file
        browser.get(base + "/alerts/")
        form = wait.until(ec.presence_of_element_located((By.ID, "alerts-add")))
        form.find_element(By.NAME, "name").send_keys("lab-syslog")
        Select(form.find_element(By.NAME, "kind")).select_by_visible_text("syslog")
        Select(form.find_element(By.NAME, "transport")).select_by_visible_text("unix")
        form.find_element(By.NAME, "path").send_keys(str(syslog.path))
        flash = submit(browser, wait, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
        assert "alert channel lab-syslog saved" in flash.text, flash.text
        row = browser.find_element(By.CSS_SELECTOR, "#alert-channels tr[id^=channel-]")
        flash = submit(browser, wait, row.find_element(By.XPATH, ".//button[text()='Send test']"))
        assert "OK: test message sent through lab-syslog" in flash.text, flash.text
        assert syslog.wait_for(b" test [vpatch@32473 ")

        def set_mode(mode: str) -> str:
            browser.get(base + "/rules/")
            row = wait.until(ec.presence_of_element_located((By.ID, "rule-9000100")))
            Select(row.find_element(By.NAME, "scope")).select_by_value(f"host:{host.id}")
            Select(row.find_element(By.NAME, "mode")).select_by_visible_text(mode)
            flash = submit(browser, wait, row.find_element(By.CSS_SELECTOR, "button[type=submit]"))
            return str(flash.text)

        text = set_mode("off")
        assert "gateway reloaded in" in text, text
        assert f"host {lab.server_addr}: off" in browser.find_element(By.ID, "rule-9000100").text
        shot(browser, "02-rule-off")
        assert marker(lab) == "DATA HTTP/1.1 404 Not Found"  # the exploit marker passes

        text = set_mode("prevent")
        assert "gateway reloaded in" in text, text
        shot(browser, "03-rule-prevent")
        assert marker(lab) == "RESET"  # the next marker request is reset by the gateway
        # ... and the alert reaches the channel through the dispatcher of `vpatch run`
        alert = syslog.wait_for(b'sid="9000100"')
        assert alert is not None and b" alert [vpatch@32473 " in alert, syslog.messages
        # the receiver can have the datagram before the dispatcher thread has counted it
        deadline = time.monotonic() + WAIT
        while (alerts := control_request(gw.control, "status")["alerts"])["sent"] < 1:
            assert time.monotonic() < deadline, alerts
            time.sleep(0.05)
        assert alerts["failures"] == 0, alerts

        # a firewall rule through the form: applied by the running gateway on reload
        browser.get(base + "/firewall/")
        form = wait.until(ec.presence_of_element_located((By.ID, "firewall-add")))
        Select(form.find_element(By.NAME, "scope")).select_by_value(f"host:{host.id}")
        Select(form.find_element(By.NAME, "protocol")).select_by_visible_text("tcp")
        form.find_element(By.NAME, "port_from").send_keys("8080")
        Select(form.find_element(By.NAME, "action")).select_by_visible_text("deny")
        form.find_element(By.NAME, "comment").send_keys("no proxy port")
        flash = submit(browser, wait, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
        assert "gateway reloaded in" in flash.text, flash.text
        assert "--dport 8080" in gw_rules(lab)

        browser.get(base + "/dashboard/")
        # dashboard.js refreshes from /dashboard/data every few seconds (no page reload): the
        # event of the reset above shows up in "top rules" and the health shows the live worker
        WebDriverWait(browser, 20).until(
            lambda d: "exploit marker" in d.find_element(By.ID, "top-rules").text
        )
        assert browser.find_element(By.ID, "h-workers").text == "1 / 1"
        alerts = browser.find_element(By.ID, "h-alerts").text  # sent / failed / waiting / given up
        assert re.fullmatch(r"\d+ / \d+ / \d+ / \d+", alerts), alerts
        assert "CVE-0000-0001" in browser.find_element(By.ID, "top-cves").text
        # the health cards judge the live gateway: running, every worker alive
        for card in ("card-h-reachable", "card-h-workers"):
            assert "status-ok" in browser.find_element(By.ID, card).get_attribute("class")
        # both uPlot charts drawn; the live rate chart gets its first point after two answers
        assert len(browser.find_elements(By.CSS_SELECTOR, ".chart canvas")) == 2
        shot(browser, "04-dashboard")
        browser.set_window_size(390, 844)  # a phone
        browser.get(base + "/dashboard/")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#events-chart canvas")))
        shot(browser, "09-dashboard-phone")
        browser.set_window_size(1400, 1000)
        for name, path in (("05-events", "/events/"), ("06-firewall", "/firewall/"),
                           ("07-alerts", "/alerts/"), ("08-audit", "/audit/")):  # fmt: skip
            browser.get(base + path)
            wait.until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
            shot(browser, name)
        browser.get(base + "/events/")
        assert "exploit marker" in browser.find_element(By.TAG_NAME, "main").text
        csp = [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
        assert csp == []  # no inline script or style was refused on any page
    assert sorted(p.name for p in SCREENSHOTS.glob("0*.png"))[:4] == [
        "01-login.png",
        "02-rule-off.png",
        "03-rule-prevent.png",
        "04-dashboard.png",
    ]
