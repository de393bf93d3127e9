"""The generator's workers on the in-memory log: a redelivered item whose persona already
ended costs no second LLM call, and an item no worker can finish becomes a failure."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from structlog.testing import capture_logs

from contracts import subjects
from contracts.events import PersonaCompleted
from services.generator.consumers import WORKERS, WorkerPool
from services.generator.dead_letters import keep_dead_letters
from services.generator.work import fan_out
from tests.samples import job_requested
from tests.service.providers import ScriptedProvider
from tests.waiting import eventually


async def test_a_redelivered_item_whose_persona_already_ended_is_acked_without_a_call(
    start_system, service_settings, memory_log, provider, clock,
):
    service_settings.ack_wait_seconds = 0.2
    request = job_requested("j1", ("p1",)).model_copy(update={"deadline": clock() + timedelta(minutes=30)})
    item = fan_out(request)[0]
    await memory_log.publish(request)
    await memory_log.publish(item)

    # A worker takes the item, stores its outcome and dies before acknowledging it.
    queue = await memory_log.work_queue(WORKERS, subjects.WORK_ITEMS, max_ack_pending=8,
                                        ack_wait=service_settings.ack_wait_seconds,
                                        max_deliver=service_settings.max_deliveries)
    (taken,) = await queue.fetch(1, timeout=1)
    assert taken.metadata.num_delivered == 1
    await memory_log.publish(PersonaCompleted(
        job_id="j1", persona_id="p1", persona_name="Name p1", mode="try_mode", generation_mode="assess_mode",
        prompt="You are p1.", prompt_length=11, provider="offline", model="m"))

    with capture_logs() as logs:
        await start_system()  # a generator takes over: the item comes back after its ack wait

        async def skipped():
            return [e for e in logs if e["event"] == "work_item_already_done"]
        (skip,) = await eventually(skipped, timeout=10, what="the redelivered item skipped")
    assert skip["deliveries"] == 2
    assert provider.prompt_calls == 0
    assert len([s async for s in memory_log.read(subjects.job_persona("j1", "p1", "completed"))]) == 1

    async def ended():
        return await memory_log.last(subjects.job("j1", "completed"))
    assert (await eventually(ended, what="the job's end")).event.results.successful == 1


async def test_an_item_that_kills_every_worker_becomes_a_visible_failure(
    start_system, service_settings, memory_log, clock,
):
    service_settings.ack_wait_seconds = 0.1
    service_settings.max_deliveries = 2
    request = job_requested("j2", ("p1",)).model_copy(update={"deadline": clock() + timedelta(minutes=30)})
    await memory_log.publish(request)
    await memory_log.publish(fan_out(request)[0])
    await keep_dead_letters(memory_log, WORKERS)  # as every generator does when it starts
    queue = await memory_log.work_queue(WORKERS, subjects.WORK_ITEMS, max_ack_pending=8,
                                        ack_wait=service_settings.ack_wait_seconds, max_deliver=2)
    for _ in range(2):  # two workers take it and die
        await queue.fetch(1, timeout=2)
    await start_system()  # the next generator turns the max-deliveries advisory into a failure

    async def failed():
        return await memory_log.last(subjects.job_persona("j2", "p1", "failed"))
    found = (await eventually(failed, timeout=10, what="the persona's failure")).event
    assert found.error_code == "delivery_exhausted" and found.attempts == 2


async def test_an_item_that_fails_with_an_internal_error_on_every_delivery_fails_without_its_text(
    start_system, service_settings, memory_log, provider, clock,
):
    service_settings.max_deliveries = 1
    provider.crash.add("p1")
    request = job_requested("j3", ("p1",)).model_copy(update={"deadline": clock() + timedelta(minutes=30)})
    await memory_log.publish(request)
    with capture_logs() as logs:
        await start_system()

        async def failed():
            return await memory_log.last(subjects.job_persona("j3", "p1", "failed"))
        found = (await eventually(failed, timeout=10, what="the persona's failure")).event
    assert found.error_code == "internal_error" and found.attempts == 1
    assert "hunter2" not in found.error and "mongodb://" not in found.error  # the client reads this
    assert "RuntimeError" in found.error
    (exhausted,) = [e for e in logs if e["event"] == "work_item_exhausted"]
    assert "failed" in exhausted["error"]  # the operator's log has what happened


class CountedProvider(ScriptedProvider):
    """Counts the prompts being written at once, and the most there ever were."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = self.most_writing = 0

    async def write_system_prompt(self, brief):
        self.writing += 1
        self.most_writing = max(self.most_writing, self.writing)
        try:
            return await super().write_system_prompt(brief)
        finally:
            self.writing -= 1


class OverDelivering:
    """A work queue whose fetches hand over more than they asked for, as nats-py's do when
    messages meant for an earlier fetch, already expired, arrive late."""

    def __init__(self, queue) -> None:
        self.queue = queue

    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list:
        return await self.queue.fetch(batch + 3, timeout=timeout)


async def test_a_worker_never_runs_more_calls_than_its_share_when_a_fetch_brings_more(
    service_settings, memory_log, clock,
):
    service_settings.worker_concurrency = 2
    request = job_requested("j1", tuple(f"p{i}" for i in range(8)))
    for item in fan_out(request.model_copy(update={"deadline": clock() + timedelta(minutes=30)})):
        await memory_log.publish(item)
    work_queue = memory_log.work_queue

    async def over_delivering(*args, **kwargs):
        return OverDelivering(await work_queue(*args, **kwargs))

    memory_log.work_queue = over_delivering  # type: ignore[method-assign]
    provider = CountedProvider()
    provider.hold()
    pool = WorkerPool(memory_log, provider, service_settings, clock=clock)
    stop = asyncio.Event()
    running = asyncio.create_task(pool.run(stop))
    await eventually(lambda: _true(provider.writing >= 2), what="two prompts under way")
    provider.release()

    async def all_completed() -> bool:
        ends = [await memory_log.last_seq_on(subjects.job_persona("j1", f"p{i}", "completed")) for i in range(8)]
        return None not in ends

    await eventually(all_completed, what="every persona completed")
    stop.set()
    await running
    assert provider.prompt_calls == 8
    assert provider.most_writing == 2


async def _true(value: bool) -> bool:
    return value


async def _run_until_logged(pool: WorkerPool, event: str, *, what: str) -> list[dict]:
    """Run ``pool`` until it logs ``event``, then stop it; every line it logged."""
    stop = asyncio.Event()
    with capture_logs() as logs:
        running = asyncio.create_task(pool.run(stop))
        try:
            await eventually(lambda: _true(any(e["event"] == event for e in logs)), what=what)
        finally:
            stop.set()
            await running
    return logs


async def test_a_parked_item_applied_again_after_its_persona_ended_costs_no_call(
    service_settings, memory_log, provider, clock,
):
    """A work item parked, then applied again once its persona had an outcome some other way
    (the job went on): no second LLM call, and no second outcome over the prompt."""
    from contracts.api import ParkedEvent

    request = job_requested("j1", ("p1",)).model_copy(update={"deadline": clock() + timedelta(minutes=30)})
    await memory_log.publish(request)
    seq = await memory_log.publish(fan_out(request)[0])
    await memory_log.publish(PersonaCompleted(
        job_id="j1", persona_id="p1", persona_name="Name p1", mode="try_mode", generation_mode="assess_mode",
        prompt="You are p1.", prompt_length=11, provider="offline", model="m"))
    record = ParkedEvent(consumer=WORKERS, stream=memory_log.stream, seq=seq, subject=subjects.job_persona(
        "j1", "p1", "requested"), error_kind="unstorable", error="e", first_bytes="", parked_at=clock())
    pool = WorkerPool(memory_log, provider, service_settings, clock=clock)
    with capture_logs() as logs:
        await pool.reapply(record)
    assert provider.prompt_calls == 0
    assert [e["event"] for e in logs if e["event"].startswith("work_item")] == ["work_item_already_done"]
    assert len([s async for s in memory_log.read(subjects.job_persona("j1", "p1", "completed"))]) == 1


async def test_a_call_outlasting_half_the_duplicate_window_looks_for_another_deliverys_outcome_first(
    service_settings, memory_log, provider, clock, past_the_duplicate_window,
):
    """Its heartbeats lost for an ack wait, an item went to another worker, which stored the
    persona's outcome; this call, still out, answers longer after that than the log's duplicate
    window, so its outcome would not be taken for a duplicate: a second prompt over the persona.
    It looks first, and stores nothing."""
    request = job_requested("j1", ("p1",)).model_copy(update={"deadline": clock() + timedelta(hours=2)})
    await memory_log.publish(request)
    await memory_log.publish(fan_out(request)[0])
    provider.hold()
    pool = WorkerPool(memory_log, provider, service_settings, clock=clock)
    stop = asyncio.Event()
    running = asyncio.create_task(pool.run(stop))
    try:
        await eventually(lambda: _true(provider.prompt_calls == 1), what="the call out")
        await memory_log.publish(PersonaCompleted(
            job_id="j1", persona_id="p1", persona_name="Name p1", mode="try_mode", generation_mode="assess_mode",
            prompt="Another delivery's.", prompt_length=19, provider="offline", model="m"))
        clock.advance(service_settings.duplicate_window_seconds)
        past_the_duplicate_window()
        with capture_logs() as logs:
            provider.release()
            await eventually(lambda: _true(any(e["event"] == "work_item_already_done" for e in logs)),
                             what="the answer dropped")
    finally:
        stop.set()
        await running
    prompts = [s.event.prompt async for s in memory_log.read(subjects.job_persona("j1", "p1", "completed"))]
    assert prompts == ["Another delivery's."]


async def test_an_item_that_fails_its_last_delivery_after_its_persona_ended_stores_no_failure(
    service_settings, memory_log, provider, clock, past_the_duplicate_window,
):
    """Its last delivery meets an internal error, while another delivery stored the persona's
    outcome longer ago than the duplicate window: the failure would be a second end."""
    service_settings.max_deliveries = 1
    request = job_requested("j1", ("p1",)).model_copy(update={"deadline": clock() + timedelta(hours=2)})
    await memory_log.publish(request)
    await memory_log.publish(PersonaCompleted(
        job_id="j1", persona_id="p1", persona_name="Name p1", mode="try_mode", generation_mode="assess_mode",
        prompt="Another delivery's.", prompt_length=19, provider="offline", model="m"))
    past_the_duplicate_window()
    await memory_log.publish(fan_out(request)[0])
    provider.crash.add("p1")
    pool = WorkerPool(memory_log, provider, service_settings, clock=clock)
    await _run_until_logged(pool, "work_item_already_done", what="the last delivery finding the persona ended")
    assert await memory_log.last(subjects.job_persona("j1", "p1", "failed")) is None


class AckLost:
    """A work item whose acknowledgement fails (the connection is away)."""

    def __init__(self, msg) -> None:
        self._msg = msg

    def __getattr__(self, name):
        return getattr(self._msg, name)

    async def ack(self) -> None:
        raise ConnectionResetError("the connection to NATS is away")


class AcksLost:
    def __init__(self, queue) -> None:
        self.queue = queue

    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list:
        return [AckLost(msg) for msg in await self.queue.fetch(batch, timeout=timeout)]


async def test_a_lost_ack_at_the_last_delivery_does_not_fail_a_persona_dropped_at_its_deadline(
    service_settings, memory_log, provider, clock,
):
    """The job's deadline ends the call, which is dropped (the job manager fails the persona as
    expired). The ack that follows is lost: the item comes back, or its delivery runs out; it
    must not go down the failure path and store an internal error for the persona."""
    service_settings.max_deliveries = 1
    request = job_requested("j1", ("p1",)).model_copy(update={"deadline": clock() + timedelta(seconds=0.2)})
    await memory_log.publish(request)
    await memory_log.publish(fan_out(request)[0])
    work_queue = memory_log.work_queue

    async def acks_lost(*args, **kwargs):
        return AcksLost(await work_queue(*args, **kwargs))

    memory_log.work_queue = acks_lost  # type: ignore[method-assign]
    provider.hold()
    pool = WorkerPool(memory_log, provider, service_settings, clock=clock)
    logs = await _run_until_logged(pool, "work_item_ack_lost", what="the dropped item's ack lost")
    assert "work_item_dropped_expired" in [e["event"] for e in logs]
    assert await memory_log.last(subjects.job_persona("j1", "p1", "failed")) is None
