"""The V2 flow in a real browser: a person's Manual Test Flow, live progress, reload, retry."""

from __future__ import annotations

from collections import Counter

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

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
    # live rows are redrawn as messages arrive: an element read mid-redraw is looked up again
    return WebDriverWait(driver, seconds, ignored_exceptions=(StaleElementReferenceException,))


def _new_job(driver, base_url: str, personas: int, modes: list[str] | None = None, shots: bool = False) -> None:
    driver.get(base_url + "/")
    _wait(driver).until(EC.element_to_be_clickable((By.ID, "scenario"))).send_keys(DOCUMENT)
    driver.find_element(By.ID, "analyze").click()
    _wait(driver).until(EC.presence_of_element_located((By.ID, "tpl-title")))
    count = driver.find_element(By.ID, "persona-count")
    count.clear()
    count.send_keys(str(personas))
    driver.find_element(By.ID, "generate-personas").click()
    cards = _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#personas li") or None)
    assert len(cards) == personas
    assert all("No prompt yet" in c.text for c in cards)
    for card, mode in zip(cards, modes or [], strict=False):
        Select(card.find_element(By.TAG_NAME, "select")).select_by_value(mode)
    if shots:
        screenshot(driver, "1-template-and-personas")
    driver.find_element(By.ID, "start").click()
    _wait(driver).until(EC.presence_of_element_located((By.ID, "job-status")))


def _rows(driver) -> dict[str, str]:
    return {li.get_attribute("data-persona-id"): li.get_attribute("class")
            for li in driver.find_elements(By.CSS_SELECTOR, "#job-personas > li")}


def test_the_whole_flow_with_live_progress(browser, live_system):
    _new_job(browser, live_system.base_url, 3, ["learn_mode", "try_mode", "assess_mode"], shots=True)
    # live: a persona is seen being generated before the job ends
    processing = _wait(browser).until(
        lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "#job-personas .state")
                   if e.text.startswith("Generating prompt for")] or None)
    assert processing
    screenshot(browser, "2-live-progress")
    _wait(browser, 60).until(EC.text_to_be_present_in_element((By.ID, "job-status"), "completed"))
    assert browser.find_element(By.ID, "summary").text.startswith("3 of 3 done · 3 successful · 0 failed")
    assert int(browser.find_element(By.ID, "progress").get_attribute("value")) == 3

    first = browser.find_element(By.CSS_SELECTOR, "#job-personas > li")
    first.find_element(By.TAG_NAME, "summary").click()
    prompt = _wait(browser).until(lambda d: (lambda p: p if p.text and p.text != "Loading…" else None)(
        first.find_element(By.CSS_SELECTOR, "pre.prompt")))
    assert len(prompt.text) > 100
    assert "characters · mode Learn" in first.text
    first.find_element(By.XPATH, ".//button[text()='Create avatar interaction']").click()
    _wait(browser).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#job-personas .interaction"),
                                                          "uses the persona's prompt"))
    _wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#timeline table.events tbody tr")))
    types = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#timeline tbody td:nth-child(3)")]
    assert types[0] == "job.requested" and types[-1] == "job.completed"
    screenshot(browser, "3-results")

    browser.get(live_system.base_url + "/#/jobs")
    link = _wait(browser).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "table.jobs a")))
    screenshot(browser, "4-jobs")
    link.click()
    _wait(browser).until(EC.text_to_be_present_in_element((By.ID, "job-status"), "completed"))


def test_reload_mid_job_shows_each_persona_exactly_once(browser, live_system):
    _new_job(browser, live_system.base_url, 6)
    _wait(browser).until(lambda d: "completed" in " ".join(_rows(d).values()))
    browser.refresh()  # a fresh page load in the middle of the job
    _wait(browser, 60).until(EC.text_to_be_present_in_element((By.ID, "job-status"), "completed"))
    rows = _rows(browser)
    assert len(rows) == 6 and all("completed" in c for c in rows.values())
    browser.find_element(By.CSS_SELECTOR, "details.card summary").click()
    lines = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#live-log li")]
    ready = Counter(line.split(":")[0] for line in lines if line.endswith("Prompt ready"))
    assert len(ready) == 6 and set(ready.values()) == {1}, lines  # none missing, none twice
    assert sum(1 for line in lines if line == "Results are in") == 1


def test_a_failed_persona_is_retried_from_the_page(browser, live_system):
    live_system.script_llm([{"fault": "ok"}, {"fault": "ok"}, {"fault": "auth"}])  # template, personas, 1st prompt
    _new_job(browser, live_system.base_url, 2)
    _wait(browser, 60).until(EC.text_to_be_present_in_element((By.ID, "job-status"), "completed"))
    failed = browser.find_element(By.CSS_SELECTOR, "#job-personas > li.failed")
    assert "Failed: LLM rejected the credentials" in failed.text
    retry = _wait(browser).until(EC.element_to_be_clickable((By.ID, "retry-failed")))
    screenshot(browser, "5-failed-persona")
    old_url = browser.current_url
    retry.click()
    _wait(browser).until(lambda d: d.current_url != old_url)
    _wait(browser, 60).until(EC.text_to_be_present_in_element((By.ID, "job-status"), "completed"))
    assert browser.find_element(By.ID, "summary").text.startswith("1 of 1 done · 1 successful")
    assert "retry of" in browser.find_element(By.TAG_NAME, "main").text


def test_the_page_reads_well_on_a_phone(browser, live_system):
    browser.set_window_size(390, 844)
    browser.get(live_system.base_url + "/")
    _wait(browser).until(EC.presence_of_element_located((By.ID, "scenario")))
    overflowing = browser.execute_script(
        "const w = document.documentElement.clientWidth;"
        "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > w + 0.5)"
        "  .map(e => e.tagName + (e.id ? '#' + e.id : ''))")
    assert not overflowing, f"wider than the screen: {overflowing}"
    labels = browser.execute_script(
        "return [...document.querySelectorAll('textarea, input, select')].every(e => e.labels && e.labels.length)")
    assert labels, "every form field has a label"
    screenshot(browser, "6-phone")
