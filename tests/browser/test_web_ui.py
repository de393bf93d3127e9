"""The V2 flow in a real browser: a person's Manual Test Flow, live progress, reload, lost
connection, retry, cancel, and a phone-sized screen."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser.conftest import screenshot
from tests.sse_client import read_sse

pytestmark = pytest.mark.timeout(120)

DOCUMENT = """# Delivering difficult news
A physician tells a family that the treatment has not worked.

## Learning objectives
- Deliver bad news clearly
- Respond to emotion with empathy

## Roles
- Physician: the learner
- Family member - the patient's adult child
"""


def _wait(driver, seconds: float = 30) -> WebDriverWait:
    # live rows change as messages arrive: an element read mid-change is looked up again
    return WebDriverWait(driver, seconds, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))


def _status(driver, status: str, seconds: float = 60) -> None:
    _wait(driver, seconds).until(EC.text_to_be_present_in_element((By.ID, "job-status"), status))


def _sign_in(driver, key: str) -> None:
    field = _wait(driver).until(EC.element_to_be_clickable((By.ID, "api-key")))
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "sign-in").click()


def _new_job(driver, base_url: str, personas: int, modes: list[str] | None = None, shots: bool = False,
             key: str | None = None, before_start: Callable[[], None] | None = None,
             before_generate: Callable[[], None] | None = None) -> str:
    """(Sign in with ``key``,) scenario -> template -> personas -> modes -> "Create Avatar Interactions";
    returns the job id."""
    driver.get(base_url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(base_url + "/")
    if key is not None:
        _sign_in(driver, key)
    _wait(driver).until(EC.element_to_be_clickable((By.ID, "scenario"))).send_keys(DOCUMENT)
    driver.find_element(By.ID, "analyze").click()
    _wait(driver).until(EC.text_to_be_present_in_element((By.ID, "tpl-title"), ""))
    assert "No personas yet" in driver.find_element(By.ID, "persona-step").text
    count = driver.find_element(By.ID, "persona-count")
    count.clear()
    count.send_keys(str(personas))
    if before_generate is not None:
        before_generate()
    driver.find_element(By.ID, "generate-personas").click()
    cards = _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#personas > li") or None)
    assert len(cards) == personas
    assert all("No prompt yet" in c.text for c in cards)
    for card, mode in zip(cards, modes or [], strict=False):
        Select(card.find_element(By.TAG_NAME, "select")).select_by_value(mode)
    if shots:
        driver.execute_script("document.getElementById('persona-step').scrollIntoView()")
        screenshot(driver, "1-template-and-personas")
    if before_start is not None:
        before_start()
    driver.find_element(By.ID, "start").click()
    _wait(driver).until(EC.url_contains("#/jobs/"))
    _wait(driver).until(EC.presence_of_element_located((By.ID, "job-status")))
    return driver.current_url.rsplit("/", 1)[1]


def _rows(driver) -> dict[str, str]:
    return {li.get_attribute("data-persona-id"): li.get_attribute("class")
            for li in driver.find_elements(By.CSS_SELECTOR, "#job-personas > li")}


def _log(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#live-log li')].map(li => li.textContent)")


def _exactly_once(lines: list[str], personas: int) -> None:
    """Every persona's final message is shown once, none missing, and the results once."""
    ready = Counter(line.split(":")[0] for line in lines if line.endswith("Prompt ready"))
    assert len(ready) == personas and set(ready.values()) == {1}, lines
    assert lines.count("Results are in") == 1, lines
    assert len(lines) == len(set(lines)), lines  # each persona's processing line once, too


def test_the_whole_flow_with_live_progress(browser, live_system):
    live_system.one_slow_prompt(3)
    job_id = _new_job(browser, live_system.base_url, 3, ["learn_mode", "try_mode", "assess_mode"], shots=True)
    # live: a persona is seen being generated, with its name, before the job ends
    _wait(browser).until(lambda d: any(e.text.startswith("Generating prompt for ")
                                       for e in d.find_elements(By.CSS_SELECTOR, "#job-personas .state")))
    assert browser.find_element(By.ID, "job-status").text == "processing"
    assert browser.find_element(By.ID, "cancel").is_displayed()
    screenshot(browser, "2-live-progress")
    _status(browser, "completed")
    assert browser.find_element(By.ID, "summary").text == "3 of 3 done · 3 successful · 0 failed"
    assert int(browser.find_element(By.ID, "progress").get_attribute("value")) == 3
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    assert not browser.find_element(By.ID, "retry-failed").is_displayed()
    assert browser.find_element(By.ID, "job-title").text == "Delivering difficult news"

    # results: template data, persona details, each prompt in full with its length and mode
    results = _wait(browser).until(EC.visibility_of_element_located((By.ID, "results")))
    assert "3 of 3 prompts generated" in results.text and "Learning objectives" in results.text
    first = browser.find_element(By.CSS_SELECTOR, "#job-personas > li")
    pid = first.get_attribute("data-persona-id")
    persona = httpx.get(f"{live_system.base_url}/scenario/personas/{pid}").json()
    assert f"{persona['age']} · {persona['role']} · {persona['archetype']}" in first.text
    length = f"{len(persona['system_prompt']):,}"
    _wait(browser).until(lambda d: f"Prompt: {length} characters · Learn mode" in first.text)
    first.find_element(By.CSS_SELECTOR, ".show-prompt summary").click()
    prompt = first.find_element(By.CSS_SELECTOR, ".show-prompt pre.prompt")
    _wait(browser).until(lambda d: prompt.get_attribute("data-loaded"))
    assert prompt.get_property("textContent") == persona["system_prompt"]  # in full
    assert f"{length} characters · mode Learn" in first.text

    # an avatar interaction linked to the persona, and the prompt it will use
    first.find_element(By.CSS_SELECTOR, ".make-interaction summary").click()
    first.find_element(By.CSS_SELECTOR, f"#i-lang-{pid}").send_keys(", fr")
    first.find_element(By.CSS_SELECTOR, ".interaction-form button").click()
    used = _wait(browser).until(lambda d: first.find_elements(By.CSS_SELECTOR, ".interaction pre.prompt") or None)[0]
    assert used.get_property("textContent") == persona["system_prompt"]
    assert "Learn mode · en, fr" in first.find_element(By.CSS_SELECTOR, ".interaction").text
    browser.execute_script("arguments[0].open = false", first.find_element(By.CSS_SELECTOR, ".show-prompt"))
    browser.execute_script("window.scrollTo(0, arguments[0].getBoundingClientRect().top + scrollY - 80)", first)
    screenshot(browser, "3-results")

    # the audit timeline, from job.requested to job.completed
    _wait(browser).until(lambda d: "job.completed" in d.find_element(By.ID, "timeline").text)
    types = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#timeline tbody td:nth-child(3)")]
    assert types[0] == "job.requested" and types[-1] == "job.completed"

    # the jobs page lists it; opening it shows it again, finished, without following a stream
    browser.find_element(By.LINK_TEXT, "Jobs").click()
    link = _wait(browser).until(EC.element_to_be_clickable((By.CSS_SELECTOR, f"a[href='#/jobs/{job_id}']")))
    row = link.find_element(By.XPATH, "./ancestor::tr")
    assert "completed" in row.text and row.text.endswith("3 3 0")
    _wait(browser).until(lambda d: "Delivering difficult news" in row.text)
    screenshot(browser, "4-jobs")
    link.send_keys(Keys.ENTER)  # keyboard
    _status(browser, "completed")
    assert len(_rows(browser)) == 3


def test_reload_mid_job_shows_each_persona_exactly_once(browser, live_system):
    live_system.one_slow_prompt(6)
    _new_job(browser, live_system.base_url, 6)
    _wait(browser).until(lambda d: "completed" in " ".join(_rows(d).values()))
    assert browser.find_element(By.ID, "job-status").text == "processing"  # still running
    browser.refresh()  # a fresh page load in the middle of the job: resumes after the last message seen
    _status(browser, "completed")
    rows = _rows(browser)
    assert len(rows) == 6 and all("completed" in c for c in rows.values())
    assert browser.find_element(By.ID, "summary").text == "6 of 6 done · 6 successful · 0 failed"
    _exactly_once(_log(browser), 6)


def test_a_lost_connection_resumes_where_it_was(browser, live_system):
    live_system.one_slow_prompt(8)  # still running when the gateway dies, however busy the machine
    _new_job(browser, live_system.base_url, 8)
    browser.execute_script("""
      window.__connection = [];
      const c = document.getElementById('connection');
      new MutationObserver(() => window.__connection.push(c.className)).observe(c, {attributes: true});""")
    _wait(browser).until(lambda d: "completed" in " ".join(_rows(d).values()))
    assert browser.find_element(By.ID, "job-status").text == "processing"
    os.kill(live_system.gateway_pid(), signal.SIGKILL)  # the connection drops; `up` restarts the gateway
    _wait(browser).until(lambda d: "reconnecting" in d.find_element(By.ID, "connection").get_attribute("class"))
    assert "Connection lost, reconnecting" in browser.find_element(By.ID, "connection").text
    assert live_system.healthy(30)
    _status(browser, "completed")  # the browser reconnected by itself with Last-Event-ID
    assert "connection live" in browser.execute_script("return window.__connection")[-3:]  # it was live again
    assert browser.find_element(By.ID, "summary").text == "8 of 8 done · 8 successful · 0 failed"
    _exactly_once(_log(browser), 8)


def test_a_failed_persona_is_retried_from_the_page(browser, live_system):
    live_system.script_llm([{"fault": "ok"}, {"fault": "ok"}, {"fault": "auth"}])  # template, personas, 1st prompt
    job_id = _new_job(browser, live_system.base_url, 2)
    _status(browser, "completed")
    failed = browser.find_element(By.CSS_SELECTOR, "#job-personas > li.failed")
    failed_id = failed.get_attribute("data-persona-id")
    assert "Failed" in failed.find_element(By.CLASS_NAME, "state").text
    assert "LLM rejected the credentials" in failed.find_element(By.CSS_SELECTOR, "p.error").text
    assert browser.find_element(By.ID, "summary").text == "2 of 2 done · 1 successful · 1 failed"
    assert "1 of 2 prompts generated · 1 failed" in browser.find_element(By.ID, "results").text
    retry = _wait(browser).until(EC.element_to_be_clickable((By.ID, "retry-failed")))
    assert retry.text == "Retry failed (1)"
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot(browser, "5-failed-persona")
    retry.click()
    _wait(browser).until(lambda d: job_id not in d.current_url)
    _status(browser, "completed")
    assert browser.find_element(By.ID, "summary").text == "1 of 1 done · 1 successful · 0 failed"
    assert list(_rows(browser)) == [failed_id]  # a new job for exactly the failed persona
    assert f"retry of job {job_id[:8]}" in browser.find_element(By.TAG_NAME, "main").text
    retried = browser.current_url
    browser.get(f"{live_system.base_url}/#/jobs/{job_id}")  # retried again from the first job's page
    _wait(browser).until(lambda d: d.current_url != retried)
    _wait(browser).until(EC.element_to_be_clickable((By.ID, "retry-failed"))).click()
    _wait(browser).until(lambda d: d.current_url == retried)  # the same retry, not another


def test_a_running_job_is_cancelled_from_the_page(browser, live_system):
    _new_job(browser, live_system.base_url, 12)
    _wait(browser).until(EC.element_to_be_clickable((By.ID, "cancel"))).click()
    _status(browser, "cancelled")
    _wait(browser).until(lambda d: "prompts generated" in d.find_element(By.ID, "results").text)
    summary = browser.find_element(By.ID, "summary").text
    assert "cancelled" in summary and not summary.startswith("12 of 12 done · 12 successful"), summary
    states = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#job-personas .state")]
    assert len(states) == 12 and "Cancelled" in states
    assert not browser.find_element(By.ID, "cancel").is_displayed()


def test_errors_are_shown_to_the_user(browser, live_system):
    browser.get(live_system.base_url + "/#/jobs/no-such-job")
    _wait(browser).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Job not available"))
    assert browser.find_element(By.CSS_SELECTOR, "[role=alert]").text  # the server's `detail`
    browser.get(live_system.base_url + "/#/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    _wait(browser).until(EC.element_to_be_clickable((By.ID, "scenario"))).send_keys("   ")
    browser.find_element(By.ID, "analyze").click()
    alert = _wait(browser).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "form [role=alert]")))
    assert alert.text and "HTTP" not in alert.text


@pytest.mark.parametrize("page", ["/", "/#/jobs", "job"])
def test_the_page_reads_well_on_a_phone(browser, live_system, page):
    if page == "job":
        _new_job(browser, live_system.base_url, 2)
        _status(browser, "completed")
    browser.set_window_size(390, 844)
    if page != "job":
        browser.get(live_system.base_url + page)
    _wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "main h1")))
    _wait(browser).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "main .loading"))
    overflowing = browser.execute_script(
        "const w = document.documentElement.clientWidth;"
        "return [...document.querySelectorAll('body *')]"
        "  .filter(e => !e.closest('.table-wrap') && e.getBoundingClientRect().right > w + 0.5)"
        "  .map(e => e.tagName + (e.id ? '#' + e.id : ''))")
    assert not overflowing, f"wider than the screen: {overflowing}"
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('textarea, input, select, progress')]"
        "  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id)")
    assert not unlabelled, f"form fields without a label: {unlabelled}"
    if page == "job":
        screenshot(browser, "6-phone")


def test_a_long_history_is_shown_a_page_at_a_time(browser, live_system):
    """An 80-persona job has 240-odd events: the page shows the first 200, and the rest on demand."""

    async def finished_job() -> str:
        async with httpx.AsyncClient(base_url=live_system.base_url, timeout=60) as client:
            template_id = (await client.post("/scenario/analyze-scenario-enhanced",
                                             json={"scenario_document": DOCUMENT})).json()["template_id"]
            ids = []
            for _ in range(4):
                r = await client.post("/scenario/generate-personas", json={
                    "template_id": template_id, "persona_type": "assess_mode_character", "count": 20})
                ids += [p["id"] for p in r.json()["personas"]]
            job = (await client.post("/scenario/v2/generate-final-prompts", json={
                "template_id": template_id, "persona_ids": ids,
                "mode_mapping": dict.fromkeys(ids, "learn_mode")})).json()
            await read_sse(client, job["sse_endpoint"])  # to its end
            return job["job_id"]

    job_id = asyncio.run(finished_job())
    total = len(httpx.get(f"{live_system.base_url}/scenario/v2/jobs/{job_id}/events",
                          params={"limit": 1000}).json()["events"])
    assert total > 200
    browser.get(f"{live_system.base_url}/#/jobs/{job_id}")
    more = _wait(browser).until(EC.visibility_of_element_located((By.ID, "more-events")))
    rows = "#timeline tbody tr"
    assert len(browser.find_elements(By.CSS_SELECTOR, rows)) == 200
    more.click()
    _wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == total)
    assert not browser.find_element(By.ID, "more-events").is_displayed()
    types = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#timeline tbody td:nth-child(3)")]
    assert types[0] == "job.requested" and types[-1] == "job.completed"
    assert f"{total} events shown" in browser.find_element(By.ID, "timeline").text


# Before any script of the page: the next request to the path sessionStorage names reaches the
# server, and its answer is lost on the way back (as on a dropped connection).
_LOSE_ONE_ANSWER = """
const realFetch = window.fetch.bind(window);
window.fetch = async (url, options) => {
  const response = await realFetch(url, options);
  const lose = sessionStorage.getItem("lose-answer");
  if (lose && String(url).endsWith(lose)) {
    sessionStorage.removeItem("lose-answer");
    sessionStorage.setItem("lost-answer", await response.text());
    throw new TypeError("Failed to fetch");
  }
  return response;
};
"""


def test_asking_again_after_a_lost_answer_gives_what_the_first_ask_made(browser, live_system):
    """The page names the personas and the job it asks for (an Idempotency-Key per request):
    clicking again after the answer was lost gives the same personas and the same job, not a
    second round of LLM calls."""
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _LOSE_ONE_ANSWER})
    lost: list = []

    def lose_the_answer(path: str, button: str) -> Callable[[], None]:
        def click() -> None:
            browser.execute_script("sessionStorage.setItem('lose-answer', arguments[0])", path)
            browser.find_element(By.ID, button).click()
            alert = _wait(browser).until(
                EC.visibility_of_element_located((By.CSS_SELECTOR, "#persona-step [role=alert]")))
            assert "cannot be reached" in alert.text
            lost.append(browser.execute_script("return JSON.parse(sessionStorage.getItem('lost-answer'))"))
        return click

    job_id = _new_job(browser, live_system.base_url, 2,  # each button clicked again after its lost answer
                      before_generate=lose_the_answer("/scenario/generate-personas", "generate-personas"),
                      before_start=lose_the_answer("/scenario/v2/generate-final-prompts", "start"))
    made, started = lost
    assert started["job_id"] == job_id
    assert set(_rows(browser)) == {p["id"] for p in made["personas"]}
    _status(browser, "completed")
