"""A projector never reads a log that was reset under its positions as if it were the same.

The stream deleted and created again (by an operator, or a NATS deployment that lost its
data) starts its sequences again at 1. With fewer events than the projector's checkpoint, a
sequence comparison sees it; with more, only the log's identity (when the stream was
created) does. In both cases, and also when it happens while the projector runs, the
projector applies nothing of the new log, says why (not ready, an error line), and
`promptgen rebuild` makes it fold the new log from its first event, the job manager too.
"""

from __future__ import annotations

import asyncio

import pytest

from services.adapters.event_log import EventLog
from services.cli.rebuild import run_rebuild
from services.projector.bootstrap import ProjectorService, bootstrap
from services.projector.job_manager import JOB_MANAGER
from services.runtime.lifecycle import cancel_and_wait
from tests.samples import finished_job
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)


async def _publish_jobs(event_log: EventLog, *job_ids: str) -> None:
    """Each job requested and every persona completed: the job manager ends it."""
    for job_id in job_ids:
        for event in finished_job(job_id):
            await event_log.publish(event)


async def _recreate_stream(event_log: EventLog) -> None:
    await event_log.js.delete_stream(event_log.stream)
    await event_log.ensure_stream()


class Running:
    """The projector's own composition root, run as a task of the test."""

    def __init__(self, service: ProjectorService) -> None:
        self.service, self.stop = service, asyncio.Event()
        self.task = asyncio.create_task(service.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await cancel_and_wait(self.task)
        await self.service.aclose()


async def _start(settings) -> Running:
    return Running(await bootstrap(settings))


async def _job_ids(models) -> dict[str, str]:
    return {doc["_id"]: doc["status"] async for doc in models.jobs.find({}, {"status": 1})}


async def _caught_up(models, event_log, jobs: dict[str, str]) -> bool:
    return await _job_ids(models) == jobs and await models.checkpoint() == await event_log.last_seq() \
        and await models.position(JOB_MANAGER) == await event_log.last_seq()


async def _halted(running: Running) -> bool:
    ready, checks = await running.service.health.ready()
    return not ready and checks["event_log"] is False and running.service.fold.watch.reason is not None \
        and running.service.job_manager.watch.reason is not None


async def _first_log(settings, event_log, models) -> tuple[int, str | None]:
    """Three jobs folded and ended; the projector stopped. Returns its checkpoint and log."""
    running = await _start(settings)
    try:
        await _publish_jobs(event_log, "old-1", "old-2", "old-3")
        done = dict.fromkeys(("old-1", "old-2", "old-3"), "completed")
        await eventually(lambda: _caught_up(models, event_log, done), what="the first log folded")
    finally:
        await running.close()
    mark = await models.checkpoint_mark()
    assert mark.log_id is not None and (await models.position_mark(JOB_MANAGER)).log_id == mark.log_id
    return mark.seq, mark.log_id


async def _rebuild_folds_the_new_log(settings, event_log, models, running: Running, new_jobs: list[str]) -> None:
    assert await run_rebuild(settings) == 0  # through the running projector
    expected = dict.fromkeys(new_jobs, "completed")  # the job manager, restarted too, ended them
    await eventually(lambda: _caught_up(models, event_log, expected), what="the new log folded after the rebuild")
    ready, checks = await running.service.health.ready()
    assert ready, checks
    new_log = (await event_log.state()).log_id
    assert (await models.checkpoint_mark()).log_id == new_log
    assert (await models.position_mark(JOB_MANAGER)).log_id == new_log


@pytest.mark.parametrize("new_jobs", [["new-1"], ["new-1", "new-2", "new-3", "new-4", "new-5"]],
                         ids=["fewer-events-than-the-checkpoint", "more-events-than-the-checkpoint"])
async def test_a_log_recreated_while_the_projector_was_stopped_is_not_followed(settings, event_log, models,
                                                                               new_jobs):
    checkpoint, old_log = await _first_log(settings, event_log, models)
    before = await _job_ids(models)
    await _recreate_stream(event_log)
    await _publish_jobs(event_log, *new_jobs)
    state = await event_log.state()
    assert state.log_id != old_log
    assert (state.last_seq < checkpoint) == (len(new_jobs) == 1)  # both sides of a sequence comparison

    running = await _start(settings)
    try:
        await eventually(lambda: _halted(running), what="the projector halted on the reset log")
        assert await _job_ids(models) == before, "nothing of the new log may be applied"
        assert await models.checkpoint() == checkpoint
        assert (await event_log.state()).last_seq == state.last_seq, "no job of the new log decided before"
        await _rebuild_folds_the_new_log(settings, event_log, models, running, new_jobs)
    finally:
        await running.close()


async def test_a_log_recreated_while_the_projector_runs_is_not_followed(settings, event_log, models):
    running = await _start(settings)
    try:
        await _publish_jobs(event_log, "old-1")
        await eventually(lambda: _caught_up(models, event_log, {"old-1": "completed"}), what="the first log folded")
        checkpoint = await models.checkpoint()
        await _recreate_stream(event_log)
        new_jobs = ["new-1", "new-2", "new-3"]
        await _publish_jobs(event_log, *new_jobs)
        assert (await event_log.state()).last_seq > checkpoint
        await eventually(lambda: _halted(running), timeout=40, what="the projector halted on the recreated log")
        assert await _job_ids(models) == {"old-1": "completed"}, "nothing of the new log may be applied"
        assert await models.checkpoint() == checkpoint
        await _rebuild_folds_the_new_log(settings, event_log, models, running, new_jobs)
    finally:
        await running.close()
