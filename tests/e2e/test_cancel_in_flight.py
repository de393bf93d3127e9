"""Cancelling a job, or its deadline passing, ends its LLM calls in flight: none of their prompts
is stored, on the job or on its personas (a user who cancels may have started the job with the
wrong modes; a job that expired has said its personas failed)."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from tests.conftest import InProcessSystem
from tests.flows import create_personas, create_template, start_job
from tests.sse_client import read_sse
from tests.waiting import eventually


@pytest.fixture
def deadline() -> float | None:
    return None  # the default


@pytest.fixture
async def held_llm_system(settings, models, mock_llm, deadline):
    if deadline is not None:
        settings.job_deadline_seconds = deadline
        settings.expiry_sweep_seconds = 0.1
    settings.provider = "openai"
    settings.openai_base_url = mock_llm.base_url
    settings.openai_api_key = SecretStr("test-key")
    settings.llm_timeout_seconds = 60  # a held call stays in flight until the test lets it answer
    settings.worker_concurrency = 2
    system = await InProcessSystem(settings).start()
    yield system
    await system.close()


async def test_cancel_cancels_the_calls_in_flight_and_stores_none_of_them(held_llm_system, mock_llm,
                                                                         scenario_document):
    async with httpx.AsyncClient(base_url=held_llm_system.base_url, timeout=60) as client:
        template_id = await create_template(client, scenario_document)
        personas = await create_personas(client, template_id, 4)
        mock_llm.pause()
        before = mock_llm.requests
        job = await start_job(client, template_id, {p["id"]: "assess_mode" for p in personas})

        async def two_in_flight():
            return mock_llm.in_flight == 2
        await eventually(two_in_flight, timeout=20, what="two LLM calls in flight")
        assert (await client.post(f"/scenario/v2/jobs/{job['job_id']}/cancel")).status_code == 202
        stream = await read_sse(client, job["sse_endpoint"])
        assert stream.messages[-2].data == {"type": "status_update", "status": "cancelled"}
        assert stream.messages[-1].data["results"]["cancelled"] == 4

        mock_llm.resume()  # the held calls answer now, into connections the generator has closed
        later = await start_job(client, template_id, {personas[0]["id"]: "learn_mode"})
        assert (await read_sse(client, later["sse_endpoint"])).messages[-1].data["results"]["successful"] == 1
        events = (await client.get(f"/scenario/v2/jobs/{job['job_id']}/events", params={"limit": 1000})).json()
        types = [e["type"] for e in events["events"]]
        assert "persona.completed" not in types and types[-1] == "job.cancelled", types
        for p in personas[1:]:
            assert (await client.get(f"/scenario/personas/{p['id']}")).json()["system_prompt"] is None
        assert mock_llm.requests - before == 2 + 1  # the two cancelled calls, then the later job's


@pytest.mark.parametrize("deadline", [3.0])
async def test_a_deadline_passing_ends_the_calls_in_flight_and_stores_none_of_them(held_llm_system, mock_llm,
                                                                                  scenario_document, deadline):
    async with httpx.AsyncClient(base_url=held_llm_system.base_url, timeout=60) as client:
        template_id = await create_template(client, scenario_document)
        personas = await create_personas(client, template_id, 2)
        mock_llm.pause()
        job = await start_job(client, template_id, {p["id"]: "try_mode" for p in personas})

        async def both_in_flight():
            return mock_llm.in_flight == 2
        await eventually(both_in_flight, timeout=20, what="both LLM calls in flight")
        stream = await read_sse(client, job["sse_endpoint"])  # until the job expires
        assert stream.messages[-2].data["status"] == "expired"
        results = stream.messages[-1].data["results"]
        assert {p["error_code"] for p in results["personas"].values()} == {"expired"}
        last = {m.data["persona_id"]: (m.data["status"], m.data.get("error_code"))  # the specification's hook
                for m in stream.messages if m.data["type"] == "persona_progress"}
        assert last == {p["id"]: ("failed", "expired") for p in personas}

        mock_llm.resume()  # the ended calls answer now, into connections the generator has closed
        later = await start_job(client, template_id, {personas[0]["id"]: "learn_mode"})
        assert (await read_sse(client, later["sse_endpoint"])).messages[-1].data["results"]["successful"] == 1
        events = (await client.get(f"/scenario/v2/jobs/{job['job_id']}/events")).json()["events"]
        assert "persona.completed" not in [e["type"] for e in events]
        assert (await client.get(f"/scenario/personas/{personas[1]['id']}")).json()["system_prompt"] is None
