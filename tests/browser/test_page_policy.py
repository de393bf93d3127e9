"""The page's Content-Security-Policy in a real browser: it is enforced (an injected inline script
does not run, and the violation is seen, as every browser test would see one), and the API docs
pages run under their own policy without a violation."""

from __future__ import annotations

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import csp_violations

pytestmark = pytest.mark.timeout(60)

INJECT_INLINE_SCRIPT = """
const s = document.createElement("script");
s.textContent = "window.__injectedRan = true";
document.head.append(s);
"""


def _csp_console_lines(driver) -> list[str]:
    """The browser console's lines about the policy (reading the console empties it)."""
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def test_an_inline_script_in_the_page_is_refused_and_the_violation_is_seen(browser, live_system):
    assert "script-src 'self'" in httpx.get(f"{live_system.base_url}/").headers["content-security-policy"]
    browser.get(live_system.base_url + "/")
    WebDriverWait(browser, 30).until(EC.element_to_be_clickable((By.ID, "scenario")))  # the page's own scripts ran
    assert csp_violations(browser) == [] and _csp_console_lines(browser) == []

    browser.execute_script(INJECT_INLINE_SCRIPT)
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return window.__cspViolations.length > 0"))
    assert browser.execute_script("return window.__injectedRan === undefined")
    assert csp_violations(browser) == ["script-src-elem refused inline"]
    assert _csp_console_lines(browser)  # the console says so too (and is now empty for the fixture's check)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_pages_render_and_break_no_rule_of_their_policy(browser, live_system, path):
    """Their inline scripts are allowed by hash; Swagger UI and ReDoc come from the gateway itself,
    so the page renders the API's title with no internet."""
    browser.get(live_system.base_url + path)
    titled = ".swagger-ui .info, .api-info"
    # the page renders in steps: an element found may be replaced before its text is read
    WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, titled) if e.text.startswith("promptgen")])
    assert csp_violations(browser) == []
    assert _csp_console_lines(browser) == []
