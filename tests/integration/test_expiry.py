"""Job deadlines, retention of finished job views, and jobs that aged out of the log."""

from __future__ import annotations

import httpx
from nats.js.errors import NotFoundError

from contracts import subjects
from services.generator.consumers import WORKERS
from tests.conftest import InProcessSystem
from tests.flows import create_personas, create_template, cycle_modes, follow_to_end, start_job
from tests.sse_client import read_sse
from tests.waiting import eventually


async def test_a_job_past_its_deadline_expires_and_sse_clients_see_the_end(settings, models, event_log,
                                                                          scenario_document):
    settings.job_deadline_seconds = 1
    settings.expiry_sweep_seconds = 0.1
    system = await InProcessSystem(settings).start(generator=False)  # nothing will work on it
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            template_id = await create_template(client, scenario_document)
            personas = await create_personas(client, template_id, 2)
            job = await start_job(client, template_id, cycle_modes([p["id"] for p in personas]))
            stream = await read_sse(client, job["sse_endpoint"])
            assert [m.data["type"] for m in stream.messages] == [
                "status_update", "persona_progress", "persona_progress", "status_update", "results"]
            assert {(m.data["persona_id"], m.data["status"]) for m in stream.messages[1:3]} == {
                (p["id"], "failed") for p in personas}
            assert stream.messages[3].data["status"] == "expired"
            results = stream.messages[-1].data["results"]
            assert results["failed"] == 2 and results["successful"] == 0
            assert {p["error_code"] for p in results["personas"].values()} == {"expired"}
            view = (await client.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
            assert view["status"] == "expired" and view["failed"] == 2
            assert all(p["error_code"] == "expired" for p in view["personas"].values())

            # a generator that arrives late changes nothing: the work is past its deadline
            system.start_service("generator")

            async def work_taken() -> bool:
                try:
                    info = await event_log.js.consumer_info(event_log.stream, WORKERS)
                except NotFoundError:  # the generator has not bound its consumer yet
                    return False
                return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq > 0

            await eventually(work_taken, what="the late generator taking both work items")
            events = (await client.get(f"/scenario/v2/jobs/{job['job_id']}/events")).json()["events"]
            types = [e["type"] for e in events]
            assert "persona.completed" not in types and types.count("job.expired") == 1
            assert not [t for t in types if t in ("job.completed", "job.cancelled")]
            assert all(e["event"]["error_code"] == "expired" for e in events if e["type"] == "persona.failed")
            view = (await client.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
            assert view["status"] == "expired"
    finally:
        await system.close()


async def test_finished_job_views_leave_after_their_retention_and_fall_back_to_the_log(
        client, models, event_log, scenario_document):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 2)
    job = await start_job(client, template_id, cycle_modes([p["id"] for p in personas]))
    other = await start_job(client, template_id, cycle_modes([p["id"] for p in personas]))
    await follow_to_end(client, job)
    await follow_to_end(client, other)
    doc = await models.jobs.find_one({"_id": job["job_id"]})
    assert doc["expire_at"] > doc["finished_at"]

    # the projector's sweep, once the job's retention ended (the other job's had not)
    await models.jobs.update_one({"_id": job["job_id"]}, {"$set": {"expire_at": doc["finished_at"]}})
    assert await models.drop_expired_jobs(doc["finished_at"]) == 1
    assert await models.jobs.find_one({"_id": job["job_id"]}) is None
    assert await models.job_personas.count_documents({"job_id": job["job_id"]}) == 0
    assert await models.job_personas.count_documents({"job_id": other["job_id"]}) == 2
    # the log still answers
    view = (await client.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
    assert view["status"] == "completed" and view["completed"] == 2 and view["results"]["successful"] == 2


async def test_a_job_aged_out_of_the_log_is_404_with_a_message(client, models, event_log, scenario_document):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 1)
    job = await start_job(client, template_id, cycle_modes([p["id"] for p in personas]))
    await follow_to_end(client, job)
    await models.jobs.delete_one({"_id": job["job_id"]})
    await event_log.js.purge_stream(event_log.stream, subject=subjects.job_history(job["job_id"]))
    for path in (job["sse_endpoint"], f"/scenario/v2/job-status/{job['job_id']}"):
        r = await client.get(path)
        assert r.status_code == 404 and "aged out" in r.json()["detail"]
