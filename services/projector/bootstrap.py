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

from services.adapters.event_log import EventLog
from services.adapters.parked import ParkedEvents
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.projector.fold import PROJECTOR, Fold
from services.projector.fold_workers import FoldWorkers
from services.projector.job_manager import JOB_MANAGER, JobManager
from services.projector.presence import claim
from services.projector.rebuild import serve_rebuild_requests
from services.projector.retention import drop_expired_views
from services.projector.scratch import sweep_abandoned
from services.runtime.health import Health, mongo_answers, nats_answers
from services.runtime.lifecycle import Clock, announce_ready, cancel_and_wait, keep_going, utc_now
from services.runtime.metrics import Metrics
from services.runtime.ops_server import OpsServer, open_ops
from services.runtime.settings import Settings
from services.runtime.wiring import event_log_for, models_for, tracing_for

log = structlog.get_logger()


@dataclass
class ProjectorService:
    settings: Settings
    event_log: EventLogPort
    models: ReadModelsPort
    parked: ParkedEvents
    fold: Fold
    job_manager: JobManager
    metrics: Metrics
    health: Health
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    ops: OpsServer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Fold the log, decide jobs, answer rebuild and re-apply requests, until ``stop``."""
        await self.models.ensure_indexes()
        await self.parked.ensure()
        tasks = [
            asyncio.create_task(self.fold.run(stop), name="fold"),
            asyncio.create_task(self.job_manager.run(stop, sweep_seconds=self.settings.expiry_sweep_seconds),
                                name="job-manager"),
            asyncio.create_task(keep_going(lambda: self._drop_expired_views(stop), stop, what="retention"),
                                name="retention"),
        ]
        stop_rebuild = await serve_rebuild_requests(self.event_log, self.fold.rebuild, metrics=self.metrics)
        await self.parked.serve(PROJECTOR, self.fold.reapply)
        await self.parked.serve(JOB_MANAGER, self.job_manager.reapply)
        self.health.live_checks["consumers"] = lambda: not any(t.done() for t in tasks)
        self.ops = await open_ops(self.stack, self.metrics, self.health, self.settings.http_host,
                                  self.settings.projector_http_port, before_scrape=self.fold.measure_lag)
        announce_ready(checkpoint=await self.models.checkpoint(), http_port=self.ops.port)
        try:
            done, _ = await asyncio.wait([*tasks, asyncio.create_task(stop.wait())],
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in tasks and task.exception():
                    raise task.exception()
        finally:
            await stop_rebuild()  # while NATS is connected: `promptgen rebuild` hears that it was stopped
            for task in tasks:
                await cancel_and_wait(task)

    async def _drop_expired_views(self, stop: asyncio.Event) -> None:
        """The retention sweep, each round between the fold's batches and never during a rebuild."""
        await drop_expired_views(self.models, stop, exclusive=self.fold.exclusive, clock=self.fold.clock)

    async def aclose(self) -> None:
        await self.stack.aclose()
        log.info("service_stopped", position=self.fold.position)


def _fold_workers(settings: Settings, event_log: EventLogPort) -> FoldWorkers | None:
    """The processes a rebuild reads and folds the log in (one: the projector alone, as the
    rebuild decides): they connect to the NATS log this projector reads, as it does (a log of
    another kind is read by the projector alone)."""
    if isinstance(event_log, EventLog):
        return FoldWorkers(event_log.settings, settings.rebuild_processes)
    return None


async def bootstrap(
    settings: Settings,
    *,
    event_log: EventLogPort | None = None,
    models: ReadModelsPort | None = None,
    clock: Clock = utc_now,
    metrics: Metrics | None = None,
    presence: bool = True,
    ensure_stream: bool = True,
) -> ProjectorService:
    """Raises :class:`~services.projector.presence.AnotherProjector` if a projector runs on the
    same NATS already (``presence``: whether to ask, and to answer from now on; `promptgen
    rebuild` writing alone has answered itself), before anything is written, the stream's
    settings included (``ensure_stream``: made or set as this process's settings say; not by a
    tool, whose shell may lack the deployment's retention)."""
    stack = AsyncExitStack()
    tracing_for("projector", stack)
    metrics = metrics or Metrics(service="projector")
    models = models_for(settings, stack, models)
    event_log = await event_log_for(settings, "promptgen-projector", stack, event_log, ensure_stream=False)
    try:
        if presence:
            stack.push_async_callback(await claim(event_log))
        if ensure_stream:
            await event_log.ensure_stream()
    except BaseException:
        await stack.aclose()
        raise
    parked = ParkedEvents(event_log, metrics, consumers=(PROJECTOR, JOB_MANAGER))
    job_manager = JobManager(event_log, models, parked=parked, clock=clock, metrics=metrics)
    fold = Fold(event_log, models, job_retention=timedelta(days=settings.job_retention_days), parked=parked,
                on_reapplied=job_manager.decide, on_rebuilt=job_manager.watch.wake, metrics=metrics, clock=clock,
                scratch_dir=settings.rebuild_scratch_dir, workers=_fold_workers(settings, event_log))

    # What a rebuild killed with an earlier process left on disk (a rebuild in another process goes on).
    await asyncio.to_thread(sweep_abandoned, settings.rebuild_scratch_dir)

    async def caught_up() -> bool:  # reads served from a read model this far behind would mislead
        return await fold.measure_lag() <= settings.ready_max_lag_events

    async def same_log() -> bool:  # positions of a log that was reset: nothing is folded until a rebuild
        return fold.watch.reason is None and job_manager.watch.reason is None

    health = Health(ready_checks={"nats": lambda: nats_answers(event_log), "mongodb": lambda: mongo_answers(models),
                                 "lag": caught_up, "event_log": same_log})
    return ProjectorService(settings, event_log, models, parked, fold, job_manager, metrics, health, stack)
