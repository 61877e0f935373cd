"""The UI's accounts and layout in a real browser: headless Chromium (Debian's package) driven by
Selenium through Debian's chromedriver, against `vpatch ui` (waitress, on 127.0.0.1) with a
policy store and an event store in tmp_path and no gateway (its control socket does not exist:
the dashboard says so). No network namespace is needed, so these run with the unit suite.

- accounts: an admin creates a viewer in the Users page; the viewer logs in, must set a new
  password before any other page opens, then reaches no admin page or action (no links, 403
  pages, a forged POST with the session's CSRF token refused); the admin resets the viewer's
  password (the old one stops working, the temporary one leads to the forced change) and cannot
  disable, remove or demote the last enabled admin;
- layout: the dashboard's event chart renders (uPlot canvas, two axes, a legend naming blocked
  and allowed with the values under the cursor), every page has its navigation entry marked,
  the phone-size window folds the navigation behind a button, and the browser's console shows
  no Content-Security-Policy violation and no uncaught script error. Screenshots of every page,
  desktop (1400x1000) and phone (390x844), go to artifacts/screenshots/ui-*.png.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.accounts import Accounts
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.testing.inline import READY_TIMEOUT_S, package_env
from tests.webui.conftest import make_event, write_events
from tests.webui.test_browser import SCREENSHOTS, WAIT, _free_port, _stop, browser, submit

__all__ = ["browser"]  # the fixture, imported for these tests

pytestmark = pytest.mark.timeout(240)

ADMIN_PW = "browser-admin-pw-1"
DESKTOP = (1400, 1000)
PHONE = (390, 844)
PAGES = (("dashboard", "/dashboard/", "Dashboard"), ("rules", "/rules/", "Rules"),
         ("hosts", "/hosts/", "Hosts"), ("host", "/hosts/1", "Hosts"),
         ("firewall", "/firewall/", "Firewall"), ("events", "/events/", "Events"),
         ("event", "/events/1", "Events"), ("exceptions", "/events/exceptions", "Exceptions"),
         ("alerts", "/alerts/", "Alerts"), ("audit", "/audit/", "Audit"),
         ("tokens", "/auth/tokens", "API tokens"), ("users", "/users/", "Users"),
         ("password", "/auth/password", None))  # fmt: skip


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[str]:
    """`vpatch ui` on a free port with an admin, one host and a day of events; its base URL."""
    policy_db, events_db = tmp_path / "vpatch.db", tmp_path / "events.db"
    with Store(policy_db) as store:
        Accounts(store).create_user("admin", ADMIN_PW, "admin", "test")
        Hosts(store).save_host("198.18.0.20", "test", name="legacy web server")
    now = time.time()
    write_events(events_db, [
        (make_event(timestamp=now - hour * 3600 - n * 7, flow_id=hour * 100 + n,
                    blocked=n % 3 != 0, src_ip=f"198.18.1.{n % 5 + 1}"), {})
        for hour in range(0, 23, 2) for n in range(1 + hour % 5)
    ])  # fmt: skip
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"policy:\n  database: {policy_db}\nevents:\n  sqlite: {events_db}\n  jsonl: null\n"
        f"control:\n  socket: {tmp_path / 'no-gateway.sock'}\n"
    )
    port = _free_port()
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "ui", "-c", str(config), "--listen",
             f"127.0.0.1:{port}", "--insecure-http"],
            stdout=out, stderr=subprocess.STDOUT, env=package_env(),
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(base + "/auth/login", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield base
    finally:
        _stop(proc)


class Browser:
    """The driver with the steps these tests repeat."""

    def __init__(self, driver: Any, base: str) -> None:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        self.d = driver
        self.base = base
        self.wait = WebDriverWait(driver, WAIT, ignored_exceptions=(WebDriverException,))

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.d.find_elements(By.CSS_SELECTOR, selector))

    def go(self, path: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.d.get(self.base + path)
        self.wait.until(ec.presence_of_element_located((By.TAG_NAME, "h1")))

    def fill(self, form: Any, **fields: str) -> Any:
        for name, value in fields.items():
            box = form.find_element("name", name)
            box.clear()
            box.send_keys(value)
        return form.find_element("css selector", "button[type=submit]")

    def login(self, user: str, password: str) -> None:
        self.go("/auth/login")
        button = self.fill(self.css("main form"), username=user, password=password)
        self.submit(button, flash=False)

    def logout(self) -> None:
        self.submit(self.css(".usermenu button[type=submit]"), flash=False)

    def submit(self, button: Any, flash: bool = True, confirm: bool = False) -> str:
        """Click (and accept the confirmation dialog when `confirm`), wait for the next page;
        its flash text ("" when `flash` is False)."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support import expected_conditions as ec

        if flash and not confirm:
            return str(submit(self.d, self.wait, button).text)
        button.click()
        if confirm:
            self.wait.until(ec.alert_is_present()).accept()

        def gone(_d: Any) -> bool:
            try:
                button.is_enabled()
            except StaleElementReferenceException:
                return True
            return False

        self.wait.until(gone)
        self.wait.until(lambda d: d.find_elements("tag name", "h1"))
        return self.css("p.flash").text if flash else ""

    def path(self) -> str:
        return str(self.d.current_url).removeprefix(self.base)

    def shot(self, name: str) -> None:
        """The whole page (beyond the window's height) as artifacts/screenshots/ui-NAME.png."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        size = self.d.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        png = self.d.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True, "clip": clip})["data"]  # fmt: skip
        (SCREENSHOTS / f"ui-{name}.png").write_bytes(base64.b64decode(png))

    def csp_violations(self) -> list[str]:
        """What the console logged since the last call about a refused inline script or style
        (CSP) or a script that failed (an uncaught exception)."""
        return [
            e["message"]
            for e in self.d.get_log("browser")
            if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]
        ]


def test_admin_manages_a_viewer_through_the_browser(ui: str, browser: Any) -> None:
    b = Browser(browser, ui)
    b.login("admin", ADMIN_PW)
    b.go("/users/")
    button = b.fill(b.css("#user-add"), username="vera", password="vera-temp-pw-1")
    assert "user vera created (viewer)" in b.submit(button)
    assert b.css("#issued-password").text == "vera-temp-pw-1"
    assert "must change password" in b.css("#user-vera").text
    b.shot("users-desktop")

    # the viewer's first login: only the password page opens until a new password is set
    b.logout()
    b.login("vera", "vera-temp-pw-1")
    assert b.path() == "/auth/password" and b.css("#must-change").is_displayed()
    b.shot("password-forced-desktop")
    b.go("/events/")
    assert b.path() == "/auth/password"
    button = b.fill(b.css("#password-form"), current="vera-temp-pw-1", new="vera-own-pw-2",
                    confirm="vera-own-pw-2")  # fmt: skip
    assert "password changed" in b.submit(button)
    assert b.path() == "/dashboard/"

    # the viewer's limits: no admin link, admin pages refused, writes refused even with the
    # session's CSRF token, no write forms on the pages
    nav = b.css("#mainnav").text
    assert "Users" not in nav and "Dashboard" in nav
    b.go("/users/")
    assert "403" in b.css("h1").text and "viewer" in b.css("main").text
    b.shot("viewer-403-desktop")
    forged = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const token = document.querySelector('meta[name=csrf-token]').content;
        fetch('/users/', {method: 'POST', credentials: 'same-origin',
          headers: {'Content-Type': 'application/x-www-form-urlencoded'},
          body: 'csrf_token=' + encodeURIComponent(token) + '&username=evil&role=admin'})
          .then(r => done(r.status), e => done(String(e)));"""
    )
    assert forged == 403
    for path in ("/hosts/", "/rules/", "/firewall/", "/auth/tokens"):
        b.go(path)
        posts = [f for f in b.all("main form") if f.get_attribute("method") == "post"]
        assert posts == [], (path, [f.get_attribute("action") for f in posts])

    # the admin resets the viewer's password: the old one stops working, the new one is
    # temporary; the last enabled admin is protected
    b.logout()
    b.login("admin", ADMIN_PW)
    b.go("/users/")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", b.css("#user-vera").text)  # last login
    b.submit(b.css("#user-vera").find_element(
        "xpath", ".//button[text()='Reset password']"))  # fmt: skip
    temporary = b.css("#issued-password").text
    assert len(temporary) >= 16
    for change in ("Disable", "Remove"):  # Remove asks first (data-confirm, static/ui.js)
        button = b.css("#user-admin").find_element("xpath", f".//button[text()='{change}']")
        flash = b.submit(button, confirm=change == "Remove")
        assert "the last enabled admin" in flash, flash
    from selenium.webdriver.support.ui import Select

    row = b.css("#user-admin")
    Select(row.find_element("name", "role")).select_by_visible_text("viewer")
    flash = b.submit(row.find_element("xpath", ".//button[text()='Set']"))
    assert "the last enabled admin" in flash, flash
    assert "enabled" in b.css("#user-admin").text
    b.logout()
    b.login("vera", "vera-own-pw-2")
    assert "wrong user name or password" in b.css("p.flash").text
    b.login("vera", temporary)
    assert b.path() == "/auth/password"
    b.go("/rules/")
    assert b.path() == "/auth/password"
    button = b.fill(b.css("#password-form"), current=temporary, new="vera-own-pw-3",
                    confirm="vera-own-pw-3")  # fmt: skip
    assert "password changed" in b.submit(button)
    assert b.csp_violations() == []


def test_dashboard_chart_layout_and_screenshots(ui: str, browser: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    b = Browser(browser, ui)
    b.go("/")
    b.shot("login-desktop")
    b.login("admin", ADMIN_PW)
    b.go("/dashboard/")
    # uPlot drew the chart: a canvas, two axes, a legend naming both series
    b.wait.until(lambda d: d.find_elements("css selector", "#events-chart canvas"))
    canvas = b.css("#events-chart canvas")
    assert int(canvas.get_attribute("width")) > 200 and int(canvas.get_attribute("height")) > 100
    assert len(b.all("#events-chart .u-axis")) == 2
    legend = b.css("#events-chart .u-legend").text
    assert "blocked" in legend and "allowed" in legend
    # drawn, not blank: some pixels of the plot are neither transparent nor white
    painted = browser.execute_script(
        """const c = document.querySelector('#events-chart canvas');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < px.length; i += 4)
          if (px[i + 3] > 0 && (px[i] < 200 || px[i + 1] < 200)) n++;
        return n;"""
    )
    assert painted > 500, painted
    # hovering the plot shows the values under the cursor in the legend
    over = b.css("#events-chart .u-over")
    ActionChains(browser).move_to_element_with_offset(over, over.size["width"] // 3, 5).perform()
    b.wait.until(lambda d: re.search(r"\d+ events", b.css("#events-chart .u-legend").text))
    assert re.search(r"\d+:\d\d", b.css("#events-chart .u-legend").text)  # the time under it
    assert b.css("#h-reachable").text == "unreachable"
    assert "status-bad" in b.css("#card-h-reachable").get_attribute("class")
    assert b.css("#rate-chart canvas")  # the live rate chart, empty without a gateway

    for size_name, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        browser.set_window_size(width, height)
        for name, path, nav in PAGES:
            b.go(path)
            if name == "dashboard":
                b.wait.until(lambda d: d.find_elements("css selector", "#events-chart canvas"))
            if nav is not None:
                current = b.all("#mainnav a[aria-current=page]")
                assert [a.get_attribute("textContent") for a in current] == [nav], name
            b.shot(f"{name}-{size_name}")
        if size_name == "phone":  # the navigation folds behind the Menu button
            assert not b.css("#mainnav").is_displayed()
            b.css(".nav-toggle").click()
            assert b.css("#mainnav").is_displayed()
            b.shot("menu-phone")
    assert b.csp_violations() == []
    shots = {p.name for p in SCREENSHOTS.glob("ui-*.png")}
    assert {f"ui-{n}-{s}.png" for n, _, _ in PAGES for s in ("desktop", "phone")} <= shots
