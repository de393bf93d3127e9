"""Crash safety, proven by killing real processes in the middle of a 50-persona job.

Each scenario starts its own nats-server (file storage, fsync before ack), a
MongoDB-wire server on disk, a slow OpenAI-compatible test LLM, and the services
as child processes; then kills one of them with SIGKILL (or stops a server) and
checks that nothing was lost and nothing was done twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from contracts import subjects
from services.adapters.event_log import EventLog
from services.adapters.read_models import ReadModels, mongo_client
from services.projector.rebuild import rebuild_into
from services.runtime.settings import Settings
from tests.crash.harness import Deployment
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.readmodels import snapshot
from tests.sse_client import SseMessage, read_sse
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(90)

PERSONAS = 50


@pytest.fixture
def deployment(tmp_path, slow_llm_url):
    d = Deployment(tmp_path, OPENAI_BASE_URL=slow_llm_url, OPENAI_API_KEY="test-key",
                   PROMPTGEN_WORKER_CONCURRENCY="5", PROMPTGEN_LLM_MAX_ATTEMPTS="6")
    yield d
    d.close()


def _settings(d: Deployment) -> Settings:
    return Settings(nats_url=d.nats.url, mongo_url=d.mongo.url, mongo_db=d.db)


async def _job(client: httpx.AsyncClient, document: str) -> tuple[dict, list[str]]:
    template_id = await create_template(client, document)
    personas = []
    for _ in range(PERSONAS // 10):
        personas += await create_personas(client, template_id, 10)
    ids = [p["id"] for p in personas]
    return await start_job(client, template_id, cycle_modes(ids)), ids


def completed_count(messages: list[SseMessage]) -> int:
    return sum(1 for m in messages if m.data["type"] == "persona_progress" and m.data["status"] == "completed")


async def _follow_until(client, path: str, completed: int) -> list[SseMessage]:
    """Read the stream until ``completed`` personas completed, then disconnect."""
    part = await read_sse(client, path, until=lambda msgs: completed_count(msgs) >= completed)
    assert completed_count(part.messages) == completed, "the job ended before the fault could be injected"
    return part.messages


async def _history(d: Deployment, job_id: str):
    log = await EventLog.connect(_settings(d), "crash-test")
    try:
        return [s async for s in log.read(subjects.job_history(job_id))]
    finally:
        await log.close()


async def _assert_each_persona_completed_once(d: Deployment, job_id: str, ids: list[str]) -> None:
    history = await _history(d, job_id)
    ends = Counter(s.event.persona_id for s in history if s.event.type == "persona.completed")
    assert ends == Counter(ids), "each persona must have exactly one PersonaCompleted"
    assert sum(1 for s in history if s.event.type == "job.completed") == 1
    client = mongo_client(_settings(d))
    try:
        models = ReadModels(client[d.db])
        end = max(s.seq for s in history)

        async def projected() -> bool:  # the job's end reaches SSE clients before the projector has it
            return await models.checkpoint() >= end

        await eventually(projected, timeout=60, what="the projector applying the job's end")
        docs = [doc async for doc in models.personas.find({"_id": {"$in": ids}})]
    finally:
        await client.close()
    assert len(docs) == PERSONAS and all(doc.get("system_prompt") for doc in docs)


async def _assert_read_models_equal_a_rebuild(d: Deployment) -> None:
    settings = _settings(d)
    log = await EventLog.connect(settings, "crash-rebuild")
    client = mongo_client(settings)
    try:
        live = ReadModels(client[d.db])
        rebuilt = ReadModels(client[d.db], suffix="__verify")
        await rebuild_into(log, rebuilt)
        assert await snapshot(rebuilt) == await snapshot(live)
    finally:
        await log.close()
        await client.close()


async def _kill_and_restart_mid_job(d: Deployment, document: str, command: str) -> tuple[dict, list[str], dict]:
    """Run a job, SIGKILL the ``command`` service after 10 personas, start a new one,
    and follow the job to its end; returns the job, its persona ids and its final view."""
    projector, generator, _, url = d.start_all()
    victim = {"projector": projector, "generator": generator}[command]
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        job, ids = await _job(client, document)
        seen = await _follow_until(client, job["sse_endpoint"], completed=10)
        victim.kill9()
        d.start(command)
        rest = await read_sse(client, job["sse_endpoint"], headers={"Last-Event-ID": seen[-1].id})
        assert rest.messages[-1].data["results"]["successful"] == PERSONAS
        view = (await client.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
    return job, ids, view


async def test_kill_9_a_generator_mid_job(deployment, scenario_document):
    job, ids, _ = await _kill_and_restart_mid_job(deployment, scenario_document, "generator")
    await _assert_each_persona_completed_once(deployment, job["job_id"], ids)


async def test_kill_9_the_projector_and_restart_it(deployment, scenario_document):
    job, ids, view = await _kill_and_restart_mid_job(deployment, scenario_document, "projector")
    assert view["status"] == "completed" and view["completed"] == PERSONAS
    await _assert_each_persona_completed_once(deployment, job["job_id"], ids)
    await _assert_read_models_equal_a_rebuild(deployment)


async def test_kill_9_the_gateway_serving_sse_and_resume_on_another(deployment, scenario_document):
    d = deployment
    _, _, gateway, url = d.start_all()
    _, other_url = d.start_gateway()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        job, _ = await _job(client, scenario_document)
        seen: list[SseMessage] = []

        def kill_after_15(messages: list[SseMessage]) -> bool:
            if len(messages) == 15:
                seen.extend(messages)
                gateway.kill9()  # the connection dies under the client
            return False

        with pytest.raises(httpx.HTTPError):
            await read_sse(client, job["sse_endpoint"], until=kill_after_15)
    assert len(seen) >= 15 and seen[-1].data["type"] != "results", "the job ended before the gateway died"
    async with httpx.AsyncClient(base_url=other_url, timeout=60) as other:
        rest = await read_sse(other, job["sse_endpoint"], headers={"Last-Event-ID": seen[-1].id})
        full = await read_sse(other, job["sse_endpoint"])
    joined = [(m.id, m.data) for m in seen + rest.messages]
    assert joined == [(m.id, m.data) for m in full.messages], "resumed stream must be exact"
    assert full.messages[-1].data["type"] == "results"


async def test_restart_nats_server_mid_job(deployment, scenario_document):
    d = deployment
    *_, url = d.start_all()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        job, ids = await _job(client, scenario_document)
        seen = await _follow_until(client, job["sse_endpoint"], completed=10)
        d.nats.proc.kill()  # SIGKILL: only what was fsynced before each ack survives
        d.nats.proc.wait()
        d.nats.start()
        rest = await read_sse(client, job["sse_endpoint"], headers={"Last-Event-ID": seen[-1].id})
        assert rest.messages[-1].data["results"]["successful"] == PERSONAS
        full = await read_sse(client, job["sse_endpoint"])
    # every event a client saw before the crash is still in the log, in place
    after = {m.id: m.data for m in full.messages}
    assert all(after.get(m.id) == m.data for m in seen)
    await _assert_each_persona_completed_once(d, job["job_id"], ids)


async def test_stop_mongodb_for_a_few_seconds(deployment, scenario_document):
    d = deployment
    *_, url = d.start_all()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        job, ids = await _job(client, scenario_document)
        seen = await _follow_until(client, job["sse_endpoint"], completed=10)
        d.mongo.stop()
        await asyncio.sleep(3)  # the outage itself: nothing is waited for here
        d.mongo.start()
        rest = await read_sse(client, job["sse_endpoint"], headers={"Last-Event-ID": seen[-1].id})
        assert rest.messages[-1].data["results"]["successful"] == PERSONAS
    await _assert_each_persona_completed_once(d, job["job_id"], ids)
    await _assert_read_models_equal_a_rebuild(d)
