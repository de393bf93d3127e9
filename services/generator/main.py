"""Wires the generator process: event log + provider + dispatcher + workers."""

from __future__ import annotations

import asyncio

import structlog

from services.bus import EventLog
from services.generator.consumers import DISPATCHER, WORKERS, WorkerPool, reapply_dispatch, run_dispatcher
from services.generator.dead_letters import DEAD_LETTERS, keep_dead_letters, reapply_advisory, run_dead_letters
from services.parking import ParkedEvents
from services.llm.limits import open_limiter
from services.llm.factory import build_provider
from services.runtime import announce_ready
from services.settings import Settings

log = structlog.get_logger()


async def run_generator(settings: Settings, stop: asyncio.Event) -> None:
    provider = build_provider(settings)
    event_log = await EventLog.connect(settings, "promptgen-generator")
    limiter = await open_limiter(event_log.js, settings, provider.name)
    parked = ParkedEvents(event_log)
    await parked.ensure()
    pool = WorkerPool(event_log, provider, settings, limiter, parked)
    await keep_dead_letters(event_log, WORKERS)  # before any work item can run out of deliveries
    await parked.serve(DISPATCHER, lambda record: reapply_dispatch(event_log, record))
    await parked.serve(WORKERS, pool.reapply)
    await parked.serve(DEAD_LETTERS, lambda record: reapply_advisory(event_log, record))
    tasks = [
        asyncio.create_task(run_dispatcher(event_log, stop, parked), name="dispatcher"),
        asyncio.create_task(pool.run(stop), name="workers"),
        asyncio.create_task(run_dead_letters(event_log, WORKERS, stop, parked), name="dead-letters"),
    ]
    announce_ready(
        provider=provider.name,
        model=provider.model,
        concurrency=settings.worker_concurrency,
        global_concurrency=settings.llm_concurrency,
        rpm=settings.llm_rpm or None,
        tpm=settings.llm_tpm or None,
    )
    try:
        done, _ = await asyncio.wait(
            [*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        for t in done:
            if t in tasks and t.exception():
                raise t.exception()  # a consumer loop died: exit so the supervisor restarts us
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=5)
        await pool.drain(timeout=10)
        for t in tasks:
            t.cancel()
        await event_log.close()
        await provider.aclose()
        log.info("service_stopped")
