"""The projector's composition root: the one place its adapters are built.

``bootstrap(settings)`` connects to the event log and MongoDB, unless they are given
(tests pass their own); everything else receives them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from services.bus import EventLog
from services.parking import ParkedEvents
from services.projector.projector import JOB_MANAGER, PROJECTOR, Projector
from services.projector.rebuild import serve_rebuild_requests
from services.runtime import Clock, announce_ready, cancel_and_wait, utc_now
from services.settings import Settings
from services.store import ReadModels, open_read_models

log = structlog.get_logger()


@dataclass
class ProjectorService:
    settings: Settings
    event_log: EventLog
    models: ReadModels
    parked: ParkedEvents
    projector: Projector
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        """Fold the log, decide jobs, answer rebuild and re-apply requests, until ``stop``."""
        projector = self.projector
        await self.models.ensure_indexes()
        await self.parked.ensure()
        task = asyncio.create_task(projector.run(stop, sweep_seconds=self.settings.expiry_sweep_seconds))
        await serve_rebuild_requests(self.event_log, projector.rebuild)
        for consumer in (PROJECTOR, JOB_MANAGER):
            await self.parked.serve(consumer, projector.reapply)
        announce_ready(checkpoint=await self.models.checkpoint())
        try:
            await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            if task.done() and task.exception():
                raise task.exception()
        finally:
            await cancel_and_wait(task)

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            await close()
        log.info("service_stopped", position=self.projector.position)


async def bootstrap(
    settings: Settings,
    *,
    event_log: EventLog | None = None,
    models: ReadModels | None = None,
    clock: Clock = utc_now,
    manage_jobs: bool = True,
) -> ProjectorService:
    closers: list[Callable[[], Awaitable[None]]] = []
    if models is None:
        models, close_models = open_read_models(settings)
        closers.append(close_models)
    if event_log is None:
        event_log = await EventLog.connect(settings, "promptgen-projector")
        closers.append(event_log.close)
    parked = ParkedEvents(event_log)
    projector = Projector(event_log, models, job_retention=timedelta(days=settings.job_retention_days),
                          parked=parked, clock=clock, manage_jobs=manage_jobs)
    return ProjectorService(settings, event_log, models, parked, projector, closers)
