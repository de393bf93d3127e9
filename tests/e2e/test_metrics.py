"""The series move as a job did: a completed and a failed persona (under its error code),
one LLM latency observation per call, the job's end, the projector back at the head,
the HTTP and SSE series on the gateway's /metrics, and no job id in any label; the generator's
and the projector's /metrics, /readyz and /livez over HTTP on their own ports."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from services.cli.embedded import free_port
from tests.conftest import SCENARIO, InProcessSystem
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
        listed = (await client.get("/scenario/v2/jobs")).json()  # waits for the job's end to be applied
        assert listed["jobs"][0]["status"] == "completed"
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
    # Nothing parked, and the series there from the start: the first parked event is an increase.
    from services.generator.consumers import DISPATCHER, WORKERS
    from services.generator.dead_letters import DEAD_LETTERS
    from services.projector.fold import PROJECTOR
    from services.projector.job_manager import JOB_MANAGER

    for consumer in (DISPATCHER, WORKERS, DEAD_LETTERS):
        assert sample(generator, "promptgen_parked_events_total", consumer=consumer) == 0
    for consumer in (PROJECTOR, JOB_MANAGER):
        assert sample(projector.exposition(), "promptgen_parked_events_total", consumer=consumer) == 0

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
    # the gateway's own LLM calls (the template's analysis, the personas' drafts) and their tokens
    assert sample(gateway_text, "promptgen_llm_call_duration_seconds_count", outcome="ok") == 2
    assert sample(gateway_text, "promptgen_llm_tokens_total", direction="prompt") > 0
    assert "promptgen_llm_retries" not in gateway_text  # its calls are not tried again: the client does
    assert sample(gateway_text, "promptgen_read_fence_reads_total", outcome="fresh") >= 1
    assert sample(gateway_text, "promptgen_read_fence_wait_seconds_count") >= 1
    for text in (gateway_text, generator.decode(), projector.exposition().decode()):
        assert job["job_id"] not in text and personas[0]["id"] not in text  # ids are never labels
    # each process serves its own series only: no projector lag of 0 from a gateway, say
    assert sample(gateway_text, "promptgen_projector_lag_events") is None and "promptgen_parked" not in gateway_text
    assert "promptgen_http_requests" not in generator.decode() and "promptgen_jobs_finished" not in generator.decode()
    assert "promptgen_llm_" not in projector.exposition().decode()
    assert "promptgen_sse_clients" not in projector.exposition().decode()


async def test_the_generator_and_the_projector_serve_metrics_and_health_on_their_own_ports(settings, models):
    """Over HTTP, as Prometheus and a kubelet see them: PROMPTGEN_GENERATOR_HTTP_PORT and
    PROMPTGEN_PROJECTOR_HTTP_PORT, with series that moved as a job ran."""
    settings.generator_http_port, settings.projector_http_port = free_port(), free_port()
    generator = f"http://127.0.0.1:{settings.generator_http_port}"
    projector = f"http://127.0.0.1:{settings.projector_http_port}"
    system = await InProcessSystem(settings).start()
    try:
        async with httpx.AsyncClient(timeout=10) as ops:
            async def ready(base: str) -> httpx.Response | None:
                try:
                    answer = await ops.get(f"{base}/readyz")
                except httpx.TransportError:
                    return None  # not listening yet
                return answer if answer.status_code == 200 else None

            for base, checks in ((generator, {"nats"}), (projector, {"nats", "mongodb"})):
                answer = await eventually(lambda base=base: ready(base), what=f"{base}/readyz answering 200")
                assert answer.json()["status"] == "ok" and checks <= set(answer.json()["checks"])
                assert all(answer.json()["checks"].values()), answer.json()
                live = await ops.get(f"{base}/livez")
                assert live.status_code == 200 and all(live.json()["checks"].values()), live.text

            before = {base: (await ops.get(f"{base}/metrics")).text for base in (generator, projector)}
            assert not sample(before[generator], "promptgen_personas_finished_total", outcome="completed")
            assert not sample(before[projector], "promptgen_jobs_finished_total", status="completed")

            async with httpx.AsyncClient(base_url=system.base_url, timeout=60) as client:
                template_id = await create_template(client, SCENARIO)
                personas = await create_personas(client, template_id, 3)
                job = await start_job(client, template_id, {p["id"]: "try_mode" for p in personas})
                stream = await read_sse(client, job["sse_endpoint"])
                assert stream.messages[-1].data["results"]["successful"] == 3

            scraped = await ops.get(f"{generator}/metrics")
            assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
            assert sample(scraped.text, "promptgen_personas_finished_total", outcome="completed") == 3

            async def projector_caught_up() -> str | None:
                text = (await ops.get(f"{projector}/metrics")).text
                return text if sample(text, "promptgen_projector_lag_events") == 0 else None
            text = await eventually(projector_caught_up, what="the projector's /metrics at the head of the log")
            assert sample(text, "promptgen_jobs_finished_total", status="completed") == 1
            assert sample(text, "promptgen_projector_lag_seconds") == 0
            for body in (scraped.text, text):
                assert job["job_id"] not in body and personas[0]["id"] not in body

            assert (await ops.get(f"{projector}/readyz")).json()["checks"]["mongodb"] is True
            assert (await ops.get(f"{generator}/nothing")).status_code == 404
    finally:
        await system.close()
