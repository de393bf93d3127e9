"""The series move as a job did: a completed and a failed persona (under its error code),
one LLM latency observation per call, the job's end, the projector back at the head,
the HTTP and SSE series on the gateway's /metrics, and no job id in any label."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from tests.conftest import InProcessSystem
from tests.flows import create_personas, create_template, start_job
from tests.metrics_text import sample
from tests.sse_client import read_sse
from tests.waiting import eventually


@pytest.fixture
async def llm_system(settings, models, mock_llm):
    settings.provider = "openai"
    settings.openai_base_url = mock_llm.base_url
    settings.openai_api_key = SecretStr("test-key")
    settings.llm_max_attempts = 2
    settings.worker_concurrency = 1  # the script's calls go out one at a time
    system = await InProcessSystem(settings).start()
    yield system
    await system.close()


async def test_metrics_follow_a_job(llm_system, mock_llm, scenario_document):
    async with httpx.AsyncClient(base_url=llm_system.base_url, timeout=60) as client:
        template_id = await create_template(client, scenario_document)
        personas = await create_personas(client, template_id, 2)
        mock_llm.reset()
        # one persona fails for good (auth), the other succeeds after one transient failure
        mock_llm.add_script([{"fault": "auth"}, {"fault": "error", "status": 500}, {"fault": "ok"}])
        job = await start_job(client, template_id, {p["id"]: "assess_mode" for p in personas})
        stream = await read_sse(client, job["sse_endpoint"])
        assert stream.messages[-1].data["results"]["failed"] == 1
        gateway_text = (await client.get("/metrics")).text

    generator = llm_system.metrics["generator"].exposition()
    assert sample(generator, "promptgen_personas_finished_total", outcome="failed", error_code="llm_auth") == 1
    assert sample(generator, "promptgen_personas_finished_total", outcome="completed", error_code="") == 1
    calls = sample(generator, "promptgen_llm_call_duration_seconds_count")
    assert calls == mock_llm.requests == 3
    assert sample(generator, "promptgen_llm_call_duration_seconds_count", outcome="error") == 2
    assert sample(generator, "promptgen_llm_retries_total", error_code="llm_unavailable") == 1
    assert sample(generator, "promptgen_llm_tokens_total", direction="completion") > 0

    projector = llm_system.metrics["projector"]
    assert sample(projector.exposition(), "promptgen_jobs_finished_total", status="completed") == 1

    async def caught_up() -> bool:
        return sample(projector.exposition(), "promptgen_projector_lag_events") == 0
    await eventually(caught_up, what="the projector back at the head of the log")
    assert sample(projector.exposition(), "promptgen_projector_lag_seconds") == 0

    assert sample(gateway_text, "promptgen_http_requests_total", method="POST",
                  route="/scenario/v2/generate-final-prompts", status="202") == 1
    assert sample(gateway_text, "promptgen_http_requests_total",
                  route="/scenario/v2/prompt-generation-status/{job_id}", status="200") == 1
    assert sample(gateway_text, "promptgen_sse_messages_sent_total") >= len(stream.messages)
    assert sample(gateway_text, "promptgen_sse_clients") == 0
    for text in (gateway_text, generator.decode(), projector.exposition().decode()):
        assert job["job_id"] not in text and personas[0]["id"] not in text  # ids are never labels
