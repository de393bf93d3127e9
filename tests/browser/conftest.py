"""Browser tests: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium
against the real system, started by `promptgen up` with a slow test LLM behind it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from services.embedded import free_port
from tests.servers import stop, wait_port

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


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
    reason = _ensure_chromium()
    if reason:
        pytest.skip(f"browser tests skipped: {reason}")
    return CHROMIUM


class System:
    """`promptgen up` against `promptgen mock-llm`, both real processes on loopback."""

    def __init__(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="promptgen-browser-"))
        llm_port = free_port()
        self.llm_admin = f"http://127.0.0.1:{llm_port}/admin"
        self.llm = subprocess.Popen([sys.executable, "-m", "services.cli", "mock-llm", "--port", str(llm_port),
                                     "--latency-ms", "400"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(llm_port, proc=self.llm)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "MONGO_URL")}
        env.update(OPENAI_BASE_URL=f"http://127.0.0.1:{llm_port}/v1", OPENAI_API_KEY="browser-test",
                   PROMPTGEN_WORKER_CONCURRENCY="2", PROMPTGEN_LLM_MAX_ATTEMPTS="1")
        self.up = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", "--port", str(self.port), "--data-dir", str(self.data),
             "--nats-port", str(free_port()), "--mongo-port", str(free_port())],
            stdout=(self.data / "up.log").open("w"), stderr=subprocess.STDOUT, env=env)
        self.base_url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError((self.data / "up.log").read_text()[-3000:])

    def script_llm(self, steps: list[dict]) -> None:
        httpx.post(f"{self.llm_admin}/script", json=steps).raise_for_status()

    def close(self) -> None:
        self.up.send_signal(signal.SIGTERM)
        try:
            self.up.wait(60)
        except subprocess.TimeoutExpired:
            self.up.kill()
        stop(self.llm)


@pytest.fixture(scope="session")
def live_system(chromium):
    system = System()
    yield system
    system.close()


@pytest.fixture
def browser(chromium, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> None:
    """Saved under docs/screenshots with PROMPTGEN_UPDATE_SCREENSHOTS=1 (for the README), else to a temp dir."""
    folder = SCREENSHOTS if os.environ.get("PROMPTGEN_UPDATE_SCREENSHOTS") else Path(tempfile.gettempdir()) / "promptgen-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))
