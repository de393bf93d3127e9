"""The generator's composition root: the one place its adapters are built.

``bootstrap(settings)`` connects to the event log and builds the LLM provider, unless
they are given (tests pass their own); everything else receives them.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import structlog

from services.adapters.llm.base import Provider
from services.adapters.llm.limits import open_limiter
from services.adapters.parked import ParkedEvents
from services.adapters.ports import EventLogPort
from services.generator.consumers import DISPATCHER, WORKERS, WorkerPool, reapply_dispatch, run_dispatcher
from services.generator.dead_letters import DEAD_LETTERS, keep_dead_letters, reapply_advisory, run_dead_letters
from services.runtime.health import Health, nats_answers
from services.runtime.lifecycle import Clock, announce_ready, utc_now
from services.runtime.metrics import Metrics
from services.runtime.ops_server import OpsServer, open_ops
from services.runtime.settings import Settings
from services.runtime.wiring import event_log_for, provider_for, tracing_for

log = structlog.get_logger()


@dataclass
class Generator:
    settings: Settings
    event_log: EventLogPort
    provider: Provider
    parked: ParkedEvents
    pool: WorkerPool
    metrics: Metrics
    health: Health
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    ops: OpsServer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch jobs, generate prompts and turn dead letters into failures, until ``stop``."""
        event_log, parked, settings = self.event_log, self.parked, self.settings
        await keep_dead_letters(event_log, WORKERS)  # before any work item can run out of deliveries
        await parked.serve(DISPATCHER, lambda record: reapply_dispatch(event_log, record))
        await parked.serve(WORKERS, self.pool.reapply)
        await parked.serve(DEAD_LETTERS, lambda record: reapply_advisory(event_log, record))
        tasks = [
            asyncio.create_task(run_dispatcher(event_log, stop, parked), name="dispatcher"),
            asyncio.create_task(self.pool.run(stop), name="workers"),
            asyncio.create_task(run_dead_letters(event_log, WORKERS, stop, parked, self.metrics), name="dead-letters"),
        ]
        # alive while every consumer loop runs; a dead one ends run() below anyway
        self.health.live_checks["consumers"] = lambda: not any(t.done() for t in tasks)
        self.ops = await open_ops(self.stack, self.metrics, self.health, settings.http_host,
                                  settings.generator_http_port)
        announce_ready(
            http_port=self.ops.port,
            provider=self.provider.name,
            model=self.provider.model,
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
            await self.pool.drain(timeout=10)
            for t in tasks:
                t.cancel()

    async def aclose(self) -> None:
        await self.stack.aclose()
        log.info("service_stopped")


async def bootstrap(
    settings: Settings,
    *,
    event_log: EventLogPort | None = None,
    provider: Provider | None = None,
    clock: Clock = utc_now,
    metrics: Metrics | None = None,
) -> Generator:
    stack = AsyncExitStack()
    tracing_for("generator", stack)
    metrics = metrics or Metrics(service="generator")
    provider = provider_for(settings, stack, provider)
    event_log = await event_log_for(settings, "promptgen-generator", stack, event_log)
    limiter = await open_limiter(event_log, settings, provider.name)
    parked = ParkedEvents(event_log, metrics, consumers=(DISPATCHER, WORKERS, DEAD_LETTERS))
    await parked.ensure()
    pool = WorkerPool(event_log, provider, settings, limiter, parked, clock=clock, metrics=metrics)
    health = Health(ready_checks={"nats": lambda: nats_answers(event_log)})
    return Generator(settings, event_log, provider, parked, pool, metrics, health, stack)
