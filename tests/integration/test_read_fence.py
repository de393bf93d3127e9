"""A job's end reaches its SSE clients before the projector has it; a read right after waits
for the projector (services/gateway/freshness.py), so the view and the persona's prompt it
returns are final. The test writes the events itself: the projector is stopped and started
again in between, so what a read returns shows whether it waited."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from contracts.events import JobCompleted, PersonaCreated
from tests.conftest import InProcessSystem
from tests.flows import create_personas, create_template, start_job
from tests.samples import finished_job, persona, results
from tests.sse_client import read_sse
from tests.waiting import eventually

PIDS = ("fence-p1", "fence-p2")


async def _job_projected_then_ended(sysm: InProcessSystem, event_log, models, job_id: str) -> None:
    """The personas and the job's request applied; then, with the projector stopped, each
    persona's prompt and the job's end written to the log only."""
    request, *completions = finished_job(job_id, PIDS)
    for pid in PIDS:
        await event_log.publish(PersonaCreated(persona=persona(pid, f"Name {pid}")))
    await event_log.publish(request)
    await eventually(lambda: models.jobs.find_one({"_id": job_id}), what="the job's view")
    await eventually(lambda: models.personas.find_one({"_id": PIDS[-1]}), what="the personas")
    await sysm.stop_service("projector")  # the job manager with it: it ends nothing here
    for completion in completions:
        await event_log.publish(completion)
    await event_log.publish(JobCompleted(job_id=job_id, status="completed",
                                         results=results(dict.fromkeys(PIDS, "completed"))))


@pytest.fixture
async def gateway_without_generator(settings, models):
    sysm = await InProcessSystem(settings).start(generator=False)
    async with httpx.AsyncClient(base_url=sysm.base_url, timeout=30) as client:
        yield sysm, client
    await sysm.close()


async def test_reads_after_an_end_the_projector_has_not_applied_wait_for_it(
        gateway_without_generator, event_log, models):
    sysm, client = gateway_without_generator
    await _job_projected_then_ended(sysm, event_log, models, "fenced")

    stream = await read_sse(client, "/scenario/v2/prompt-generation-status/fenced")
    assert stream.messages[-1].data["type"] == "results"  # sent with no projector running

    assert (await models.jobs.find_one({"_id": "fenced"}))["status"] == "processing"  # what is stored
    reads = [
        asyncio.create_task(client.get("/scenario/v2/job-status/fenced")),
        asyncio.create_task(client.get("/scenario/v2/jobs")),
        asyncio.create_task(client.get(f"/scenario/personas/{PIDS[0]}")),
    ]
    waiter = sysm.app.state.gateway.waiter

    async def all_waiting() -> bool:
        return waiter.waiting == len(reads)

    await eventually(all_waiting, what="every read waiting for the projector")
    assert not any(r.done() for r in reads)
    sysm.start_service("projector")
    status, listed, first = [await asyncio.wait_for(r, 30) for r in reads]

    assert status.status_code == 200, status.text
    assert status.json()["status"] == "completed"
    assert {p["status"] for p in status.json()["personas"].values()} == {"completed"}
    assert [j["status"] for j in listed.json()["jobs"] if j["job_id"] == "fenced"] == ["completed"]
    assert first.json()["system_prompt"] == f"You are {PIDS[0]}."


async def test_a_read_does_not_wait_for_what_it_does_not_read(gateway_without_generator, event_log, models):
    sysm, client = gateway_without_generator
    await _job_projected_then_ended(sysm, event_log, models, "unrelated")
    await event_log.publish(PersonaCreated(persona=persona("bystander")))
    sysm.start_service("projector")
    await eventually(lambda: models.personas.find_one({"_id": "bystander"}), what="the bystander")
    await sysm.stop_service("projector")
    # a job and a persona of which the log holds nothing the projector has not applied
    r = await client.get("/scenario/personas/bystander")
    assert r.status_code == 200 and r.json()["system_prompt"] is None
    assert sysm.app.state.gateway.waiter.waiting == 0


async def test_with_the_projector_away_a_read_answers_after_its_wait(settings, models, event_log):
    settings.projection_wait_seconds = 1
    sysm = await InProcessSystem(settings).start(generator=False)
    try:
        async with httpx.AsyncClient(base_url=sysm.base_url, timeout=30) as client:
            await _job_projected_then_ended(sysm, event_log, models, "away")
            assert (await read_sse(client, "/scenario/v2/prompt-generation-status/away")).messages
            status = await client.get("/scenario/v2/job-status/away")
            assert status.status_code == 200 and status.json()["status"] == "completed"  # from the log
            first = await client.get(f"/scenario/personas/{PIDS[0]}")
            assert first.status_code == 200 and first.json()["system_prompt"] is None  # what is stored
            retry = await client.post("/scenario/v2/jobs/away/retry-failed")
            assert retry.status_code == 503 and retry.json()["code"] == "projection_lagging", retry.text
            assert retry.headers["Retry-After"] == "1"
    finally:
        await sysm.close()


async def test_a_gateway_started_on_a_quiet_log_reads_without_waiting(settings, models, event_log):
    """Nothing comes after the gateway starts: its feed still counts as having seen the log."""
    await event_log.publish(PersonaCreated(persona=persona("quiet")))
    sysm = await InProcessSystem(settings).start(generator=False)
    try:
        await eventually(lambda: models.personas.find_one({"_id": "quiet"}), what="the persona's document")
        fence = sysm.app.state.gateway.fence
        assert fence.seen == await event_log.last_seq()
        async with httpx.AsyncClient(base_url=sysm.base_url, timeout=5) as client:
            r = await client.get("/scenario/personas/quiet")
        assert r.status_code == 200 and r.json()["id"] == "quiet"
    finally:
        await sysm.close()


@pytest.fixture
async def patient_client(settings, models):
    """A system whose reads wait up to a minute for the projector: on a machine running other
    tests beside it, the shared MongoDB-wire server can hold the projector for seconds, and a
    read that stops waiting answers with what is stored (test_with_the_projector_away_...)."""
    settings.projection_wait_seconds = 60
    sysm = await InProcessSystem(settings).start()
    async with httpx.AsyncClient(base_url=sysm.base_url, timeout=120) as client:
        yield client
    await sysm.close()


async def test_reads_right_after_each_end_find_it(patient_client, scenario_document):
    """Clients that read as soon as their stream ends, several at once: each finds its job ended
    and its personas' prompts, whether by the job list, the persona or the template's personas."""
    client = patient_client
    template_id = await create_template(client, scenario_document)

    async def one_client(n: int) -> None:
        for i in range(8):
            ids = [p["id"] for p in await create_personas(client, template_id, 2)]
            job = await start_job(client, template_id, {ids[0]: "try_mode", ids[1]: "learn_mode"})
            await read_sse(client, job["sse_endpoint"])
            if (n + i) % 3 == 0:
                assert (await client.get(f"/scenario/personas/{ids[-1]}")).json()["system_prompt"]
            elif (n + i) % 3 == 1:
                listed = (await client.get("/scenario/personas", params={"template_id": template_id})).json()
                assert all(p["system_prompt"] for p in listed["personas"] if p["id"] in ids)
            else:
                jobs = (await client.get("/scenario/v2/jobs", params={"limit": 20})).json()["jobs"]
                assert [j["status"] for j in jobs if j["job_id"] == job["job_id"]] == ["completed"]

    await asyncio.gather(*(one_client(n) for n in range(6)))


async def test_a_job_that_ended_before_the_projector_had_its_request_is_found(
        gateway_without_generator, event_log, models):
    """Its view does not exist yet when the read comes: the read waits for the projector too."""
    sysm, client = gateway_without_generator
    for pid in PIDS:
        await event_log.publish(PersonaCreated(persona=persona(pid, f"Name {pid}")))
    await eventually(lambda: models.personas.find_one({"_id": PIDS[-1]}), what="the personas")
    await sysm.stop_service("projector")
    request, *completions = finished_job("early", PIDS)
    for event in (request, *completions):
        await event_log.publish(event)
    await event_log.publish(JobCompleted(job_id="early", status="completed",
                                         results=results(dict.fromkeys(PIDS, "completed"))))
    reads = [asyncio.create_task(client.post("/scenario/v2/jobs/early/retry-failed")),
             asyncio.create_task(client.get("/scenario/v2/jobs"))]
    waiter = sysm.app.state.gateway.waiter

    async def all_waiting() -> bool:
        return waiter.waiting == len(reads)

    await eventually(all_waiting, what="both reads waiting for the projector")
    sysm.start_service("projector")
    retry, listed = [await asyncio.wait_for(r, 30) for r in reads]
    assert retry.status_code == 409 and retry.json()["code"] == "nothing_failed", retry.text  # not 404
    assert [j["status"] for j in listed.json()["jobs"] if j["job_id"] == "early"] == ["completed"]
