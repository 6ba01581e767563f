"""`credpath web` in a real headless Chromium, over OpenBao, moto Secrets Manager, env and a metastore.

Chromium and chromedriver are Debian's (``scripts/test`` installs them); Selenium drives them with the
performance log on, so every network response (headers and body, through the CDP) is checked for the
seeded secrets, as is the page source. Screenshots go to the test's tmp dir (``artifacts``);
``CREDPATH_DOCS_SCREENSHOT=1`` also writes the inventory to docs/inventory.png (the README's picture).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import assert_no_secret
from tests.servers._util import IN_CI, free_port, stop_process, wait_for_port
from tests.web import _stack

pytest.importorskip("fastapi")
selenium = pytest.importorskip("selenium")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1500,900",
)


def _need_browser() -> None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = "chromium and chromium-driver are not installed (scripts/test installs them)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


class Browser:
    """A Selenium Chromium session that keeps every network response (headers and body) it saw."""

    def __init__(self, profile: Path, artifacts: Path, extra_flags: tuple[str, ...] = ()) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, *extra_flags):
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument("--homepage=about:blank")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        service = Service(executable_path=CHROMEDRIVER, log_output=str(artifacts / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.artifacts = artifacts
        self.responses: list[dict[str, Any]] = []  # url, status, headers, body
        self.origin = "http://127.0.0.1:"

    def get(self, url: str) -> str:
        self.driver.get(url)
        self._drain()
        return self.driver.page_source

    def _drain(self) -> None:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") != "Network.responseReceived":
                continue
            params = message["params"]
            response = params["response"]
            if not response["url"].startswith(self.origin):
                continue  # the browser's own pages (new tab, its start page)
            try:
                body = self.driver.execute_cdp_cmd(
                    "Network.getResponseBody", {"requestId": params["requestId"]}
                )
                text = body.get("body", "")
            except Exception:  # a redirect or an evicted body: its headers are still checked
                text = ""
            self.responses.append(
                {"url": response["url"], "status": response["status"], "headers": response.get("headers", {}),
                 "body": text}
            )  # fmt: skip

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def rows(self) -> dict[tuple[str, str], dict[str, str]]:
        from selenium.webdriver.common.by import By

        out = {}
        for tr in self.driver.find_elements(By.CSS_SELECTOR, "#inventory tbody tr[data-id]"):
            key = (tr.get_attribute("data-kind"), tr.get_attribute("data-id"))
            out[key] = {
                "source": tr.get_attribute("data-source"),
                "shadowed": tr.get_attribute("data-shadowed"),
                "class": tr.get_attribute("class"),
                "text": tr.text,
            }
        return out

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture(autouse=True)
def _quiet_webdriver_logs() -> Iterator[None]:
    # Selenium logs every WebDriver exchange at DEBUG (page sources, CDP bodies): megabytes per test.
    loggers = [logging.getLogger(name) for name in ("selenium", "urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-artifacts")


@pytest.fixture
def browser(tmp_path: Path, artifacts: Path) -> Iterator[Browser]:
    _need_browser()
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    session = Browser(profile, artifacts)
    try:
        yield session
    finally:
        session.close()


class WebServer:
    def __init__(self, stack: _stack.Stack, log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                _stack.web_command(stack, self.port, *args),
                env=stack.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=_stack.REPO,
            )
        wait_for_port(self.port, timeout=60, proc=self.proc)

    def scrape(self) -> dict[tuple[str, ...], float]:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, *(f"{k}={v}" for k, v in sorted(sample.labels.items())))] = sample.value
        return samples

    def stop(self) -> str:
        stop_process(self.proc)
        return self.log_path.read_text(errors="replace")


def _store_requests(samples: dict[tuple[str, ...], float], backend: str | None = None) -> float:
    return sum(
        v
        for k, v in samples.items()
        if k[0] == "credpath_store_requests_total" and (backend is None or f"backend={backend}" in k)
    )


@pytest.mark.timeout(240)
def test_inventory_explain_and_backends_in_chromium(
    browser: Browser, openbao: Any, moto_env: Any, fault_proxy: Any, tmp_path: Path, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    stack = _stack.build(tmp_path, openbao, moto_env, fault_proxy, down=True)
    server = WebServer(stack, artifacts / "credpath-web.log")
    try:
        # Cold: the first render lists every backend and looks every id up in the stores.
        before = stack.store_requests()
        source = browser.get(f"{server.url}/")
        cold = stack.store_requests() - before
        shot = browser.screenshot("inventory")
        rows = browser.rows()
        for (kind, key), (holders, serving) in _stack.EXPECTED.items():
            row = rows[(kind, key)]
            assert row["source"] == serving, (kind, key)
            assert row["shadowed"].split(",") if len(holders) > 1 else row["shadowed"] == ""
            assert set(filter(None, row["shadowed"].split(","))) == set(holders) - {serving}
            assert ("collision" in row["class"]) == (len(holders) > 1), (kind, key)
        assert len(rows) == len(_stack.EXPECTED)
        assert "env-db.internal" in rows[("connection", "shared_db")]["text"]
        assert "(sensitive: not shown)" in rows[("variable", "api_key")]["text"]
        assert "(sensitive: not shown)" in rows[("variable", "aws_db_password")]["text"]
        assert "us-west-2" in rows[("variable", "region")]["text"]
        badges = browser.driver.find_elements(By.CSS_SELECTOR, "#inventory .badge.collision")
        assert len(badges) == 3  # shared_db, vault_only, region
        # The unreachable backend: listing failed, shown, and the rest rendered.
        assert 'class="banner bad failed-listing" data-backend="down"' in source

        # Warm: the same render again, within the page cache's time: no store request at all.
        before = stack.store_requests()
        browser.get(f"{server.url}/")
        warm = stack.store_requests() - before
        assert browser.driver.find_element(By.ID, "data-age").get_attribute("data-age") is not None

        # Filters (plain GET forms, no JavaScript).
        browser.get(f"{server.url}/?collisions=1")
        assert set(browser.rows()) == {
            ("connection", "shared_db"),
            ("connection", "vault_only"),
            ("variable", "region"),
        }
        browser.get(f"{server.url}/?backend=metastore&kind=connection")
        assert set(browser.rows()) == {("connection", "shared_db"), ("connection", "meta_only")}
        browser.get(f"{server.url}/?q=payments")
        assert set(browser.rows()) == {("connection", "api")}
        browser.screenshot("inventory-filtered")

        # The explain of a shadowed id, reached by clicking its link.
        browser.get(f"{server.url}/")
        browser.driver.find_element(By.CSS_SELECTOR, 'tr[data-id="vault_only"] td.id a').click()
        browser._drain()
        outcomes = {
            tr.get_attribute("data-backend"): tr.get_attribute("data-outcome")
            for tr in browser.driver.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")
        }
        assert outcomes == {"env": "miss", "vault": "hit", "aws": "not tried", "metastore": "not tried",
                            "down": "not tried"}  # fmt: skip
        assert browser.driver.find_element(By.ID, "summary").text == "served by vault"
        assert browser.driver.find_element(By.ID, "tier").text.startswith("process")
        assert "the copies in aws are shadowed" in browser.driver.find_element(By.ID, "shadow-note").text
        page = browser.driver.page_source
        assert "(set: not shown)" in page
        browser.screenshot("explain-vault_only")

        # The backends view: each backend in order, check, breaker and store calls.
        browser.get(f"{server.url}/backends")
        backend_rows = browser.driver.find_elements(By.CSS_SELECTOR, "#backends tbody tr")
        assert [r.get_attribute("data-backend") for r in backend_rows] == [
            "env",
            "vault",
            "aws",
            "metastore",
            "down",
        ]
        ok = {r.get_attribute("data-backend"): r.get_attribute("data-ok") for r in backend_rows}
        assert ok == {"env": "yes", "vault": "yes", "aws": "yes", "metastore": "yes", "down": "no"}
        counts = {
            r.get_attribute("data-backend"): r.find_element(By.CSS_SELECTOR, ".counts").text
            for r in backend_rows
        }
        assert re.search(r"hit: \d+", counts["vault"]) and re.search(r"error: \d+", counts["down"])
        browser.screenshot("backends")

        # The report panel, reached from the nav: no audit trail here, so every listed id is "never read",
        # from the inventory's cached listing (no store request).
        browser.get(f"{server.url}/")
        before, listed_at = stack.store_requests(), time.monotonic()
        browser.driver.find_element(By.LINK_TEXT, "Report").click()
        browser._drain()
        unused = browser.driver.find_elements(By.CSS_SELECTOR, "#report-unused tbody tr[data-id]")
        assert {r.get_attribute("data-id") for r in unused} == {key for _, key in _stack.EXPECTED}
        assert browser.driver.find_element(By.ID, "report-partial").is_displayed()
        if time.monotonic() - listed_at < 5:  # within the page cache's 10 s: the inventory's listing reused
            assert stack.store_requests() == before
        browser.screenshot("report")

        # An unknown id: a 404 page that echoes nothing.
        browser.get(f"{server.url}/id/connection?key=no_such_id_zz")
        assert browser.driver.find_element(By.ID, "error-heading").text == "Not found"
        assert "no_such_id_zz" not in browser.driver.page_source
        assert any(r["status"] == 404 and "no_such_id_zz" not in r["body"] for r in browser.responses)

        # /metrics counted what the proxies saw at the stores' side (vault and aws).
        samples = server.scrape()
        for name, proxy in (("vault", stack.vault_proxy), ("aws", stack.aws_proxy)):
            assert _store_requests(samples, name) == proxy.count(), name
    finally:
        log = server.stop()

    # No seeded secret anywhere the browser saw: page sources, every response's headers and body.
    seen = "\n".join(json.dumps(r) for r in browser.responses)
    assert len(browser.responses) >= 10
    assert_no_secret(seen, *_stack.SECRETS.values())
    assert_no_secret(log, *_stack.SECRETS.values())
    figures = {"store_requests_cold_render": cold, "store_requests_warm_render": warm}
    (artifacts / "render-cost.json").write_text(json.dumps(figures))
    print(
        f"page render cost in store requests (vault+aws at the server): {figures}; screenshots in {artifacts}"
    )
    # Cold: each store lists connections and variables (2 + 2), then every id env does not serve is read
    # down the path until a hit: vault is asked for the 7 such ids, aws for the 4 vault misses -> 15.
    # Warm: nothing (the page's data is reused for --cache-seconds; before, the listings: 4 per load).
    assert cold == 4 + 7 + 4
    assert warm == 0
    if os.environ.get("CREDPATH_DOCS_SCREENSHOT") == "1":
        shutil.copy(shot, _stack.REPO / "docs" / "inventory.png")


def test_web_refuses_non_loopback_without_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDPATH_")}
    env["PYTHONPATH"] = str(_stack.REPO / "src")
    config = tmp_path / "credpath.toml"
    config.write_text('[[backends]]\nname = "env"\ntype = "env"\n')
    started = time.monotonic()
    result = subprocess.run(
        [os.sys.executable, "-m", "credpath", "web", "--config", str(config), "--host", "0.0.0.0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "loopback" in result.stderr and "--token-file" in result.stderr
    assert time.monotonic() - started < 30


def test_web_malformed_config_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDPATH_")}
    env["PYTHONPATH"] = str(_stack.REPO / "src")
    config = tmp_path / "credpath.toml"
    config.write_text(
        '[[backends]]\nname = "v"\ntype = "vault"\nkwargs = { url = "http://x", token = "tok-s3cr3t" \n'
    )
    result = subprocess.run(
        [os.sys.executable, "-m", "credpath", "web", "--config", str(config), "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("credpath: error:")
    assert_no_secret(result.stderr + result.stdout)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[[backends]]\nname = "v"\ntype = "no-such-store"\n')
    result = subprocess.run(
        [os.sys.executable, "-m", "credpath", "web", "--config", str(unknown), "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


# --- what page loads cost the stores, and who may load them ---------------------------------------------


def _load(url: str, host: str | None = None) -> tuple[int, Any, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


@pytest.mark.timeout(240)
def test_sixty_page_loads_after_warm_up_cost_no_store_request(
    openbao: Any, moto_env: Any, fault_proxy: Any, tmp_path: Path, artifacts: Path
) -> None:
    """Counted at the servers (the fault proxies in front of OpenBao and moto). Before: 200 requests for
    these 60 loads (inventory 4 per load, detail 4, backends 2, an unknown id 4)."""
    stack = _stack.build(tmp_path, openbao, moto_env, fault_proxy)
    server = WebServer(stack, artifacts / "budget.log", "--cache-seconds", "120")
    pages = ["/", "/id/connection?key=vault_only", "/backends", "/id/connection?key=no_such_id_zz"]
    try:
        for page in pages:  # warm-up
            _load(server.url + page)
        before = stack.store_requests()
        statuses = [_load(server.url + pages[i % 4])[0] for i in range(60)]
        after = stack.store_requests() - before
        status, _, body = _load(server.url + "/backends")
    finally:
        log = server.stop()
    assert statuses.count(200) == 45 and statuses.count(404) == 15
    assert after == 0, f"{after} store requests for 60 warm page loads"
    assert (status == 200 and 'id="data-age"' in body and "s ago" in body) or "just now" in body
    assert_no_secret(log, *_stack.SECRETS.values())
    (artifacts / "budget.json").write_text(json.dumps({"store_requests_60_warm_loads": after}))
    print(f"60 warm page loads: {after} store requests (counted at the servers)")


@pytest.mark.timeout(240)
def test_page_builds_reaching_the_stores_are_rate_limited(
    openbao: Any, moto_env: Any, fault_proxy: Any, tmp_path: Path, artifacts: Path
) -> None:
    stack = _stack.build(tmp_path, openbao, moto_env, fault_proxy)
    server = WebServer(
        stack, artifacts / "limit.log", "--cache-seconds", "0", "--store-requests-per-minute", "6"
    )
    try:
        before = stack.store_requests()
        answers = [_load(server.url + "/backends") for _ in range(12)]
        spent = stack.store_requests() - before
    finally:
        server.stop()
    statuses = [a[0] for a in answers]
    assert statuses[:6] == [200] * 6 and set(statuses[6:]) == {429}
    assert all(int(a[1].get("Retry-After")) >= 1 for a in answers[6:])
    assert spent == 6 * 2  # each build checks vault and aws once; the refused loads reach nothing


@pytest.mark.timeout(240)
def test_dns_rebinding_page_is_refused_in_chromium(tmp_path: Path, artifacts: Path) -> None:
    """Chromium resolves attacker.example to 127.0.0.1 (as after a rebinding): the page it asks for
    carries Host: attacker.example and is refused; the same server by loopback name answers."""
    _need_browser()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDPATH_", "AIRFLOW_"))}
    env.update(PYTHONPATH=str(_stack.REPO / "src"), CREDPATH_HOME=str(tmp_path / "home"),
               AIRFLOW_VAR_REBIND_MARKER="visible-only-to-loopback")  # fmt: skip
    config = tmp_path / "credpath.toml"
    config.write_text('[[backends]]\nname = "env"\ntype = "env"\n')
    port = free_port()
    with (artifacts / "rebind.log").open("wb") as log:
        proc = subprocess.Popen(
            [os.sys.executable, "-m", "credpath", "web", "--config", str(config), "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    profile = tmp_path / "profile"
    profile.mkdir()
    browser = Browser(profile, artifacts, ("--host-resolver-rules=MAP attacker.example 127.0.0.1",))
    try:
        wait_for_port(port, timeout=60, proc=proc)
        rebound = browser.get(f"http://attacker.example:{port}/")
        assert "rebind_marker" not in rebound and "unknown host" in rebound
        by_name = browser.get(f"http://localhost:{port}/")
        assert "rebind_marker" in by_name
        assert "rebind_marker" in browser.get(f"http://127.0.0.1:{port}/")
        # The same over a raw request: any Host but a loopback name is 421, before any page is built.
        assert _load(f"http://127.0.0.1:{port}/", host=f"attacker.example:{port}")[0] == 421
        assert _load(f"http://127.0.0.1:{port}/metrics", host="evil.test")[0] == 421
        assert _load(f"http://127.0.0.1:{port}/", host=f"[::1]:{port}")[0] == 200
    finally:
        browser.close()
        stop_process(proc)
