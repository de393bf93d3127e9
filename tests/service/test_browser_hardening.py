"""What a browser is told, and what a page on another site cannot make the gateway do: security
headers on every answer, a Content-Security-Policy the web UI keeps to, a Host allow-list (no DNS
rebinding), and no state change from a cross-site request or a form body.

The gateway, projector and generator run on the in-memory adapters: all of this is the gateway's,
decided before a route runs or in it, and "nothing changed" is "nothing was published"."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

import httpx
import pytest
from asgi_lifespan import LifespanManager
from structlog.testing import capture_logs

from services.gateway.allowed_hosts import HostsNotConfigured, host_allowed
from services.gateway.app import STATIC, create_app
from services.runtime.settings import Settings
from services.testing import ManualClock, MemoryEventLog, memory_read_models
from tests.flows import create_personas, create_template, cycle_modes
from tests.service.providers import ScriptedProvider

DOCUMENT = "# Renewal\nA rep renews a contract.\n\n## Roles\n- Sales rep: the learner\n- Buyer - procurement lead"
EVERY_RESPONSE = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}
FORM_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain",
              "text/plain;charset=UTF-8"]


def _directives(policy: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in (part.strip() for part in policy.split(";")) if d}


def _has_security_headers(r: httpx.Response) -> None:
    for name, value in EVERY_RESPONSE.items():
        assert r.headers.get(name) == value, f"{r.request.method} {r.request.url.path} ({r.status_code}): {name}"


async def test_every_answer_carries_the_security_headers_and_pages_a_strict_policy(gateway):
    answers = [
        await gateway.get("/"),
        await gateway.get("/static/js/app.js"),
        await gateway.get("/scenario/v2/jobs"),
        await gateway.get("/scenario/v2/job-status/no-such-job"),  # 404
        await gateway.post("/scenario/analyze-scenario-enhanced", json={}),  # 422
        await gateway.post("/scenario/analyze-scenario-enhanced", content=b"x" * (3 << 20),
                           headers={"content-type": "application/json"}),  # 413, before the app
        await gateway.get("/livez"),
        await gateway.get("/openapi.json"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 200, 404, 422, 413, 200, 200]
    for r in answers:
        _has_security_headers(r)
    page = answers[0]
    assert page.headers["content-type"].startswith("text/html")
    policy = _directives(page.headers["content-security-policy"])
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no other host
    assert policy["default-src"] == ["'self'"] and policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert policy["form-action"] == ["'self'"] and policy["object-src"] == ["'none'"]


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts: list[str] = []
        self.handlers: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [f"<{tag} {name}>" for name, _ in attrs if name.startswith("on")]
        self.handlers += [f"<{tag} {name}>" for name, value in attrs if (value or "").startswith("javascript:")]
        self._in_inline_script = tag == "script" and "src" not in dict(attrs)
        if self._in_inline_script:
            self.inline_scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_inline_script = False


def test_the_page_has_no_inline_script_and_no_inline_handler():
    markup = _Markup()
    markup.feed((STATIC / "index.html").read_text())
    assert markup.inline_scripts == [] and markup.handlers == []
    for script in sorted((STATIC / "js").glob("*.js")):
        code = script.read_text()
        # what 'script-src self' refuses: code from strings, and handlers written into markup
        for refused in (r"\beval\(", r"new Function\(", r"\.innerHTML\b", r"setAttribute\(\s*[\"']on",
                        r"javascript:", r"setTimeout\(\s*[\"'`]", r"setInterval\(\s*[\"'`]"):
            assert not re.search(refused, code), f"{script.name}: {refused}"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_the_api_docs_have_their_own_policy_allowing_exactly_their_inline_scripts(gateway, path):
    r = await gateway.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    _has_security_headers(r)
    policy = _directives(r.headers["content-security-policy"])
    inline = re.findall(rb"<script>(.*?)</script>", r.content, re.DOTALL)
    hashes = {f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline}
    assert {s for s in policy["script-src"] if s.startswith("'sha256-")} == hashes
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["connect-src"] == ["'self'"]
    assert not [src for name, values in policy.items() if name != "img-src" for src in values if "://" in src]
    assert [src for src in policy["img-src"] if "://" in src] == ["https://cdn.redoc.ly"]  # ReDoc's logo
    for src in re.findall(rb'<(?:script src|link [^>]*href)="([^"]+)"', r.content):
        assert src.startswith(b"/docs/assets/"), src  # Swagger UI and ReDoc come from this gateway
        asset = await gateway.get(src.decode())
        assert asset.status_code == 200 and len(asset.content) > 1000, src
    _has_security_headers(await gateway.get("/docs/assets/../../etc/passwd"))
    assert (await gateway.get("/docs/assets/core.py")).status_code == 404  # the package's files: these only


# --- the Host allow-list ----------------------------------------------------------------------

@pytest.mark.parametrize("host,allowed", [
    ("127.0.0.1:9000", True), ("localhost", True), ("LOCALHOST:1", True), ("[::1]:9000", True),
    ("evil.example", False), ("127.0.0.1.evil.example", False), ("evil@127.0.0.1", False),
    ("127.0.0.1:9000/x", False), ("", False), (None, False), ("[::2]:9000", False),
])
def test_the_loopback_names_are_the_default(host, allowed):
    assert host_allowed(host, ["127.0.0.1", "localhost", "[::1]"]) is allowed


@pytest.mark.parametrize("host,allowed", [
    ("api.example.com", True), ("a.b.example.com:443", True), ("example.com", False), ("badexample.com", False),
    ("promptgen.internal", True), ("promptgen.internal.evil", False),
])
def test_named_hosts_and_subdomain_patterns(host, allowed):
    assert host_allowed(host, ["*.example.com", "promptgen.internal"]) is allowed


async def test_a_request_for_another_host_is_refused_and_publishes_nothing(gateway, memory_log):
    template_id = await create_template(gateway, DOCUMENT)
    personas = await create_personas(gateway, template_id, 2)
    before = await memory_log.last_seq()
    for method, path, body in [
        ("POST", "/scenario/v2/generate-final-prompts",
         {"template_id": template_id, "persona_ids": [p["id"] for p in personas],
          "mode_mapping": cycle_modes([p["id"] for p in personas])}),
        ("POST", "/scenario/analyze-scenario-enhanced", {"scenario_document": DOCUMENT}),
        ("GET", "/scenario/v2/jobs", None),
        ("GET", "/", None),
    ]:
        r = await gateway.request(method, path, json=body, headers={"Host": "rebound.evil.example:9000"})
        assert r.status_code == 400, (path, r.text)
        assert r.json() == {"detail": "This server does not answer for the host 'rebound.evil.example:9000'",
                            "code": "host_not_allowed", "field": "Host"}
        _has_security_headers(r)
    assert await memory_log.last_seq() == before
    for probe in ("/livez", "/readyz"):  # a load balancer's or kubelet's probe names no host we know
        assert (await gateway.get(probe, headers={"Host": "10.1.2.3:9000"})).status_code == 200


async def _gateway_with(settings: Settings) -> LifespanManager:
    app = create_app(settings, event_log=MemoryEventLog(settings), models=memory_read_models(),
                     provider=ScriptedProvider(), clock=ManualClock())
    return LifespanManager(app)


async def test_bound_beyond_loopback_the_gateway_needs_its_names_or_an_explicit_star():
    with pytest.raises(HostsNotConfigured, match="PROMPTGEN_ALLOWED_HOSTS is not set"):
        async with await _gateway_with(Settings(provider="offline", host="0.0.0.0", allowed_hosts=None)):
            pass

    named = Settings(provider="offline", host="0.0.0.0", allowed_hosts="promptgen.example.com", auth="auto")
    with pytest.raises(Exception, match="no active API key"):  # past the host check: the auth check comes next
        async with await _gateway_with(named):
            pass

    with capture_logs() as logs, pytest.raises(Exception, match="no active API key"):
        async with await _gateway_with(named.model_copy(update={"allowed_hosts": "*"})):
            pass
    assert any(e["event"] == "host_check_off" and e["log_level"] == "warning" for e in logs)


def test_the_allowed_hosts_setting_names_what_is_wrong():
    with pytest.raises(ValueError, match=r"PROMPTGEN_ALLOWED_HOSTS: 'https://promptgen.example.com' is not"):
        Settings(allowed_hosts="localhost, https://promptgen.example.com")
    assert Settings(allowed_hosts=" Promptgen.Example.com ,[::1] ").allowed_hosts == "promptgen.example.com,[::1]"
    assert Settings(allowed_hosts="10.0.0.7,fd00::7").allowed_hosts == "10.0.0.7,[fd00::7]"  # a pod's IP, as given


# --- no state change from another site ----------------------------------------------------------

async def _targets(gateway) -> list[tuple[str, dict]]:
    """A state-changing request to each kind of route: a job, a template, personas, a cancel."""
    template_id = await create_template(gateway, DOCUMENT)
    personas = await create_personas(gateway, template_id, 2)
    modes = cycle_modes([p["id"] for p in personas])
    r = await gateway.post("/scenario/v2/generate-final-prompts",
                           json={"template_id": template_id, "persona_ids": list(modes), "mode_mapping": modes})
    assert r.status_code == 202, r.text
    return [
        ("/scenario/v2/generate-final-prompts", {"template_id": template_id, "persona_ids": list(modes),
                                                  "mode_mapping": modes}),
        ("/scenario/analyze-scenario-enhanced", {"scenario_document": DOCUMENT}),
        ("/scenario/generate-personas", {"template_id": template_id, "persona_type": "try_mode_character",
                                         "count": 1}),
        ("/scenario/generate-final-prompts", {"template_id": template_id, "persona_ids": list(modes),
                                              "mode_mapping": modes}),  # V1
        (f"/scenario/v2/jobs/{r.json()['job_id']}/cancel", {}),  # the job is still running: held below
    ]


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://evil.example"},  # an older browser: Origin alone
    {"Sec-Fetch-Site": "cross-site"},  # no Origin, but the browser knows
    {"Origin": "null"},  # a sandboxed frame, a file: page
    {"Origin": "http://localhost:8080"},  # same host, another port: another origin
], ids=["both", "origin", "sec-fetch-site", "null-origin", "other-port"])
async def test_a_cross_site_request_changes_nothing(running, gateway, memory_log, provider, headers):
    provider.hold()  # the job stays running, so a cancel would change it
    targets = await _targets(gateway)
    before = await memory_log.last_seq()
    for path, body in targets:
        for content_type, content in [("application/x-www-form-urlencoded", b"scenario_document=x"),
                                      ("application/json", httpx.Request("POST", "/", json=body).content)]:
            r = await gateway.post(path, content=content, headers={**headers, "Content-Type": content_type})
            assert r.status_code == 403, (path, r.text)
            assert r.json()["code"] == "cross_site_request" and r.json()["field"] in ("Origin", "Sec-Fetch-Site")
            _has_security_headers(r)
    assert await memory_log.last_seq() == before


@pytest.mark.parametrize("content_type", FORM_TYPES)
async def test_a_form_body_is_refused_even_from_this_origin(running, gateway, memory_log, provider, content_type):
    provider.hold()
    targets = await _targets(gateway)
    before = await memory_log.last_seq()
    for path, body in targets:
        json_text = httpx.Request("POST", "/", json=body).content  # JSON sent as text/plain: the classic trick
        r = await gateway.post(path, content=json_text,
                               headers={"Content-Type": content_type, "Origin": "http://localhost"})
        assert r.status_code == 415, (path, r.text)
        assert r.json()["code"] == "unsupported_media_type" and r.json()["field"] == "Content-Type"
    assert await memory_log.last_seq() == before


async def test_the_seeds_fetch_without_a_content_type_works_from_this_origin_only(running, gateway, memory_log):
    """The specification's frontend posts a string body with no headers: the browser declares it
    text/plain. From this gateway's own page (Sec-Fetch-Site, which no page can set) it is JSON;
    from anywhere else it stays a 415 (or the cross-site 403), and nothing is published."""
    targets = await _targets(gateway)
    path, body = next((p, b) for p, b in targets if p == "/scenario/v2/generate-final-prompts")
    text = httpx.Request("POST", "/", json=body).content
    plain = {"Content-Type": "text/plain;charset=UTF-8"}
    before = await memory_log.last_seq()
    for others in ({}, {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "none"}):
        r = await gateway.post(path, content=text, headers={**plain, **others, "Origin": "http://localhost"})
        assert r.status_code == 415, (others, r.text)
    r = await gateway.post(path, content=text, headers={**plain, "Sec-Fetch-Site": "cross-site",
                                                        "Origin": "https://evil.example"})
    assert r.status_code == 403, r.text
    assert await memory_log.last_seq() == before
    r = await gateway.post(path, content=text, headers={**plain, "Sec-Fetch-Site": "same-origin",
                                                        "Origin": "http://localhost"})
    assert r.status_code == 202, r.text
    assert r.json()["persona_count"] == len(body["persona_ids"])
    assert await memory_log.last_seq() > before


async def test_this_origin_and_clients_without_a_browser_still_work(gateway):
    """The web UI (same origin, JSON), and curl or another service (no Origin at all)."""
    same_origin = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    r = await gateway.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": DOCUMENT},
                           headers=same_origin)
    assert r.status_code == 201, r.text
    r = await gateway.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": DOCUMENT},
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text
    r = await gateway.get("/scenario/v2/jobs", headers={"Origin": "https://evil.example",
                                                         "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200  # reads change nothing (and without CORS the other site cannot read them)



async def test_an_unhandled_exception_is_a_500_error_body_with_the_headers_and_one_log_line():
    settings = Settings(provider="offline")
    app = create_app(settings, event_log=MemoryEventLog(settings), models=memory_read_models(),
                     provider=ScriptedProvider(), clock=ManualClock())

    @app.get("/scenario/fails")
    async def fails() -> None:
        raise RuntimeError("mongodb://user:hunter2@db/ said no")  # what a client must never read

    async with LifespanManager(app) as running:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=running.app),
                                     base_url="http://localhost") as client:
            with capture_logs() as logs:
                r = await client.get("/scenario/fails")
    assert r.status_code == 500 and r.json()["code"] == "internal_error"
    assert "hunter2" not in r.text
    _has_security_headers(r)
    failures = [e for e in logs if e["event"] == "unhandled_error"]
    assert len(failures) == 1 and failures[0]["path"] == "/scenario/fails" and failures[0]["exc_info"]
    assert any(e["event"] == "http_request" and e.get("status") == 500 for e in logs), logs


async def test_a_body_without_a_content_type_is_told_to_say_it_is_json(running, gateway, memory_log):
    """Not a 422 for the whole body: the client learns what to add, and nothing is published."""
    targets = await _targets(gateway)
    before = await memory_log.last_seq()
    for path, body in [(p, b) for p, b in targets if b]:  # the routes that read a body
        request = gateway.build_request("POST", path, content=httpx.Request("POST", "/", json=body).content)
        assert "content-type" not in request.headers
        r = await gateway.send(request)
        assert r.status_code == 415, (path, r.text)
        assert r.json()["field"] == "Content-Type" and "application/json" in r.json()["detail"]
    assert await memory_log.last_seq() == before
    for body in (b"", b"{}"):  # a route that reads no body does not ask for its type
        cancel = await gateway.post("/scenario/v2/jobs/no-such-job/cancel", content=body)
        assert cancel.status_code == 404, cancel.text


async def test_a_body_in_another_charset_is_refused_naming_it_and_ascii_is_utf8(gateway, memory_log):
    """JSON is UTF-8 (RFC 8259): a body that says it is UTF-16 is not read as UTF-8 and called
    broken, nor guessed; the client hears which charset to use."""
    before = await memory_log.last_seq()
    text = '{"scenario_document": "' + DOCUMENT.replace("\n", "\\n") + '"}'
    r = await gateway.post("/scenario/analyze-scenario-enhanced", content=text.encode("utf-16"),
                           headers={"Content-Type": 'application/json; charset="UTF-16"'})
    assert r.status_code == 415 and r.json()["field"] == "Content-Type", r.text
    assert "'utf-16'" in r.json()["detail"] and "UTF-8" in r.json()["detail"]
    assert await memory_log.last_seq() == before
    r = await gateway.post("/scenario/analyze-scenario-enhanced", content=text.encode("ascii"),
                           headers={"Content-Type": "application/json;charset=US-ASCII"})
    assert r.status_code == 201, r.text
