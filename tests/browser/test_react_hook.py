"""usePromptGeneration (static/js/use-prompt-generation.js) in a real React 18 app in Chromium,
with auth off, and with auth required and the key from a token provider (`getToken`).

The hook is imported the way a frontend team imports it: `import ... from "react"` resolved
by an import map, here to the vendored React UMD build (tests/browser/vendor, test-only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import requests_sent

pytestmark = pytest.mark.timeout(60)

VENDOR = Path(__file__).parent / "vendor"

# "react" as an ES module over the UMD global (what a bundler's CJS interop gives an app).
REACT_MODULE = (
    "const R = window.React; export default R; "
    "export const { useState, useEffect, useCallback, useMemo, useRef, useReducer, createElement } = R;"
)

APP = """
import { usePromptGeneration } from "/static/js/use-prompt-generation.js";
import { createClient } from "/static/js/promptgen-client.js";

// with auth on (window.__key set), the key comes from a token provider, asked before every request
const key = window.__key;
window.__tokenCalls = 0;
const credentials = key ? { getToken: async () => { window.__tokenCalls += 1; return key; } } : {};
const client = createClient(credentials);
const template = await client.analyzeScenario(
  "# Renewal\\nA rep renews a contract.\\n\\n## Roles\\n- Rep: learner\\n- Buyer - skeptical");
const { personas } = await client.generatePersonas(template.template_id, "assess_mode_character", 3);
const modes = Object.fromEntries(personas.map((p, i) => [p.id, ["learn_mode", "try_mode", "assess_mode"][i]]));
const h = React.createElement;
window.__seen = [];

function Generate({ templateId, personas, modeMapping }) {
  const { status, progress, counts, results, error, connection, startGeneration } =
    usePromptGeneration(templateId, personas, modeMapping, credentials);
  window.__seen.push([status, connection, ...Object.values(progress).map((p) => p.status)].join(" "));
  return h("div", null,
    h("button", { id: "go", onClick: startGeneration }, "Create Avatar Interactions"),
    h("p", { id: "status" }, status),
    h("p", { id: "counts" }, `${counts.done}/${counts.total} done, ${counts.successful} successful`),
    h("ul", { id: "progress" }, Object.entries(progress).map(([id, p]) =>
      h("li", { key: id, "data-status": p.status }, `${p.name} (${p.mode}): ${p.status}`))),
    results && h("p", { id: "results" }, `${results.successful} of ${results.total_personas} generated`),
    error && h("p", { id: "error" }, error.message));
}

function Resumed({ jobId }) {  // a second component that picks the job up by id (after a reload)
  const { status, progress, counts } = usePromptGeneration(null, [], {}, { jobId, ...credentials });
  return h("p", { id: "resumed" }, `${status} ${counts.done}/${counts.total} ${Object.keys(progress).length}`);
}

window.__mountResumed = (jobId) =>
  ReactDOM.createRoot(document.getElementById("root2")).render(h(Resumed, { jobId }));
ReactDOM.createRoot(document.getElementById("root")).render(
  h(Generate, { templateId: template.template_id, personas, modeMapping: modes }));
window.__ready = true;
"""


def _run_app(browser, system, key: str | None = None) -> str:
    """Mount the app on a page of the gateway's origin, start a job with the hook, follow it to
    its end, then resume it in a second component; returns the job id."""
    system.one_slow_prompt(3)  # a persona is still being generated while the others are done
    browser.get(system.base_url + "/healthz")  # any page of the gateway's origin, with no script of its own
    browser.execute_script(
        """
        const [react, reactDom, reactModule, app, key] = arguments;
        window.__key = key;
        document.body.innerHTML = '<div id="root"></div><div id="root2"></div>';
        for (const code of [react, reactDom]) {
          const s = document.createElement('script'); s.textContent = code; document.head.append(s);
        }
        const map = document.createElement('script');
        map.type = 'importmap';
        map.textContent = JSON.stringify({imports: {react: 'data:text/javascript,' + encodeURIComponent(reactModule)}});
        document.head.append(map);
        const s = document.createElement('script'); s.type = 'module'; s.textContent = app; document.head.append(s);
        """,
        (VENDOR / "react.production.min.js").read_text(), (VENDOR / "react-dom.production.min.js").read_text(),
        REACT_MODULE, APP, key)
    wait = WebDriverWait(browser, 30, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda d: d.execute_script("return window.__ready === true"))
    assert browser.find_element(By.ID, "status").text == "idle"

    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_elements(By.ID, "results") or d.find_elements(By.ID, "error"))
    assert not browser.find_elements(By.ID, "error")
    assert browser.find_element(By.ID, "results").text == "3 of 3 generated"
    assert browser.find_element(By.ID, "status").text == "completed"
    assert browser.find_element(By.ID, "counts").text == "3/3 done, 3 successful"
    items = browser.find_elements(By.CSS_SELECTOR, "#progress li")
    assert [li.get_attribute("data-status") for li in items] == ["completed"] * 3
    assert sorted(li.text.split("(")[1].split(")")[0] for li in items) == ["assess_mode", "learn_mode", "try_mode"]
    seen = browser.execute_script("return window.__seen")
    # live progress reached the component: a persona "processing" while the stream was live
    assert any(s.startswith("processing live ") and "processing" in s[len("processing live "):] for s in seen), \
        json.dumps(seen)

    # resume: a component mounted later with the job id replays the history: same counts, no duplicates
    job_id = browser.execute_script(
        "return fetch('/scenario/v2/jobs?limit=1', {headers: arguments[0]}).then(r => r.json())"
        "  .then(b => b.jobs[0].job_id)", system.headers())
    browser.execute_script("window.__mountResumed(arguments[0])", job_id)
    wait.until(lambda d: d.find_element(By.ID, "resumed").text == "completed 3/3 3")
    return job_id


def test_use_prompt_generation_in_react(browser, live_system):
    _run_app(browser, live_system)


def test_use_prompt_generation_with_a_token_provider(network_browser, auth_system):
    key = auth_system.keys["all"]
    job_id = _run_app(network_browser, auth_system, key)
    assert network_browser.execute_script("return window.__tokenCalls") >= 3  # asked per request
    sent = requests_sent(network_browser)
    assert not [r["url"] for r in sent if key in r["url"]]
    streams = [r["url"] for r in sent if r["type"] == "EventSource"]
    # the 202's sse_endpoint, then (resuming by id) the one job status gives: each with a stream token
    assert len(streams) == 2 and all(f"/prompt-generation-status/{job_id}?token=" in u for u in streams), streams
