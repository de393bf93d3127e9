"""The gateway's composition root: the one place its adapters are built.

``bootstrap(settings)`` connects to the event log and MongoDB and builds the LLM
provider, unless they are given (tests pass their own); the routes receive what it
builds through :mod:`services.gateway.deps`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.bus import EventLog
from services.gateway.feeds import JobFeeds
from services.gateway.projection import ProjectionWaiter
from services.llm.base import Provider
from services.llm.factory import build_provider
from services.llm.limits import SharedLimiter, open_limiter
from services.parking import ParkedEvents
from services.ports import EventLogPort, ReadModelsPort
from services.runtime import Clock, utc_now
from services.settings import Settings
from services.store import open_read_models


@dataclass
class Gateway:
    """Everything the routes use."""

    settings: Settings
    event_log: EventLogPort
    models: ReadModelsPort
    provider: Provider
    limiter: SharedLimiter | None
    waiter: ProjectionWaiter
    feeds: JobFeeds
    parked: ParkedEvents
    clock: Clock
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            await close()


async def bootstrap(
    settings: Settings,
    *,
    event_log: EventLogPort | None = None,
    models: ReadModelsPort | None = None,
    provider: Provider | None = None,
    clock: Clock = utc_now,
) -> Gateway:
    closers: list[Callable[[], Awaitable[None]]] = []
    if models is None:
        models, close_models = open_read_models(settings)
        closers.append(close_models)
    if event_log is None:
        event_log = await EventLog.connect(settings, "promptgen-gateway")
        closers.append(event_log.close)
    if provider is None:
        provider = build_provider(settings)
        closers.append(provider.aclose)
    # template analysis and persona generation take their turns from the same LLM caps
    limiter = await open_limiter(event_log, settings, provider.name)
    parked = ParkedEvents(event_log)
    await parked.ensure()
    feeds = JobFeeds(event_log)
    await feeds.start()
    closers.append(feeds.close)
    return Gateway(
        settings=settings, event_log=event_log, models=models, provider=provider, limiter=limiter,
        waiter=ProjectionWaiter(models, settings.projection_wait_seconds), feeds=feeds, parked=parked,
        clock=clock, closers=closers,
    )
