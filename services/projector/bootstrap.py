"""The projector's composition root: the one place its adapters are built.

``bootstrap(settings)`` connects to the event log and MongoDB, unless they are given
(tests pass their own); everything else receives them.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from services.adapters.parked import ParkedEvents
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.projector.fold import PROJECTOR, Fold
from services.projector.job_manager import JOB_MANAGER, JobManager
from services.projector.rebuild import serve_rebuild_requests
from services.runtime.lifecycle import Clock, announce_ready, cancel_and_wait, utc_now
from services.runtime.settings import Settings
from services.runtime.wiring import event_log_for, models_for

log = structlog.get_logger()


@dataclass
class ProjectorService:
    settings: Settings
    event_log: EventLogPort
    models: ReadModelsPort
    parked: ParkedEvents
    fold: Fold
    job_manager: JobManager
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def run(self, stop: asyncio.Event) -> None:
        """Fold the log, decide jobs, answer rebuild and re-apply requests, until ``stop``."""
        await self.models.ensure_indexes()
        await self.parked.ensure()
        tasks = [
            asyncio.create_task(self.fold.run(stop), name="fold"),
            asyncio.create_task(self.job_manager.run(stop, sweep_seconds=self.settings.expiry_sweep_seconds),
                                name="job-manager"),
        ]
        await serve_rebuild_requests(self.event_log, self.fold.rebuild)
        await self.parked.serve(PROJECTOR, self.fold.reapply)
        await self.parked.serve(JOB_MANAGER, self.job_manager.reapply)
        announce_ready(checkpoint=await self.models.checkpoint())
        try:
            done, _ = await asyncio.wait([*tasks, asyncio.create_task(stop.wait())],
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in tasks and task.exception():
                    raise task.exception()
        finally:
            for task in tasks:
                await cancel_and_wait(task)

    async def aclose(self) -> None:
        await self.stack.aclose()
        log.info("service_stopped", position=self.fold.position)


async def bootstrap(
    settings: Settings,
    *,
    event_log: EventLogPort | None = None,
    models: ReadModelsPort | None = None,
    clock: Clock = utc_now,
) -> ProjectorService:
    stack = AsyncExitStack()
    models = models_for(settings, stack, models)
    event_log = await event_log_for(settings, "promptgen-projector", stack, event_log)
    parked = ParkedEvents(event_log)
    job_manager = JobManager(event_log, models, parked=parked, clock=clock)
    fold = Fold(event_log, models, job_retention=timedelta(days=settings.job_retention_days), parked=parked,
                on_reapplied=job_manager.decide)
    return ProjectorService(settings, event_log, models, parked, fold, job_manager, stack)
