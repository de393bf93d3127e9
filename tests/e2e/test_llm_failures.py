"""A real LLM misbehaves: every failure class end to end, retries, retry-failed and cancel.

The generator and gateway use the `openai` provider against the test LLM server
over real HTTP; faults are scripted per call.
"""

from __future__ import annotations

import io
import json
import logging
import time

import httpx
import pytest
import structlog
from pydantic import SecretStr

from services.runtime.logs import configure_logging
from services.testing.mock_llm import MockLLMConfig
from tests.conftest import InProcessSystem
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.sse_client import read_sse


@pytest.fixture
def llm_timeout() -> float:
    """Generous: an answer that comes late on a loaded machine is not a timeout here. The test
    of a hanging LLM parametrizes it shorter."""
    return 10.0


@pytest.fixture
async def llm_system(settings, models, mock_llm, llm_timeout):
    settings.provider = "openai"
    settings.openai_base_url = mock_llm.base_url
    settings.openai_api_key = SecretStr("test-key")
    settings.llm_max_attempts = 3
    settings.llm_timeout_seconds = llm_timeout
    settings.worker_concurrency = 1  # one call at a time per generator: a cancel can land between calls
    system = await InProcessSystem(settings).start()
    yield system
    await system.close()


@pytest.fixture
async def llm_client(llm_system):
    async with httpx.AsyncClient(base_url=llm_system.base_url, timeout=60) as c:
        yield c


async def _one_persona_job(client, document, mock_llm, script):
    template_id = await create_template(client, document)
    persona = (await create_personas(client, template_id, 1))[0]
    mock_llm.reset()
    mock_llm.add_script(script)
    job = await start_job(client, template_id, {persona["id"]: "assess_mode"})
    return persona, await read_sse(client, job["sse_endpoint"])


@pytest.mark.parametrize(
    "script,code,attempts",
    [
        ([{"fault": "auth"}], "llm_auth", 1),
        ([{"fault": "bad_request"}], "llm_rejected", 1),
        ([{"fault": "quota"}], "llm_quota", 1),
        ([{"fault": "rate_limit", "retry_after_s": 0.05}] * 3, "llm_rate_limited", 3),
        ([{"fault": "error", "status": 500}] * 3, "llm_unavailable", 3),
        ([{"fault": "drop"}] * 3, "llm_unavailable", 3),
        ([{"fault": "timeout_408"}] * 3, "llm_timeout", 3),
    ],
    ids=["auth", "rejected", "quota", "rate_limited", "server_error", "dropped", "408"],
)
async def test_each_failure_class_reaches_the_sse_client(llm_client, mock_llm, scenario_document, script, code,
                                                         attempts):
    await _failure_reaches_the_client(llm_client, mock_llm, scenario_document, script, code, attempts)


@pytest.mark.parametrize("llm_timeout", [0.5])  # every call hangs: only the timeout ends it
async def test_a_hanging_llm_reaches_the_sse_client_as_a_timeout(llm_client, mock_llm, scenario_document):
    await _failure_reaches_the_client(llm_client, mock_llm, scenario_document, [{"fault": "hang"}] * 3,
                                      "llm_timeout", 3)


async def _failure_reaches_the_client(llm_client, mock_llm, scenario_document, script, code, attempts):
    persona, stream = await _one_persona_job(llm_client, scenario_document, mock_llm, script)
    failed = [m.data for m in stream.messages if m.data["type"] == "persona_progress" and m.data["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["persona_id"] == persona["id"]
    assert failed[0]["error_code"] == code and failed[0]["error"]
    end, results = stream.messages[-2].data, stream.messages[-1].data["results"]
    assert end == {"type": "status_update", "status": "failed", "error": "no persona prompt could be generated"}
    assert results["failed"] == 1 and results["successful"] == 0
    assert results["personas"][persona["id"]]["error_code"] == code
    assert mock_llm.requests == attempts  # permanent failures are not retried


async def test_transient_failures_are_retried_honouring_retry_after(llm_client, mock_llm, scenario_document):
    script = [{"fault": "rate_limit", "retry_after_s": 0.8}, {"fault": "error", "status": 503}, {"fault": "ok"}]
    persona, stream = await _one_persona_job(llm_client, scenario_document, mock_llm, script)
    assert stream.messages[-1].data["results"]["successful"] == 1
    first, second, _ = mock_llm.started
    assert second - first >= 0.8  # not sooner than the server asked
    assert mock_llm.requests == 3


async def test_token_usage_is_recorded_and_summed(llm_client, mock_llm, settings, scenario_document):
    template_id = await create_template(llm_client, scenario_document)
    personas = await create_personas(llm_client, template_id, 3)
    job = await start_job(llm_client, template_id, cycle_modes([p["id"] for p in personas]))
    results = (await read_sse(llm_client, job["sse_endpoint"])).messages[-1].data["results"]
    view = (await llm_client.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
    assert results["usage"]["completion_tokens"] > 0 and results["usage"] == view["usage"]
    events = (await llm_client.get(f"/scenario/v2/jobs/{job['job_id']}/events")).json()["events"]
    completed = [e["event"] for e in events if e["type"] == "persona.completed"]
    assert sum(e["usage"]["prompt_tokens"] for e in completed) == results["usage"]["prompt_tokens"]
    assert len(completed) == 3 and {e["model"] for e in completed} == {settings.model}  # as the LLM answered


async def test_unusable_structured_output_is_a_clear_error(llm_client, mock_llm, scenario_document):
    mock_llm.add_script([{"fault": "garbage"}])
    r = await llm_client.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": scenario_document})
    assert r.status_code == 502 and r.json()["code"] == "invalid_output"


async def test_retry_failed_starts_a_job_for_exactly_the_failed_personas(llm_client, mock_llm, scenario_document):
    template_id = await create_template(llm_client, scenario_document)
    personas = await create_personas(llm_client, template_id, 3)
    modes = cycle_modes([p["id"] for p in personas])
    mock_llm.add_script([{"fault": "auth"}])  # whichever persona calls first fails for good
    job = await start_job(llm_client, template_id, modes)
    first = (await read_sse(llm_client, job["sse_endpoint"])).messages[-1].data["results"]
    failed = [pid for pid, p in first["personas"].items() if p["status"] == "failed"]
    assert len(failed) == 1 and first["successful"] == 2

    r = await llm_client.post(f"/scenario/v2/jobs/{job['job_id']}/retry-failed")
    assert r.status_code == 202, r.text
    retry = r.json()
    assert retry["retry_of"] == job["job_id"] and retry["persona_count"] == 1
    second = (await read_sse(llm_client, retry["sse_endpoint"])).messages[-1].data["results"]
    assert list(second["personas"]) == failed and second["successful"] == 1
    assert second["personas"][failed[0]]["mode"] == modes[failed[0]]
    view = (await llm_client.get(f"/scenario/v2/job-status/{retry['job_id']}")).json()
    assert view["retry_of"] == job["job_id"]
    listed = {j["job_id"]: j for j in (await llm_client.get("/scenario/v2/jobs")).json()["jobs"]}
    title = (await llm_client.get(f"/scenario/templates/{template_id}")).json()["template_data"]["title"]
    assert listed[retry["job_id"]]["retry_of"] == job["job_id"] and listed[job["job_id"]]["retry_of"] is None
    assert {listed[j]["template_title"] for j in (job["job_id"], retry["job_id"])} == {title}

    r = await llm_client.post(f"/scenario/v2/jobs/{retry['job_id']}/retry-failed")
    assert r.status_code == 409 and r.json()["code"] == "nothing_failed"


async def test_cancel_stops_new_llm_calls_and_ends_the_job_cancelled(llm_client, mock_llm,
                                                                    scenario_document):
    template_id = await create_template(llm_client, scenario_document)
    personas = await create_personas(llm_client, template_id, 8)
    mock_llm.configure(MockLLMConfig(latency_ms=300))
    job = await start_job(llm_client, template_id, cycle_modes([p["id"] for p in personas]))

    def first_completed(messages) -> bool:
        return any(m.data.get("status") == "completed" for m in messages)

    seen = await read_sse(llm_client, job["sse_endpoint"], until=first_completed)
    r = await llm_client.post(f"/scenario/v2/jobs/{job['job_id']}/cancel")
    assert r.status_code == 202
    calls_at_cancel = mock_llm.requests
    rest = await read_sse(llm_client, job["sse_endpoint"], headers={"Last-Event-ID": seen.messages[-1].id})
    end, results = rest.messages[-2].data, rest.messages[-1].data["results"]
    assert end["status"] == "cancelled"
    assert results["cancelled"] >= 5 and results["successful"] + results["cancelled"] == 8
    assert mock_llm.requests <= calls_at_cancel + 1  # at most the call already in flight
    view = (await llm_client.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
    assert view["status"] == "cancelled" and view["cancelled"] == results["cancelled"]
    listed = (await llm_client.get("/scenario/v2/jobs", params={"limit": 1})).json()["jobs"][0]
    assert listed["job_id"] == job["job_id"] and listed["cancelled"] == results["cancelled"]
    again = await llm_client.post(f"/scenario/v2/jobs/{job['job_id']}/cancel")
    assert again.status_code == 409 and again.json()["code"] == "job_finished"


async def test_template_analysis_takes_its_turn_from_the_shared_llm_caps(llm_system, llm_client, mock_llm,
                                                                         scenario_document, event_log):
    from services.adapters.llm.limits import BUCKET, KEY

    kv = await event_log.js.key_value(BUCKET)
    mock_llm.add_script([{"fault": "rate_limit", "retry_after_s": 2.5}])
    r = await llm_client.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": scenario_document})
    assert r.status_code == 503 and r.json()["code"] == "llm_rate_limited"
    assert r.headers["retry-after"] == "3" and "try again in 3 s" in r.json()["detail"]
    # the 429 the gateway met holds every caller, generators included
    state = json.loads((await kv.get(KEY)).value)
    assert state["backoff_until"] > time.time() + 1.5


# What a server's error message can hold: the prompt, a key, an internal URL.
CANARIES = ("CANARY-9d41e7", "sk-live-0123456789abcdef", "llm-internal.corp.example")
UPSTREAM_MESSAGE = (f"Request {CANARIES[0]} refused for key {CANARIES[1]}; see https://{CANARIES[2]}/v1/audit "
                    f"for the prompt 'You are the avatar of {CANARIES[0]}'")


@pytest.fixture
def log_lines():
    """Every log line this process writes during the test, as the services write them (JSON)."""
    out = io.StringIO()
    configure_logging("test", "debug", stream=out, cache=False)
    yield out
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    logging.getLogger().handlers[:] = []


async def test_an_upstream_error_message_is_summarised_never_passed_on(llm_system, llm_client, mock_llm,
                                                                       scenario_document, event_log, log_lines):
    template_id = await create_template(llm_client, scenario_document)
    rejected, unavailable = await create_personas(llm_client, template_id, 2)
    mock_llm.reset()
    mock_llm.add_script([{"fault": "bad_request", "message": UPSTREAM_MESSAGE}] +  # permanent: one call
                        [{"fault": "error", "status": 503, "message": UPSTREAM_MESSAGE}] * 3)  # retried, then failed
    job = await start_job(llm_client, template_id, {rejected["id"]: "assess_mode", unavailable["id"]: "try_mode"})
    stream = await read_sse(llm_client, job["sse_endpoint"])
    errors = {(p["error_code"], p["error"]) for p in stream.messages[-1].data["results"]["personas"].values()}
    assert errors == {("llm_rejected", "LLM rejected the request (HTTP 400, content_filter)"),  # ours: status, code
                      ("llm_unavailable", "LLM server error (HTTP 503, server_error)")}

    mock_llm.add_script([{"fault": "auth", "message": UPSTREAM_MESSAGE}])  # the gateway's own LLM calls too
    refused = await llm_client.post("/scenario/analyze-scenario-enhanced",
                                    json={"scenario_document": scenario_document})
    assert refused.status_code == 502 and refused.json()["code"] == "llm_auth"
    assert refused.json()["detail"].endswith("LLM rejected the credentials (HTTP 401, invalid_api_key)")

    seen = {
        "SSE stream": (await llm_client.get(job["sse_endpoint"])).text,
        "job view": (await llm_client.get(f"/scenario/v2/job-status/{job['job_id']}")).text,
        "event history": (await llm_client.get(f"/scenario/v2/jobs/{job['job_id']}/events")).text,
        "gateway's answer": refused.text,
        "event log": await _whole_stream(event_log, llm_system.settings.stream),
        "log lines": log_lines.getvalue(),
    }
    # it was looked for where it would have gone
    assert "llm_rejected" in seen["event log"] and seen["log lines"].count('"llm_call_failed"') == 4
    for where, text in seen.items():
        assert not [c for c in CANARIES if c in text], f"the upstream message reached the {where}"


async def _whole_stream(event_log, stream: str) -> str:
    """Every message of the event log, raw."""
    info = await event_log.js.stream_info(stream)
    raw = [(await event_log.js.get_msg(stream, seq)).data or b""
           for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    return b"\n".join(raw).decode(errors="replace")


async def test_a_request_whose_llm_turn_is_further_off_than_allowed_is_503_at_once(settings, models, mock_llm,
                                                                                 scenario_document):
    """Under a token cap, one large request reserves the budget for many seconds: a request
    after it that would wait past PROMPTGEN_LLM_MAX_WAIT_SECONDS is told when to come back,
    reserving nothing (it waited its turn, however far off: one client could hold every other
    tenant's calls, and the generator's, for as long as it liked)."""
    settings.provider = "openai"
    settings.openai_base_url = mock_llm.base_url
    settings.openai_api_key = SecretStr("test-key")
    settings.llm_tpm = 60_000  # 1,000 tokens a second
    settings.llm_max_wait_seconds = 5
    system = await InProcessSystem(settings).start()
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=60) as client:
            big = (scenario_document + "\n") * (100_000 // len(scenario_document))  # about 25,000 tokens
            first = await client.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": big})
            assert first.status_code == 201, first.text
            asked = mock_llm.requests
            started = time.monotonic()
            refused = await client.post("/scenario/analyze-scenario-enhanced",
                                        json={"scenario_document": scenario_document})
            assert time.monotonic() - started < 5  # not the 20 s or more its turn is away
            assert refused.status_code == 503 and refused.json()["code"] == "llm_rate_limited", refused.text
            assert 15 <= int(refused.headers["retry-after"]) <= 30, refused.headers
            assert mock_llm.requests == asked  # the LLM was not asked
            # nothing was reserved by the refusal: the turn it named is no further off
            again = await client.post("/scenario/analyze-scenario-enhanced",
                                      json={"scenario_document": scenario_document})
            assert abs(int(again.headers["retry-after"]) - int(refused.headers["retry-after"])) <= 1, again.headers
    finally:
        await system.close()
