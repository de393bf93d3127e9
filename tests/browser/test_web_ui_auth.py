"""The web page and the seed's frontend code against a gateway with auth required
(``PROMPTGEN_AUTH=required``, keys made with `promptgen keys create`): signing in with an API key
kept in the tab's sessionStorage and sent only as a header, the whole flow, a reload mid-job, a
wrong, a revoked and an under-scoped key, signing out, and the seed's `new EventSource(sse_endpoint)`
after a fetch with the key."""

from __future__ import annotations

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from tests.browser.conftest import requests_sent, screenshot
from tests.browser.test_web_ui import (
    DOCUMENT,
    _exactly_once,
    _log,
    _new_job,
    _rows,
    _sign_in,
    _status,
    _wait,
)

pytestmark = pytest.mark.timeout(120)

KEY_ITEM = "promptgen.apiKey"


def _signed_out(driver) -> None:
    """The sign-in form is the page, and this tab holds no key."""
    _wait(driver).until(EC.visibility_of_element_located((By.ID, "api-key")))
    assert driver.find_element(By.CSS_SELECTOR, "main h1").text == "Sign in"
    assert not driver.find_element(By.ID, "sign-out").is_displayed()
    assert not driver.find_element(By.ID, "signed-in-as").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem(arguments[0])", KEY_ITEM) is None


def _key_stays_in_the_tab(driver, key: str, system) -> list[dict]:
    """The key is in sessionStorage and nowhere else the browser keeps or sends as text: not in
    localStorage, cookies or the page URL; not in the URL of any request the page sent (only in
    Authorization headers); and not in the deployment's logs. Returns the requests sent."""
    assert driver.execute_script("return sessionStorage.getItem(arguments[0])", KEY_ITEM) == key
    assert key not in driver.execute_script("return JSON.stringify(localStorage) + document.cookie")
    assert key not in driver.current_url
    sent = requests_sent(driver)
    assert sent, "the network log recorded nothing"
    assert not [r["url"] for r in sent if key in r["url"]]
    with_key = [r for r in sent if {k.lower(): v for k, v in r["headers"].items()}.get("authorization")
                == f"Bearer {key}"]
    assert with_key and all(r["type"] == "Fetch" for r in with_key)
    assert system.up is not None and key not in system.up.output()
    return sent


def test_sign_in_then_the_seed_flow_end_to_end(network_browser, auth_system):
    browser, key = network_browser, auth_system.keys["all"]
    browser.get(auth_system.base_url + "/#/jobs")
    _signed_out(browser)  # the page asks for a key before anything else
    auth_system.one_slow_prompt(3)
    job_id = _new_job(browser, auth_system.base_url, 3, ["learn_mode", "try_mode", "assess_mode"], key=key)
    assert browser.find_element(By.ID, "sign-out").is_displayed()
    assert browser.find_element(By.ID, "signed-in-as").text.startswith("web · jobs:read, jobs:write")

    # live progress over the job's stream, opened with its stream token
    _wait(browser).until(lambda d: any(e.text.startswith("Generating prompt for ")
                                       for e in d.find_elements(By.CSS_SELECTOR, "#job-personas .state")))
    _status(browser, "completed")
    assert browser.find_element(By.ID, "summary").text == "3 of 3 done · 3 successful · 0 failed"
    assert browser.find_element(By.ID, "job-title").text == "Delivering difficult news"  # template, with the key
    results = _wait(browser).until(EC.visibility_of_element_located((By.ID, "results")))
    assert "3 of 3 prompts generated" in results.text and "Learning objectives" in results.text

    # every prompt, in full, as stored on its persona
    with httpx.Client(base_url=auth_system.base_url, headers=auth_system.headers(), timeout=30) as api:
        for row in browser.find_elements(By.CSS_SELECTOR, "#job-personas > li"):
            persona = api.get(f"/scenario/personas/{row.get_attribute('data-persona-id')}").json()
            _wait(browser).until(lambda d, r=row, p=persona: f"{p['age']} · {p['role']}" in r.text)
            row.find_element(By.CSS_SELECTOR, ".show-prompt summary").click()
            prompt = row.find_element(By.CSS_SELECTOR, ".show-prompt pre.prompt")
            _wait(browser).until(lambda d, p=prompt: p.get_attribute("data-loaded"))
            assert prompt.get_property("textContent") == persona["system_prompt"]
    _wait(browser).until(lambda d: "job.completed" in d.find_element(By.ID, "timeline").text)  # history, too

    sent = _key_stays_in_the_tab(browser, key, auth_system)
    streams = [r["url"] for r in sent if r["type"] == "EventSource"]
    assert streams and all(f"/prompt-generation-status/{job_id}?token=" in url for url in streams), streams

    # the jobs page lists it; signing out forgets the key and the tab's work
    browser.find_element(By.LINK_TEXT, "Jobs").click()
    _wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, f"a[href='#/jobs/{job_id}']")))
    browser.find_element(By.ID, "sign-out").click()
    _signed_out(browser)
    assert browser.execute_script(
        "return Object.keys(sessionStorage).filter(k => k.startsWith('promptgen.'))") == []
    browser.get(f"{auth_system.base_url}/#/jobs/{job_id}")  # a deep link asks first, then opens
    _signed_out(browser)
    _sign_in(browser, key)
    _status(browser, "completed")
    assert len(_rows(browser)) == 3


def test_a_reload_mid_job_keeps_the_key_and_resumes_live(network_browser, auth_system):
    browser, key = network_browser, auth_system.keys["all"]
    auth_system.one_slow_prompt(6)
    job_id = _new_job(browser, auth_system.base_url, 6, key=key)
    _wait(browser).until(lambda d: "completed" in " ".join(_rows(d).values()))
    assert browser.find_element(By.ID, "job-status").text == "processing"
    requests_sent(browser)  # what came before the reload
    browser.refresh()  # the key outlives a reload (same tab); the stream resumes with job status' token
    _status(browser, "completed")
    rows = _rows(browser)
    assert len(rows) == 6 and all("completed" in c for c in rows.values())
    _exactly_once(_log(browser), 6)
    sent = _key_stays_in_the_tab(browser, key, auth_system)
    streams = [r["url"] for r in sent if r["type"] == "EventSource"]
    assert streams and all(f"/prompt-generation-status/{job_id}?token=" in url and "last_event_id=" in url
                           for url in streams), streams


def test_a_wrong_key_is_refused_and_a_key_without_a_scope_says_which(browser, auth_system):
    browser.get(auth_system.base_url + "/")
    _signed_out(browser)
    _sign_in(browser, "pgk_0123456789abcdef_not-a-key")
    error = _wait(browser).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#sign-in-error [role=alert]")))
    assert error.text == "The API key is unknown or revoked"  # the 401's detail
    _signed_out(browser)  # still asking, nothing kept
    screenshot(browser, "7-sign-in")

    _sign_in(browser, auth_system.keys["reader"])  # a real key, with jobs:read only
    _wait(browser).until(EC.element_to_be_clickable((By.ID, "scenario"))).send_keys(DOCUMENT)
    assert browser.find_element(By.ID, "signed-in-as").text == "web · jobs:read"  # who, and what it may do
    browser.find_element(By.ID, "analyze").click()
    alert = _wait(browser).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "form [role=alert]")))
    assert alert.text == "This API key lacks the scope 'scenarios:write'"  # the 403's detail
    browser.find_element(By.LINK_TEXT, "Jobs").click()  # what it may do, it does
    _wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#jobs table, #jobs .empty")))
    browser.set_window_size(390, 844)  # signed in, on a phone: the header (with "Sign out") still fits
    assert browser.find_element(By.ID, "sign-out").is_displayed()
    assert browser.execute_script(
        "const w = document.documentElement.clientWidth;"
        "return [...document.querySelectorAll('header *')].filter(e => e.getBoundingClientRect().right > w + 0.5)"
        "  .map(e => e.tagName + (e.id ? '#' + e.id : ''))") == []


def test_a_key_revoked_mid_session_brings_back_the_sign_in(browser, auth_system):
    doomed = auth_system.create_key("all")
    browser.get(auth_system.base_url + "/#/jobs")
    _sign_in(browser, doomed)
    _wait(browser).until(EC.element_to_be_clickable((By.ID, "refresh-jobs")))
    auth_system.revoke_key(doomed)
    browser.find_element(By.ID, "refresh-jobs").click()
    notice = _wait(browser).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#sign-in-error [role=alert]")))
    assert notice.text.startswith("Your API key was refused: The API key was revoked at ")
    _signed_out(browser)


# The seed's frontend code ("React Hook Example") as a page runs it, with the key in the fetch
# (and the JSON content type, which the seed leaves out: a string body goes as text/plain, which
# the gateway reads as JSON only from its own pages), then `new EventSource(sse_endpoint)` exactly.
SEED_FRONTEND = """
const [key, templateId, personas, modeMapping, done] = arguments;
(async () => {
  const response = await fetch('/scenario/v2/generate-final-prompts', {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({
      template_id: templateId,
      persona_ids: personas.map(p => p.id),
      mode_mapping: modeMapping
    })
  });

  const { job_id, sse_endpoint } = await response.json();

  // Connect to SSE
  const eventSource = new EventSource(sse_endpoint);
  const seen = [];

  eventSource.onmessage = (event) => {
    const data = JSON.parse(event.data);
    seen.push(data);

    if (data.type === 'results') {
      eventSource.close();
      done({ job_id, sse_endpoint, seen });
    }
  };
  eventSource.onerror = () => {
    if (eventSource.readyState === EventSource.CLOSED) done({ job_id, sse_endpoint, seen, closed: true });
  };
})().catch((err) => done({ error: String(err) }));
"""

# The same stream without the token: an EventSource cannot send the key, so it is refused.
WITHOUT_TOKEN = """
const [jobId, done] = arguments;
const eventSource = new EventSource(`/scenario/v2/prompt-generation-status/${jobId}`);
let messages = 0;
eventSource.onmessage = () => { messages += 1; };
eventSource.onerror = () => {
  if (eventSource.readyState === EventSource.CLOSED) done({ closed: true, messages });
};
"""


def test_the_seeds_event_source_follows_the_job_to_its_end_with_the_token(browser, auth_system):
    key = auth_system.keys["all"]
    with httpx.Client(base_url=auth_system.base_url, headers=auth_system.headers(), timeout=30) as api:
        template_id = api.post("/scenario/analyze-scenario-enhanced",
                               json={"scenario_document": DOCUMENT}).raise_for_status().json()["template_id"]
        personas = api.post("/scenario/generate-personas", json={
            "template_id": template_id, "persona_type": "assess_mode_character", "count": 3,
        }).raise_for_status().json()["personas"]
    modes = {p["id"]: m for p, m in zip(personas, ["learn_mode", "try_mode", "assess_mode"], strict=True)}
    browser.get(auth_system.base_url + "/healthz")  # a page of the gateway's origin with no script of its own
    browser.set_script_timeout(90)
    out = browser.execute_async_script(SEED_FRONTEND, key, template_id, personas, modes)

    assert "error" not in out and not out.get("closed"), out
    assert out["sse_endpoint"].startswith(f"/scenario/v2/prompt-generation-status/{out['job_id']}?token=")
    assert key not in out["sse_endpoint"]
    seen = out["seen"]
    assert seen[-1]["type"] == "results" and seen[-1]["results"]["successful"] == 3, seen[-1]
    assert {m["persona_id"] for m in seen if m["type"] == "persona_progress" and m["status"] == "completed"} \
        == set(modes)
    assert any(m["type"] == "status_update" and m["status"] == "completed" for m in seen)

    refused = browser.execute_async_script(WITHOUT_TOKEN, out["job_id"])
    assert refused == {"closed": True, "messages": 0}


# promptgen-client.js with a token provider: a job's stream refused (here a forged token, as an
# expired one is) while the job runs is followed again with the fresh sse_endpoint of job status.
CLIENT_REFOLLOWS = """
const [key, templateId, personaIds, done] = arguments;
(async () => {
  const { createClient } = await import('/static/js/promptgen-client.js');
  const client = createClient({ getToken: async () => key });
  const modes = Object.fromEntries(personaIds.map((id) => [id, 'learn_mode']));
  const started = await client.startGeneration(templateId, personaIds, modes);
  const connections = [];
  let messages = 0;
  client.watch(started.job_id, {
    sseEndpoint: started.sse_endpoint.replace(/token=[^&]*/, 'token=1.web.forged'),
    onConnection: (c) => connections.push(c),
    onChange: (state, message) => {
      if (message) messages += 1;
      if (message && message.type === 'results') done({ job_id: started.job_id, state, connections, messages });
    },
  });
})().catch((err) => done({ error: String(err) }));
"""


def test_the_client_follows_again_with_a_fresh_token_when_its_stream_is_refused(network_browser, auth_system):
    browser, key = network_browser, auth_system.keys["all"]
    with httpx.Client(base_url=auth_system.base_url, headers=auth_system.headers(), timeout=30) as api:
        template_id = api.post("/scenario/analyze-scenario-enhanced",
                               json={"scenario_document": DOCUMENT}).raise_for_status().json()["template_id"]
        personas = api.post("/scenario/generate-personas", json={
            "template_id": template_id, "persona_type": "assess_mode_character", "count": 6,
        }).raise_for_status().json()["personas"]
    browser.get(auth_system.base_url + "/healthz")
    browser.set_script_timeout(90)
    out = browser.execute_async_script(CLIENT_REFOLLOWS, key, template_id, [p["id"] for p in personas])

    assert "error" not in out, out
    assert out["state"]["status"] == "completed" and out["state"]["results"]["successful"] == 6
    assert out["connections"][:3] == ["connecting", "closed", "connecting"] and "live" in out["connections"], out
    streams = [r["url"] for r in requests_sent(browser) if r["type"] == "EventSource"]
    assert len(streams) == 2 and "token=1.web.forged" in streams[0], streams
    assert f"/prompt-generation-status/{out['job_id']}?token=" in streams[1] and "forged" not in streams[1]
