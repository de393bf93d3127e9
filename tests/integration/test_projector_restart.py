"""The job manager keeps every job moving when it dies or fails between events and decisions.

It decides from the log with a position of its own, stored after its decisions: a restart
replays what it had not stored, and deciding again publishes no second end.
"""

from __future__ import annotations

import asyncio

from contracts import subjects
from contracts.events import JobFinished, PersonaProgress
from services.adapters.event_log import EventLog
from services.adapters.parked import ParkedEvents
from services.projector.fold import Fold
from services.projector.job_manager import JOB_MANAGER, JobManager
from services.runtime.lifecycle import cancel_and_wait
from tests.samples import finished_job


async def _publish_a_finished_job(event_log: EventLog, job_id: str) -> None:
    for event in finished_job(job_id):
        await event_log.publish(event)


def _job_manager(event_log, models) -> JobManager:
    return JobManager(event_log, models, parked=ParkedEvents(event_log))


async def _ends(event_log: EventLog, job_id: str) -> list[JobFinished]:
    return [s.event async for s in event_log.read(subjects.job_history(job_id)) if isinstance(s.event, JobFinished)]


async def _run_until_ended(event_log: EventLog, manager: JobManager, job_id: str) -> JobFinished:
    """Run ``manager`` until ``job_id`` has its end event, and until its position passed it."""
    task = asyncio.create_task(manager.run(asyncio.Event(), sweep_seconds=60))
    try:
        async with asyncio.timeout(20):
            while not (ends := await _ends(event_log, job_id)) or manager.position < await event_log.last_seq():
                assert not task.done(), task.exception()
                await asyncio.sleep(0.02)
        return ends[0]
    finally:
        assert await cancel_and_wait(task), "the job manager did not stop when cancelled"


async def test_a_restarted_job_manager_ends_a_job_the_fold_had_already_stored(event_log, models):
    await models.ensure_indexes()
    await _publish_a_finished_job(event_log, "j1")
    fold = Fold(event_log, models, parked=ParkedEvents(event_log))
    async for batch in event_log.read_batches(subjects.ALL):
        await fold.apply(batch)
    assert await models.checkpoint() == await event_log.last_seq()
    assert await _ends(event_log, "j1") == []  # the job manager died before deciding

    end = await _run_until_ended(event_log, _job_manager(event_log, models), "j1")
    assert end.status == "completed" and end.results.successful == 2
    assert await models.position(JOB_MANAGER) == await event_log.last_seq()


def _counting_publishes(event_log: EventLog) -> list[str]:
    """The job ends published through ``event_log`` from now on (stored or not)."""
    published: list[str] = []
    publish = event_log.publish

    async def counting(event, *args, **kwargs):
        if isinstance(event, JobFinished):
            published.append(event.job_id)
        return await publish(event, *args, **kwargs)

    event_log.publish = counting  # type: ignore[method-assign]
    return published


def _counting_learns(manager: JobManager) -> list[str]:
    """The jobs whose history ``manager`` reads back from the log from now on."""
    learnt: list[str] = []
    learn = manager.running.learn

    async def counting(job_id: str):
        learnt.append(job_id)
        return await learn(job_id)

    manager.running.learn = counting  # type: ignore[method-assign]
    return learnt


async def test_deciding_again_after_a_crash_publishes_no_second_end(event_log, models):
    await _publish_a_finished_job(event_log, "j1")
    await _run_until_ended(event_log, _job_manager(event_log, models), "j1")
    await models.db["consumer_positions"].delete_many({})  # it died before storing its position

    published = _counting_publishes(event_log)
    await _run_until_ended(event_log, _job_manager(event_log, models), "j1")
    assert len(await _ends(event_log, "j1")) == 1
    # replayed events are decided on the whole history, which holds the end: nothing is published
    # (so no second end either once the log's deduplication window has passed)
    assert published == []


async def test_a_job_followed_from_its_request_ends_without_reading_its_history(event_log, models):
    manager = _job_manager(event_log, models)
    learnt = _counting_learns(manager)
    task = asyncio.create_task(manager.run(asyncio.Event(), sweep_seconds=60))
    try:
        async with asyncio.timeout(20):
            while manager.log_id is None:  # following, past the (empty) replay
                assert not task.done(), task.exception()
                await asyncio.sleep(0.01)
        await _publish_a_finished_job(event_log, "j1")
        async with asyncio.timeout(20):
            while not (ends := await _ends(event_log, "j1")):
                assert not task.done(), task.exception()
                await asyncio.sleep(0.02)
            while "j1" in manager.running.jobs:  # forgotten once its end comes back (a moment after it is stored)
                assert not task.done(), task.exception()
                await asyncio.sleep(0.02)
            # an event of the job stored after its end (a redelivered item's progress, say)
            late = await event_log.publish(PersonaProgress(job_id="j1", persona_id="p1", persona_name="p1",
                                                           mode="try_mode", attempt=2))
            assert late == await event_log.last_seq()  # stored, not a duplicate
            while manager.position < late:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.02)
    finally:
        await cancel_and_wait(task)
    assert ends[0].status == "completed" and ends[0].results.successful == 2
    assert learnt == []  # not even for the event after the job's end
    assert "j1" not in manager.running.jobs and len(await _ends(event_log, "j1")) == 1


async def test_a_job_met_mid_way_is_learnt_from_its_history_once(event_log, models):
    await _publish_a_finished_job(event_log, "j1")
    request_seq = (await event_log.last_seq()) - 2  # the request, then its two personas' completions
    await models.save_position(JOB_MANAGER, request_seq, (await event_log.state()).log_id)
    manager = _job_manager(event_log, models)
    learnt = _counting_learns(manager)

    end = await _run_until_ended(event_log, manager, "j1")
    assert end.status == "completed" and end.results.successful == 2
    assert learnt.count("j1") == 1  # the followed completions folded again into what it learnt
    assert len(await _ends(event_log, "j1")) == 1


async def test_a_failure_while_deciding_a_job_does_not_stop_the_job_manager(event_log, models):
    manager = _job_manager(event_log, models)
    decide = manager.decide
    failures = []

    async def flaky_decide(job_ids, **kwargs):
        job_ids = list(job_ids)
        if job_ids and not failures:
            failures.append(job_ids)
            raise RuntimeError("the bus went away for a moment")
        await decide(job_ids, **kwargs)

    manager.decide = flaky_decide
    await _publish_a_finished_job(event_log, "j1")
    end = await _run_until_ended(event_log, manager, "j1")
    assert failures == [["j1"]] and end.results.successful == 2


async def test_the_position_is_stored_at_most_once_an_interval_and_when_stopping(event_log, models):
    """One MongoDB write per batch of job events was a third of the projector's writes: while
    events come, the position is stored once per ``position_every``, and the last on the way out."""
    stored: list[int] = []

    class Counting:  # the read models, each stored position noted
        def __getattr__(self, name):
            return getattr(models, name)

        async def save_position(self, consumer, seq, log_id=None):
            stored.append(seq)
            await models.save_position(consumer, seq, log_id)

    manager = JobManager(event_log, Counting(), parked=ParkedEvents(event_log), position_every=3600)
    task = asyncio.create_task(manager.run(asyncio.Event(), sweep_seconds=60))
    try:
        for job_id in ("j1", "j2", "j3"):  # one batch each: the manager catches up between them
            await _publish_a_finished_job(event_log, job_id)
            async with asyncio.timeout(20):
                while not await _ends(event_log, job_id) or manager.position < await event_log.last_seq():
                    assert not task.done(), task.exception()
                    await asyncio.sleep(0.02)
    finally:
        assert await cancel_and_wait(task)
    last = await event_log.last_seq()
    assert len(stored) == 2 and stored[0] < last  # the first move, then nothing for the interval
    assert stored[-1] == last == await models.position(JOB_MANAGER)  # the last, stored as it stopped


async def test_a_position_whose_store_failed_is_stored_when_the_keeper_starts_again(event_log, models):
    from pymongo.errors import OperationFailure

    failures: list[int] = []

    class FailingOnce:  # the read models, refusing the first store of the last position
        def __getattr__(self, name):
            return getattr(models, name)

        async def save_position(self, consumer, seq, log_id=None):
            if not failures and seq == await event_log.last_seq() and await _ends(event_log, "j1"):
                failures.append(seq)
                raise OperationFailure("refused once", code=2)  # not transient: no retry in place
            await models.save_position(consumer, seq, log_id)

    manager = JobManager(event_log, FailingOnce(), parked=ParkedEvents(event_log), position_every=0.05)
    task = asyncio.create_task(manager.run(asyncio.Event(), sweep_seconds=60))
    try:
        await _publish_a_finished_job(event_log, "j1")
        async with asyncio.timeout(20):  # stored while it runs, with nothing more coming
            while not failures or await models.position(JOB_MANAGER) != await event_log.last_seq():
                assert not task.done(), task.exception()
                await asyncio.sleep(0.05)
    finally:
        assert await cancel_and_wait(task)
