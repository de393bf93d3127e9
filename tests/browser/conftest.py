"""Browser tests: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium
against the real system, started by `promptgen up` with a slow test LLM behind it: one with
auth off (`live_system`), one with auth required and API keys made as an operator does
(`auth_system`)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from services.cli.embedded import free_port
from services.testing.deployment import UpProcess
from tests.servers import NatsServer, stop, wait_port

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
LLM_LATENCY_MS = 400  # slow enough to see personas "processing", fast enough for a quick suite


def _ensure_chromium() -> str | None:
    """None when Chromium is usable, else why not. Installs it where the machine allows."""
    if os.path.exists(CHROMIUM) and os.path.exists(DRIVER):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "Chromium is not installed and this user cannot install it (apt-get install chromium chromium-driver)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=600, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], env=env, check=True,
                       timeout=900, capture_output=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"installing Chromium failed: {exc}"
    return None if os.path.exists(CHROMIUM) and os.path.exists(DRIVER) else "Chromium still missing after install"


@pytest.fixture(scope="session")
def chromium():
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("browser tests skipped: selenium is not installed (pip install -e '.[test]')")
    reason = _ensure_chromium()
    if reason:
        pytest.skip(f"browser tests skipped: {reason}")
    return CHROMIUM


class System:
    """`promptgen up` (services.testing.deployment.UpProcess) against `promptgen mock-llm`, both real
    processes on loopback.

    ``auth=True``: the gateway runs with ``PROMPTGEN_AUTH=required``. Such a gateway does not start
    without a key, so NATS comes first (a nats-server of its own, which `up` then uses), the keys are
    made on it with `promptgen keys create`, and `up` starts the rest: ``keys`` maps a name to a key
    of tenant ``web`` (``all``: every scope; ``reader``: ``jobs:read`` only)."""

    def __init__(self, *, auth: bool = False) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="promptgen-browser-"))
        self.nats: NatsServer | None = None
        self.keys: dict[str, str] = {}
        self.up: UpProcess | None = None
        llm_port = free_port()
        self.llm_admin = f"http://127.0.0.1:{llm_port}/admin"
        self.llm = subprocess.Popen([sys.executable, "-m", "services.cli", "mock-llm", "--port", str(llm_port),
                                     "--latency-ms", str(LLM_LATENCY_MS)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{llm_port}/v1", "OPENAI_API_KEY": "browser-test",
               "PROMPTGEN_WORKER_CONCURRENCY": "2", "PROMPTGEN_LLM_MAX_ATTEMPTS": "1"}
        try:
            wait_port(llm_port, proc=self.llm)
            if auth:
                self.nats = NatsServer(self.data / "nats").start()
                self.keys = {"all": self.create_key("all"), "reader": self.create_key("jobs:read")}
                env |= {"NATS_URL": self.nats.url, "PROMPTGEN_AUTH": "required",
                        "PROMPTGEN_STREAM_TOKEN_SECRET": secrets.token_hex(32)}
            self.up = UpProcess(self.data, env=env)
            self.base_url = self.up.base_url
            self.up.start(90)
        except (RuntimeError, TimeoutError, subprocess.SubprocessError):
            self.close()
            raise

    def _keys_command(self, *args: str) -> str:
        assert self.nats is not None, "keys live on the NATS of a System(auth=True)"
        env = {k: v for k, v in os.environ.items() if k != "MONGO_URL"} | {"NATS_URL": self.nats.url}
        done = subprocess.run([sys.executable, "-m", "services.cli", "keys", *args], env=env,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"promptgen keys {args[0]} exited with {done.returncode}:\n{done.stderr[-3000:]}")
        return done.stdout

    def create_key(self, scopes: str, tenant: str = "web") -> str:
        """A new API key, as an operator makes one: `promptgen keys create` (the key is its last line)."""
        return self._keys_command("create", "--tenant", tenant, "--scopes", scopes).strip().splitlines()[-1]

    def revoke_key(self, key: str) -> None:
        self._keys_command("revoke", key.split("_")[1])  # pgk_<id>_<secret>

    def headers(self, name: str = "all") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"} if self.keys else {}

    def healthy(self, seconds: float) -> bool:
        assert self.up is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.up.proc is None or self.up.proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def script_llm(self, steps: list[dict]) -> None:
        httpx.post(f"{self.llm_admin}/script", json=steps).raise_for_status()

    def one_slow_prompt(self, personas: int, latency_ms: float = 5000) -> None:
        """The next flow's template, personas and prompts at the usual pace but its last prompt,
        which takes ``latency_ms``: the job is still running, a persona still being generated,
        when the others are shown done, however busy the machine (at the usual pace a loaded
        machine can deliver a persona's start and end in one write, and the page skips a state)."""
        self.script_llm([{"fault": "ok"}] * (1 + personas) + [{"fault": "ok", "latency_ms": latency_ms}])

    def gateway_pid(self) -> int:
        """The gateway process `promptgen up` started (its supervisor restarts it when it dies)."""
        assert self.up is not None
        pid = self.up.pids().get("gateway")
        if pid is None:
            raise LookupError("no gateway process under promptgen up")
        return pid

    def close(self) -> None:
        if self.up is not None:
            self.up.stop(timeout=60)
        stop(self.llm)
        if self.nats is not None:
            self.nats.stop()
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture(scope="session")
def live_system(chromium):
    system = System()
    yield system
    system.close()


@pytest.fixture(scope="session")
def auth_system(chromium):
    system = System(auth=True)
    yield system
    system.close()


def _chrome(chromium: str, profile: Path, *, network_log: bool):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", **({"performance": "ALL"} if network_log else {})})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": COLLECT_CSP_VIOLATIONS})
    return driver


@pytest.fixture
def browser(chromium, tmp_path):
    driver = _chrome(chromium, tmp_path / "chrome", network_log=False)
    yield driver
    _quit(driver)


@pytest.fixture
def network_browser(chromium, tmp_path):
    """A browser that also records its network traffic: see :func:`requests_sent`."""
    driver = _chrome(chromium, tmp_path / "chrome", network_log=True)
    yield driver
    _quit(driver)


def requests_sent(driver) -> list[dict]:
    """Every request the page sent since the last call, as Chromium's DevTools saw it (its
    ``Network.requestWillBeSent`` events): ``url``, ``method``, ``headers``, ``type`` (Fetch,
    EventSource, Document, …)."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            sent.append({**params["request"], "type": params.get("type")})
    return sent


def _quit(driver) -> None:
    # a script error or a Content-Security-Policy violation in the page fails the test that caused it
    violations = csp_violations(driver)
    errors = [e["message"] for e in driver.get_log("browser")
              if e["level"] == "SEVERE"
              and not any(s in e["message"] for s in ("Failed to load resource", "net::ERR_"))]
    driver.quit()
    assert not violations, f"Content-Security-Policy violations in the page: {violations}"
    assert not errors, f"JavaScript errors in the page: {errors}"


# Run before any script of each page (the debugger's, which the page's policy does not govern).
COLLECT_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__cspViolations.push(`${e.effectiveDirective} refused ${e.blockedURI || "inline"}`));
"""


def csp_violations(driver) -> list[str]:
    """The violations the current page has reported (and forgets them)."""
    try:
        return driver.execute_script("const v = window.__cspViolations || []; window.__cspViolations = []; return v;")
    except Exception:  # noqa: BLE001 - no page to ask (a crashed tab): the console check still runs
        return []


def screenshot(driver, name: str) -> None:
    """Saved under docs/screenshots with PROMPTGEN_UPDATE_SCREENSHOTS=1 (for the README), else to a temp dir."""
    temporary = Path(tempfile.gettempdir()) / "promptgen-screenshots"
    folder = SCREENSHOTS if os.environ.get("PROMPTGEN_UPDATE_SCREENSHOTS") else temporary
    folder.mkdir(parents=True, exist_ok=True)
    driver.execute_script(
        "const t = document.getElementById('toast'); if (t) { t.style.transition = 'none'; t.className = ''; }")
    driver.save_screenshot(str(folder / f"{name}.png"))
