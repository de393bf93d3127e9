"""The job page says which key started the job: `promptgen up` with auth on (a key created on its
NATS, then started again), and the browser signed in with the key on the page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from services.testing.deployment import UpProcess
from tests.browser.test_web_ui import _sign_in


@pytest.fixture(scope="module")
def secured(chromium):
    data = Path(tempfile.mkdtemp(prefix="promptgen-browser-auth-"))
    up = UpProcess(data, env={"PROMPTGEN_STREAM_TOKEN_SECRET": "browser-test-secret"})
    try:
        up.start(90)
        created = subprocess.run([sys.executable, "-m", "services.cli", "keys", "create", "--tenant", "acme",
                                  "--scopes", "all"], env={**os.environ, "NATS_URL": up.nats_url},
                                 capture_output=True, text=True, timeout=60, check=True)
        up.stop(timeout=60)
        up.start(90)  # a key exists: auth is on from this start
        yield up, created.stdout.strip().splitlines()[-1]
    finally:
        up.stop(timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def test_the_job_page_says_which_key_started_the_job(browser, secured):
    up, key = secured
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=up.base_url, headers=headers, timeout=30) as client:
        assert client.get("/scenario/v2/jobs", headers={"Authorization": ""}).status_code == 401  # auth is on
        r = client.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": "# Renewal\nA rep."})
        template_id = r.json()["template_id"]
        r = client.post("/scenario/generate-personas", json={"template_id": template_id, "persona_type": "x",
                                                             "count": 1})
        persona_id = r.json()["personas"][0]["id"]
        r = client.post("/scenario/v2/generate-final-prompts", json={
            "template_id": template_id, "persona_ids": [persona_id], "mode_mapping": {persona_id: "learn_mode"}})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
    browser.get(f"{up.base_url}/#/jobs/{job_id}")
    _sign_in(browser, key)  # the page asks for the key first, then opens the job
    key_id = key.split("_")[1]
    line = WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, "started-by")))
    assert line.text == f"started by key {key_id} (tenant acme)"
    secret = key.split("_", 2)[2]  # the secret itself may hold "_"
    assert secret not in browser.page_source  # the key's id, never the key
