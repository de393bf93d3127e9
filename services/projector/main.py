"""Wires the projector process."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from services.bus import EventLog
from services.parking import ParkedEvents
from services.projector.projector import JOB_MANAGER, PROJECTOR, Projector
from services.projector.rebuild import serve_rebuild_requests
from services.runtime import announce_ready, cancel_and_wait
from services.settings import Settings
from services.store import ReadModels, mongo_client

log = structlog.get_logger()


async def run_projector(settings: Settings, stop: asyncio.Event) -> None:
    client = mongo_client(settings)
    event_log = await EventLog.connect(settings, "promptgen-projector")
    models = ReadModels(client[settings.mongo_db])
    await models.ensure_indexes()
    parked = ParkedEvents(event_log)
    await parked.ensure()
    projector = Projector(event_log, models, job_retention=timedelta(days=settings.job_retention_days),
                          parked=parked)
    task = asyncio.create_task(projector.run(stop, sweep_seconds=settings.expiry_sweep_seconds))
    await serve_rebuild_requests(event_log, projector.rebuild)
    for consumer in (PROJECTOR, JOB_MANAGER):
        await parked.serve(consumer, projector.reapply)
    announce_ready(checkpoint=await models.checkpoint())
    try:
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if task.done() and task.exception():
            raise task.exception()
    finally:
        await cancel_and_wait(task)
        await event_log.close()
        await client.close()
        log.info("service_stopped", position=projector.position)
