"""Job deadlines, retention of finished job views, and jobs that aged out of the log."""

from __future__ import annotations

from datetime import timedelta

import httpx
from nats.js.errors import NotFoundError
from structlog.testing import capture_logs

from contracts import subjects
from services.adapters.parked import ParkedEvents
from services.generator.consumers import DISPATCHER
from services.generator.work import store_outcome
from services.projector.job_manager import JobManager
from tests.conftest import InProcessSystem
from tests.flows import create_personas, create_template, cycle_modes, follow_to_end, start_job
from tests.samples import T0, job_requested, sample
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

            # a generator that arrives late changes nothing: the job has ended, so it has no work
            system.start_service("generator")

            async def request_taken() -> bool:
                try:
                    info = await event_log.js.consumer_info(event_log.stream, DISPATCHER)
                except NotFoundError:  # the generator has not bound its consumer yet
                    return False
                return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq > 0

            await eventually(request_taken, what="the late generator taking the job's request")
            assert [s async for s in event_log.read(subjects.job_persona(job["job_id"], "*", "requested"))] == []
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


async def test_an_outcome_stored_while_an_expiry_is_decided_is_counted_in_it(event_log, models):
    """The deadline sweep reads a job's history, decides it expired, and publishes that; a persona's
    outcome stored in between was counted failed in the job's results while its prompt was saved,
    and SSE clients heard it completed, then failed. The end is stored only if nothing of the job
    came after what it was decided on: decided again, the outcome counts."""
    job_id = "jrace"
    await event_log.publish(job_requested(job_id, ("p1", "p2")))
    manager = JobManager(event_log, models, parked=ParkedEvents(event_log), clock=lambda: T0 + timedelta(days=1))
    learn, learnt = manager.running.learn, []

    async def an_outcome_arrives_meanwhile(job: str):
        view = await learn(job)
        if not learnt:  # the first decision's history is read: p1's outcome comes just after
            done = sample("persona.completed").model_copy(update={"job_id": job_id, "persona_id": "p1"})
            await event_log.publish(done)
        learnt.append(view)
        return view

    manager.running.learn = an_outcome_arrives_meanwhile
    await manager.decide([job_id])
    assert len(learnt) == 2  # decided twice: the first end was refused
    end = (await event_log.last(subjects.job(job_id, "expired"))).event
    assert {p: r.status for p, r in end.results.personas.items()} == {"p1": "completed", "p2": "failed"}
    assert end.results.successful == 1


async def test_an_outcome_after_its_jobs_expiry_is_not_stored(event_log, models):
    """A call that answered just before the deadline stores its outcome after the deadline sweep's
    JobExpired: the job counted the persona failed as expired, so its prompt is not stored either
    (as after a cancel). Another job's outcome, and one stored before the end, are."""
    request = await event_log.publish(job_requested("jlate", ("p1", "p2")))
    manager = JobManager(event_log, models, parked=ParkedEvents(event_log), clock=lambda: T0 + timedelta(days=1))
    early = sample("persona.completed").model_copy(update={"job_id": "jlate", "persona_id": "p1"})
    assert await store_outcome(event_log, early, request) == "stored"
    await manager.decide(["jlate"])
    expired = (await event_log.last(subjects.job("jlate", "expired"))).event
    assert expired.results.personas["p2"].error_code == "expired"

    late = early.model_copy(update={"persona_id": "p2", "prompt": "LATE"})
    with capture_logs() as logs:
        assert await store_outcome(event_log, late, request) == "expired"
        assert await store_outcome(event_log, late) == "expired"  # its request looked up
    assert await event_log.last(late.subject()) is None
    assert [line["because"] for line in logs if line["event"] == "outcome_dropped"] == ["expired"] * 2
    other = await event_log.publish(job_requested("jother", ("p2",)))
    assert await store_outcome(event_log, late.model_copy(update={"job_id": "jother"}), other) == "stored"
