"""The projector keeps every job moving when it dies or fails between storing and deciding."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from contracts import subjects
from contracts.events import PersonaCompleted
from services.bus import EventLog
from services.projector.projector import Projector
from services.runtime import cancel_and_wait
from tests.samples import job_requested


async def _publish_a_finished_job(event_log: EventLog, job_id: str) -> None:
    request = job_requested(job_id, ("p1", "p2")).model_copy(
        update={"deadline": datetime.now(UTC) + timedelta(minutes=30)})
    await event_log.publish(request)
    for p in ("p1", "p2"):
        await event_log.publish(PersonaCompleted(
            job_id=job_id, persona_id=p, persona_name=p, mode="try_mode", generation_mode="try_mode",
            prompt=f"You are {p}.", prompt_length=11, provider="offline", model="m"))


async def _job_end(event_log: EventLog, projector: Projector, job_id: str):
    """Run ``projector`` until ``job_id`` has its end event; returns that event."""
    task = asyncio.create_task(projector.run(asyncio.Event(), sweep_seconds=60))
    try:
        async with asyncio.timeout(20):
            while (end := await event_log.last(subjects.job(job_id, "completed"))) is None:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.02)
        return end.event
    finally:
        assert await cancel_and_wait(task), "the projector did not stop when cancelled"


async def test_a_restarted_projector_ends_a_job_whose_last_persona_it_had_already_stored(event_log, models):
    await models.ensure_indexes()
    await _publish_a_finished_job(event_log, "j1")

    # the first projector stores every event and its checkpoint, then dies before deciding the job
    first = Projector(event_log, models)
    async for batch in event_log.read_batches(subjects.ALL):
        await first.apply(batch)
    assert await models.checkpoint() == await event_log.last_seq()
    assert await event_log.last(subjects.job("j1", "completed")) is None

    # a new projector resumes after the checkpoint: no event of that job is left to fold
    end = await _job_end(event_log, Projector(event_log, models), "j1")
    assert end.status == "completed" and end.results.successful == 2


async def test_a_failure_while_deciding_a_job_does_not_stop_the_projector(event_log, models):
    await models.ensure_indexes()
    projector = Projector(event_log, models)
    decide = projector.examine
    failures = []

    async def flaky_examine(job_ids, **kwargs):
        if job_ids and not failures:
            failures.append(list(job_ids))
            raise RuntimeError("the bus went away for a moment")
        await decide(job_ids, **kwargs)

    projector.examine = flaky_examine
    await _publish_a_finished_job(event_log, "j1")
    end = await _job_end(event_log, projector, "j1")
    assert failures == [["j1"]] and end.results.successful == 2
