"""Cancelling a running job, and retrying exactly the personas that failed."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from contracts import subjects
from contracts.events import JobCancelRequested, PersonaFailed
from services.adapters.event_log import Contended
from services.generator.work import store_outcome
from tests.conftest import SCENARIO
from tests.flows import create_personas, create_template, start_job
from tests.samples import sample
from tests.sse_client import read_sse
from tests.waiting import eventually


async def _three_in_flight(gateway, provider) -> tuple[str, list[dict], dict]:
    """A job of three personas whose LLM calls are all in flight, none answering: its template,
    personas and start answer."""
    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 3)
    provider.hold()
    job = await start_job(gateway, template_id, {p["id"]: "try_mode" for p in personas})

    async def all_in_flight():
        return provider.prompt_calls == 3
    await eventually(all_in_flight, timeout=10, what="three LLM calls in flight")
    return template_id, personas, job


async def test_a_cancelled_job_ends_cancelled_with_its_unfinished_personas(gateway, provider, memory_log):
    template_id, personas, job = await _three_in_flight(gateway, provider)
    job_id = job["job_id"]

    r = await gateway.post(f"/scenario/v2/jobs/{job_id}/cancel")
    assert r.status_code == 202, r.text
    stream = await read_sse(gateway, job["sse_endpoint"])
    assert stream.messages[-2].data == {"type": "status_update", "status": "cancelled"}
    results = stream.messages[-1].data["results"]
    assert results["cancelled"] == 3 and results["successful"] == 0
    progress: dict[str, str] = {}  # what the specification's hook keeps: persona_progress only
    for message in stream.messages:
        if message.data["type"] == "persona_progress":
            progress[message.data["persona_id"]] = message.data["status"]
    assert progress == {p["id"]: "cancelled" for p in personas}
    view = (await gateway.get(f"/scenario/v2/job-status/{job_id}")).json()
    assert view["status"] == "cancelled" and view["cancelled"] == 3
    assert (await gateway.post(f"/scenario/v2/jobs/{job_id}/cancel")).status_code == 409

    # the calls that were in flight are cancelled with the job: none of them is stored
    async def calls_cancelled():
        return provider.cancelled_calls == 3
    await eventually(calls_cancelled, timeout=10, what="the three calls in flight cancelled")
    provider.release()
    later = await start_job(gateway, template_id, {personas[0]["id"]: "learn_mode"})  # the generator goes on
    assert (await read_sse(gateway, later["sse_endpoint"])).messages[-1].data["results"]["successful"] == 1
    assert [s async for s in memory_log.read(f"promptgen.job.{job_id}.persona.*.completed")] == []
    assert (await gateway.get(f"/scenario/v2/job-status/{job_id}")).json()["status"] == "cancelled"
    ends = [s async for s in memory_log.read(subjects.job_history(job_id)) if s.event.type.startswith("job.")]
    assert [s.event.type for s in ends] == ["job.requested", "job.cancel_requested", "job.cancelled"]
    for p in personas[1:]:  # the prompts of the cancelled job were never written
        assert (await gateway.get(f"/scenario/personas/{p['id']}")).json()["system_prompt"] is None


async def test_retry_failed_starts_a_job_for_exactly_the_failed_personas(gateway, provider):
    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 3)
    ids = [p["id"] for p in personas]
    modes = {ids[0]: "learn_mode", ids[1]: "try_mode", ids[2]: "assess_mode"}
    provider.refuse = {ids[1]}
    job = await start_job(gateway, template_id, modes)
    stream = await read_sse(gateway, job["sse_endpoint"])
    results = stream.messages[-1].data["results"]
    assert (results["successful"], results["failed"]) == (2, 1)
    assert results["personas"][ids[1]]["error_code"] == "llm_rejected"

    provider.refuse = set()
    r = await gateway.post(f"/scenario/v2/jobs/{job['job_id']}/retry-failed")
    assert r.status_code == 202, r.text
    retry = r.json()
    assert retry["retry_of"] == job["job_id"] and retry["persona_count"] == 1
    again = await read_sse(gateway, retry["sse_endpoint"])
    results = again.messages[-1].data["results"]
    assert list(results["personas"]) == [ids[1]] and results["personas"][ids[1]]["mode"] == "try_mode"
    assert results["successful"] == 1
    view = (await gateway.get(f"/scenario/v2/job-status/{retry['job_id']}")).json()
    assert view["retry_of"] == job["job_id"]
    nothing = await gateway.post(f"/scenario/v2/jobs/{retry['job_id']}/retry-failed")
    assert nothing.status_code == 409 and nothing.json()["code"] == "nothing_failed"
    twice = await gateway.post(f"/scenario/v2/jobs/{job['job_id']}/retry-failed")  # its retry exists: no other
    assert twice.status_code == 409 and twice.json()["code"] == "already_retried", twice.text
    assert twice.json()["ids"] == [retry["job_id"]] and retry["job_id"] in twice.json()["detail"]


async def test_a_retry_asked_many_times_at_once_starts_one_job(gateway, provider, memory_log):
    """A double click, or a client that asks again after a timeout: one job, whatever the answers."""
    template_id = await create_template(gateway, SCENARIO)
    ids = [p["id"] for p in await create_personas(gateway, template_id, 2)]
    provider.refuse = {ids[0]}
    job = await start_job(gateway, template_id, {ids[0]: "try_mode", ids[1]: "learn_mode"})
    await read_sse(gateway, job["sse_endpoint"])
    provider.refuse = set()
    answers = await asyncio.gather(*(gateway.post(f"/scenario/v2/jobs/{job['job_id']}/retry-failed")
                                     for _ in range(5)))
    assert all(a.status_code == 202 or (a.status_code == 409 and a.json()["code"] == "already_retried")
               for a in answers), [a.text for a in answers]
    started = {a.json()["job_id"] for a in answers if a.status_code == 202}
    refused = {a.json()["ids"][0] for a in answers if a.status_code == 409 and a.json()["code"] == "already_retried"}
    assert len(started) == 1 and refused <= started, [a.text for a in answers]
    requests = [s async for s in memory_log.read(subjects.ALL) if s.event.type == "job.requested"]
    assert [s.event.job_id for s in requests if s.event.retry_of == job["job_id"]] == list(started)


async def test_a_cancel_that_crosses_the_jobs_end_is_a_409_and_stores_nothing(gateway, memory_log, monkeypatch):
    """The gateway looks for the job's end, and the end is stored before the cancel is: the log,
    which checks as it stores the cancel, refuses it, and the client hears the job had ended
    (not a 202 for a job that then says it completed)."""
    from services.gateway.routes import jobs as job_routes

    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 1)
    job = await start_job(gateway, template_id, {personas[0]["id"]: "try_mode"})
    await read_sse(gateway, job["sse_endpoint"])  # the job has ended, completed
    looked = job_routes.finished_event
    seen: list[str] = []

    async def just_before_the_end(event_log, job_id):  # the first look comes before the end is stored
        seen.append(job_id)
        return None if len(seen) == 1 else await looked(event_log, job_id)

    monkeypatch.setattr(job_routes, "finished_event", just_before_the_end)
    r = await gateway.post(f"/scenario/v2/jobs/{job['job_id']}/cancel")
    assert r.status_code == 409 and r.json()["code"] == "job_finished", r.text
    assert "(completed)" in r.json()["detail"]
    assert [s async for s in memory_log.read(subjects.job(job["job_id"], "cancel_requested"))] == []


async def test_a_cancelled_job_resumes_after_any_message_of_its_end_and_ends_for_good(gateway, provider):
    """Its end is several messages (each cut-short persona's, the status, the results): resumed
    after any of them, the stream sends exactly the rest; after the last, a 204."""
    _, _, job = await _three_in_flight(gateway, provider)
    assert (await gateway.post(f"/scenario/v2/jobs/{job['job_id']}/cancel")).status_code == 202
    full = await read_sse(gateway, job["sse_endpoint"])
    ids = [m.id for m in full.messages]
    end = ids[-1]
    assert ids[-5:] == [f"{end}-0", f"{end}-1", f"{end}-2", f"{end}-3", end]
    for i, seen in enumerate(ids):
        rest = await read_sse(gateway, job["sse_endpoint"], headers={"Last-Event-ID": seen})
        if seen == end:
            assert rest.status == 204
        else:
            assert rest.status == 200 and [m.id for m in rest.messages] == ids[i + 1:], seen
            assert [m.data for m in rest.messages] == [m.data for m in full.messages[i + 1:]]
    provider.release()


async def test_an_answer_in_hand_when_the_cancel_is_stored_is_not_stored_after_it(gateway, provider, memory_log):
    """The race of a cancel with answers: the cancel is stored while the generator holds its
    answers and has not heard of it yet (its notice on the way). The log refuses the outcomes,
    so none follows the cancel: the job's results, its view, its stream and its personas agree
    that each persona was cancelled, and no prompt is written."""
    _, personas, job = await _three_in_flight(gateway, provider)
    job_id = job["job_id"]
    await memory_log.publish_unannounced(JobCancelRequested(job_id=job_id, correlation_id=job_id))
    provider.release()  # the three answers come back; the generator still takes the job for running

    stream = await read_sse(gateway, job["sse_endpoint"])
    results = stream.messages[-1].data["results"]
    assert (results["cancelled"], results["successful"]) == (3, 0), results
    finals = [(m.data["persona_id"], m.data["status"]) for m in stream.messages
              if m.data["type"] == "persona_progress" and m.data["status"] != "processing"]
    assert sorted(finals) == sorted((p["id"], "cancelled") for p in personas), "one final status each"
    view = (await gateway.get(f"/scenario/v2/job-status/{job_id}")).json()
    assert (view["status"], view["cancelled"], view["completed"]) == ("cancelled", 3, 0), view
    outcomes = [s.event.type async for s in memory_log.read(subjects.job_history(job_id))
                if s.event.type in ("persona.completed", "persona.failed")]
    assert outcomes == []
    for p in personas:
        assert (await gateway.get(f"/scenario/personas/{p['id']}")).json()["system_prompt"] is None


async def test_a_persona_ended_before_the_cancel_is_not_counted_cancelled_by_its_other_end(memory_log):
    """A persona's two ends share one Nats-Msg-Id: a failure published (a dead letter, say) after
    its completion and its job's cancel is the completion's duplicate, stored, not cancelled."""
    completed = sample("persona.completed")
    await memory_log.publish(completed)
    await memory_log.publish(JobCancelRequested(job_id=completed.job_id))
    late = PersonaFailed(job_id=completed.job_id, persona_id=completed.persona_id, persona_name="Dr. Smith",
                         mode="try_mode", error="no worker could finish", error_code="delivery_exhausted",
                         attempts=5)
    assert await store_outcome(memory_log, late) == "stored"
    other = late.model_copy(update={"persona_id": "p9"})  # a persona that had not ended: cancelled
    assert await store_outcome(memory_log, other) == "cancelled"
    assert [s.event.type async for s in memory_log.read(subjects.ALL)] == ["persona.completed", "job.cancel_requested"]


async def test_an_outcome_kept_out_by_garbage_flooding_its_cancel_subject_is_not_counted_cancelled(memory_log,
                                                                                                  monkeypatch):
    """Garbage written on the job's cancel subject faster than the outcome is asked again is no
    cancel: the outcome is not dropped as cancelled but not stored yet (its work item is
    delivered again), and stored once the flood stops."""
    completed = sample("persona.completed")
    cancel = subjects.job(completed.job_id, "cancel_requested")
    newest = memory_log.last_seq_on

    async def flooded(subject: str, **kwargs) -> int | None:
        seen = await newest(subject, **kwargs)
        await memory_log.publish_to(memory_log.stream, cancel, b"{")
        return seen

    await memory_log.publish_to(memory_log.stream, cancel, b"{")
    monkeypatch.setattr(memory_log, "last_seq_on", flooded)
    with pytest.raises(Contended):
        await store_outcome(memory_log, completed)
    monkeypatch.undo()
    assert await store_outcome(memory_log, completed) == "stored"
    assert (await memory_log.first_readable_on([completed.subject()])).event == completed


async def test_a_cancel_whose_job_keeps_moving_is_decided_again_by_the_sweep_not_parked(
    memory_log, memory_models, clock, monkeypatch,
):
    """A cancel while the job's work items are still being dispatched: each decision of its end
    is overtaken by the job's next event. After a few in a row the job is left for the next
    sweep, which decides it on its whole history (before, it was parked, and the job ran on
    until its deadline)."""
    from datetime import timedelta

    from structlog.testing import capture_logs

    from services.adapters.parked import ParkedEvents
    from services.projector.job_manager import END_TRIES, JOB_MANAGER, JobManager
    from tests.samples import job_requested

    await memory_log.publish(job_requested("j1", ("p1", "p2")).model_copy(
        update={"deadline": clock() + timedelta(hours=1)}))
    parked = ParkedEvents(memory_log)
    manager = JobManager(memory_log, memory_models, parked=parked, clock=clock)
    publish_end, overtaken = manager._publish_end, []

    async def overtaken_at_first(end, condition) -> bool:
        if len(overtaken) < END_TRIES:  # as if another work item of the job came each time
            overtaken.append(end)
            return False
        return await publish_end(end, condition)

    monkeypatch.setattr(manager, "_publish_end", overtaken_at_first)
    running = asyncio.create_task(manager.run(asyncio.Event(), sweep_seconds=0.05))
    try:
        with capture_logs() as logs:
            await memory_log.publish(JobCancelRequested(job_id="j1"))
            end = await eventually(lambda: memory_log.last(subjects.job("j1", "cancelled")), what="the job's end")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert len(overtaken) == END_TRIES and [e for e in logs if e["event"] == "job_end_deferred"]
    assert end.event.results.cancelled == 2
    assert await parked.list(JOB_MANAGER) == [] and manager.undecided == set()


async def test_a_cancelled_job_the_job_manager_did_not_end_before_a_restart_is_ended_by_the_sweep(
    memory_log, memory_models, clock,
):
    """A cancel's end, left for the sweep while the job's events kept overtaking it, was only in
    the job manager's memory: after a restart the replay starts past the cancel. The sweep finds
    the job in the read models, running with a cancel asked, and ends it."""
    from datetime import timedelta

    from services.adapters.parked import ParkedEvents
    from services.projector.job_manager import JOB_MANAGER, JobManager
    from tests.samples import job_requested

    request = job_requested("j1", ("p1", "p2")).model_copy(update={"deadline": clock() + timedelta(hours=1)})
    await memory_log.publish(request)
    await memory_log.publish(JobCancelRequested(job_id="j1"))
    await memory_models.jobs.insert_one({"_id": "j1", "status": "processing", "deadline": request.deadline,
                                         "cancel_requested_at": clock()})  # as the fold wrote it
    state = await memory_log.state()
    await memory_models.save_position(JOB_MANAGER, state.last_seq, state.log_id)  # stored past the cancel
    manager = JobManager(memory_log, memory_models, parked=ParkedEvents(memory_log), clock=clock)
    running = asyncio.create_task(manager.run(asyncio.Event(), sweep_seconds=0.05))
    try:
        end = await eventually(lambda: memory_log.last(subjects.job("j1", "cancelled")), what="the job's end")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert end.event.results.cancelled == 2


async def test_a_job_just_started_is_running_to_retry_failed_before_the_projector_has_it(running, gateway, provider):
    """Its request is in the log, not yet in the read models: retry-failed says the job runs
    (409), not that it never existed (404)."""
    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 2)
    provider.hold()
    await running.stop_service("projector")
    try:
        job = await start_job(gateway, template_id, {p["id"]: "try_mode" for p in personas})
        r = await gateway.post(f"/scenario/v2/jobs/{job['job_id']}/retry-failed")
        assert r.status_code == 409 and r.json()["code"] == "job_running", r.text
        unknown = await gateway.post("/scenario/v2/jobs/no-such-job/retry-failed")
        assert unknown.status_code == 404 and unknown.json()["code"] == "job_not_found"
    finally:
        await running.start_service("projector")
        provider.release()
