"""Job deadlines on a clock the test moves, read-your-writes through the projection waiter, and a
rebuild of the read models while the projector runs."""

from __future__ import annotations

import asyncio

from contracts import subjects
from services.adapters.parked import ParkedEvents
from services.gateway.projection import ProjectionWaiter
from services.generator.work import fan_out
from services.projector.fold import Fold
from services.testing import memory_read_models
from tests.conftest import SCENARIO
from tests.flows import create_personas, create_template, cycle_modes, follow_to_end, start_job
from tests.readmodels import snapshot
from tests.samples import job_requested
from tests.sse_client import read_sse
from tests.waiting import eventually


async def test_a_job_past_its_deadline_expires_and_late_work_changes_nothing(start_system, clock, service_settings):
    system = await start_system(generator=False)  # nothing works on the job
    gateway = system.client
    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 2)
    job = await start_job(gateway, template_id, cycle_modes([p["id"] for p in personas]))
    job_id = job["job_id"]

    async def projected():
        return await system.models.jobs.find_one({"_id": job_id})
    await eventually(projected, what="the job's view in the read models")
    request = (await system.event_log.last(subjects.job(job_id, "requested"))).event
    for item in fan_out(request):  # dispatched by a generator whose workers all went away
        await system.event_log.publish(item)
    job_manager = system.services["projector"][0].job_manager
    await job_manager.expire_overdue()  # a sweep before the deadline finds nothing to end
    assert (await gateway.get(f"/scenario/v2/job-status/{job_id}")).json()["status"] == "processing"

    clock.advance(service_settings.job_deadline_seconds + 1)
    stream = await read_sse(gateway, job["sse_endpoint"])
    assert [m.data["type"] for m in stream.messages] == [
        "status_update", "persona_progress", "persona_progress", "status_update", "results"]
    assert {(m.data["persona_id"], m.data["status"], m.data["error_code"]) for m in stream.messages[1:3]} == {
        (p["id"], "failed", "expired") for p in personas}  # the persona states a client following them ends on
    assert stream.messages[3].data["status"] == "expired"
    results = stream.messages[-1].data["results"]
    assert results["failed"] == 2 and {p["error_code"] for p in results["personas"].values()} == {"expired"}

    await system.start_service("generator")  # a generator that comes late finds the work past its deadline
    # (and the job ended: its dispatcher adds no work items to those two)
    metrics = system.services["generator"][0].metrics

    async def items_dropped():
        return metrics.registry.get_sample_value(
            "promptgen_personas_finished_total", {"outcome": "expired", "error_code": ""}) == 2
    await eventually(items_dropped, what="the late work items dropped as expired")
    assert system.provider.prompt_calls == 0
    assert len([s async for s in system.event_log.read(subjects.job_persona(job_id, "*", "requested"))]) == 2
    # nothing of a persona follows its job's end in the log (its outcome would be stored after it)
    assert [s async for s in system.event_log.read(f"promptgen.job.{job_id}.persona.*.failed")] == []
    view = (await gateway.get(f"/scenario/v2/job-status/{job_id}")).json()
    assert view["status"] == "expired" and all(p["error_code"] == "expired" for p in view["personas"].values())


async def test_a_write_is_readable_as_soon_as_it_is_answered(gateway):
    template_id = await create_template(gateway, SCENARIO)  # answered once the projector applied it
    assert (await gateway.get(f"/scenario/templates/{template_id}")).status_code == 200
    personas = await create_personas(gateway, template_id, 5)
    for persona in personas:
        assert (await gateway.get(f"/scenario/personas/{persona['id']}")).status_code == 200


async def test_the_projection_waiter_waits_for_the_projector_and_gives_up_without_one(memory_log, memory_models):
    seq = await memory_log.publish(job_requested("j1", ("p1",)))
    waiter = ProjectionWaiter(memory_models, timeout=0.2)
    assert await waiter.wait_for(seq) is False  # no projector: the gateway answers anyway, later

    waiting = asyncio.create_task(ProjectionWaiter(memory_models, timeout=10).wait_for(seq))
    fold = Fold(memory_log, memory_models, parked=ParkedEvents(memory_log))
    async for batch in memory_log.read_batches(subjects.ALL):
        await fold.apply(batch)
    assert await asyncio.wait_for(waiting, 10) is True
    assert await memory_models.jobs.find_one({"_id": "j1"}) is not None


async def test_a_waiter_with_no_time_to_wait_answers_at_once_and_logs_nothing(memory_log, memory_models):
    """PROMPTGEN_PROJECTION_WAIT_SECONDS=0 turns read-your-writes off: a write answers as soon as
    the log has it, and says nothing of a projector it did not wait for."""
    from structlog.testing import capture_logs

    seq = await memory_log.publish(job_requested("j1", ("p1",)))
    models = _CountingCheckpointReads(memory_models)
    waiter = ProjectionWaiter(models, timeout=0)
    with capture_logs() as logs:
        assert await waiter.wait_for(seq) is False
        assert await ProjectionWaiter(models, timeout=10).wait_for(seq, timeout=0) is False
    assert logs == [] and models.reads == [0, 0]  # one look at the checkpoint each, no wait
    fold = Fold(memory_log, memory_models, parked=ParkedEvents(memory_log))
    async for batch in memory_log.read_batches(subjects.ALL):
        await fold.apply(batch)
    assert await waiter.wait_for(seq) is True  # with no announcement heard


async def test_every_one_of_many_waiters_is_released_once_the_projector_passes_its_event(memory_log,
                                                                                      memory_models):
    """A thousand SSE clients of one job wait at its end: each is released, none times out."""
    first = await memory_log.publish(job_requested("j1", ("p1",)))
    second = await memory_log.publish(job_requested("j2", ("p2",)))
    waiter = ProjectionWaiter(memory_models, timeout=10)
    waiting = [asyncio.create_task(waiter.wait_for(seq)) for seq in (first, second) * 500]
    fold = Fold(memory_log, memory_models, parked=ParkedEvents(memory_log))
    async for batch in memory_log.read_batches(subjects.ALL):
        await fold.apply(batch)
    assert await asyncio.wait_for(asyncio.gather(*waiting), 20) == [True] * 1000
    assert waiter._waiting == 0


class _CountingCheckpointReads:
    """What a waiter reads of the read models (the checkpoint), counted."""

    def __init__(self, models) -> None:
        self.models = models
        self.reads: list[int] = []

    async def checkpoint(self) -> int:
        self.reads.append(await self.models.checkpoint())
        return self.reads[-1]


async def test_a_waiter_that_hears_the_projector_wakes_without_reading_mongodb(memory_log, memory_models):
    announced: list[tuple[int, int]] = []  # (announced, the checkpoint stored by then)

    async def overhear(msg) -> None:
        announced.append((int(msg.data), await memory_models.checkpoint()))

    await memory_log.subscribe(subjects.PROJECTOR_CHECKPOINT, overhear)
    models = _CountingCheckpointReads(memory_models)
    waiter = ProjectionWaiter(models, timeout=10)
    await waiter.listen(memory_log)
    fold = Fold(memory_log, memory_models, parked=ParkedEvents(memory_log))
    first = await memory_log.publish(job_requested("j1", ("p1",)))
    await fold.apply([s async for s in memory_log.read(subjects.ALL, first)])
    await eventually(lambda: _true(waiter._hearing()), what="the first announcement heard")
    second = await memory_log.publish(job_requested("j2", ("p2",)))

    models.reads.clear()
    waiting = asyncio.create_task(waiter.wait_for(second))
    await asyncio.sleep(0)  # the poller is waiting for the news
    await fold.apply([s async for s in memory_log.read(subjects.ALL, second)])
    assert await asyncio.wait_for(waiting, 10) is True
    assert models.reads == []
    assert announced == [(first, first), (second, second)]  # each stored before it was announced


async def test_a_lost_or_foreign_announcement_leaves_the_waiter_reading_mongodb(memory_log, memory_models):
    waiter = ProjectionWaiter(memory_models, timeout=10)
    await waiter.listen(memory_log)
    await memory_log.send(subjects.PROJECTOR_CHECKPOINT, b"99999 from someone else")
    await memory_log.send(subjects.PROJECTOR_CHECKPOINT, b"0")  # heard: reads slow down to a few a second
    await eventually(lambda: _true(waiter._hearing()), what="the announcement heard")
    assert waiter._seen == 0  # the foreign one moved nothing

    seq = await memory_log.publish(job_requested("j1", ("p1",)))
    waiting = asyncio.create_task(waiter.wait_for(seq))

    async def lost(subject: str, data: bytes) -> None:
        raise ConnectionError("the bus dropped it")

    memory_log.send = lost  # the fold's announcement is lost; the checkpoint is stored all the same
    fold = Fold(memory_log, memory_models, parked=ParkedEvents(memory_log))
    await fold.apply([s async for s in memory_log.read(subjects.ALL, seq)])
    assert await asyncio.wait_for(waiting, 10) is True


async def _true(value: bool) -> bool:
    return value


async def test_a_rebuild_while_the_projector_runs_gives_the_same_read_models(running, memory_models):
    gateway = running.client
    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 3)
    job = await start_job(gateway, template_id, cycle_modes([p["id"] for p in personas]))
    await follow_to_end(gateway, job)  # the job ended and its end is projected
    before = await snapshot(memory_models)
    fold = running.services["projector"][0].fold
    position = await fold.rebuild(_no_progress)
    assert position == await running.event_log.last_seq()
    assert await snapshot(memory_models) == before
    assert await memory_models.checkpoint() == position


async def _no_progress(done: int, total: int, *, stage: str = "writing") -> None:
    return None


async def test_a_rebuilds_bar_counts_the_logs_events_from_its_first_not_from_sequence_one(memory_log):
    """A log whose oldest events aged out: the bar starts at 0 of the events there are."""
    from services.projector.rebuild import WRITING, rebuild_into

    for n in range(4):
        await memory_log.publish(job_requested(f"old{n}", ("p1",)))
    for n in range(6):
        await memory_log.publish(job_requested(f"new{n}", ("p1",)))
    for n in range(4):  # gone from the log (its max_age)
        await memory_log.purge(memory_log.stream, subjects.job(f"old{n}", "requested"))
    assert (await memory_log.state()).first_seq == 5
    reports: list[tuple[int, int]] = []

    async def bar(done: int, total: int, *, stage: str = WRITING) -> None:
        if stage == WRITING:
            reports.append((done, total))

    assert await rebuild_into(memory_log, memory_read_models(), bar) == 10
    assert reports[0] == (0, 6) and reports[-1] == (6, 6)
