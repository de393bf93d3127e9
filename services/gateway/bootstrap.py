"""The gateway's composition root: the one place its adapters are built.

``bootstrap(settings)`` connects to the event log and MongoDB and builds the LLM
provider, unless they are given (tests pass their own); the routes receive what it
builds through :mod:`services.gateway.deps`.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import structlog

from services.adapters.llm.base import Provider
from services.adapters.llm.limits import SharedLimiter, open_limiter
from services.adapters.parked import ParkedEvents
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.gateway.auth import Guard, open_guard
from services.gateway.capacity import Capacities
from services.gateway.feeds import JobFeeds
from services.gateway.freshness import ReadFence
from services.gateway.projection import ProjectionWaiter
from services.gateway.quotas import TenantQuotas
from services.gateway.sse import server_exiting
from services.runtime.health import Health, mongo_answers, nats_answers
from services.runtime.lifecycle import Clock, utc_now
from services.runtime.metrics import Metrics
from services.runtime.ops_server import open_ops
from services.runtime.settings import Settings
from services.runtime.wiring import event_log_for, models_for, provider_for

log = structlog.get_logger()


def ports_at_odds(settings: Settings) -> str | None:
    """Why the gateway cannot serve on the ports it is given, if it cannot: its own port for
    ``/metrics`` and the probes is its main port (the second server would never bind)."""
    if settings.gateway_http_port and settings.gateway_http_port == settings.port:
        return (f"PROMPTGEN_GATEWAY_HTTP_PORT is {settings.port}, the gateway's own port (PROMPTGEN_PORT): give it "
                "another, or leave it unset (/metrics, /livez and /readyz are on the gateway's port too)")
    return None


@dataclass
class Gateway:
    """Everything the routes use."""

    settings: Settings
    event_log: EventLogPort
    models: ReadModelsPort
    provider: Provider
    limiter: SharedLimiter | None
    waiter: ProjectionWaiter
    fence: ReadFence
    feeds: JobFeeds
    parked: ParkedEvents
    capacity: Capacities
    clock: Clock
    metrics: Metrics
    health: Health
    guard: Guard
    quotas: TenantQuotas
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    ops_port: int | None = None  # this process's own /metrics, /livez, /readyz port, when it has one

    async def aclose(self) -> None:
        await self.stack.aclose()
        log.info("service_stopped")


async def serving() -> bool:
    """Not shutting down: a gateway told to stop is out of rotation while it finishes its streams."""
    return not server_exiting()


async def bootstrap(
    settings: Settings,
    *,
    event_log: EventLogPort | None = None,
    models: ReadModelsPort | None = None,
    provider: Provider | None = None,
    clock: Clock = utc_now,
    metrics: Metrics | None = None,
) -> Gateway:
    stack = AsyncExitStack()
    try:
        metrics = metrics or Metrics(service="gateway")
        models = models_for(settings, stack, models)
        event_log = await event_log_for(settings, "promptgen-gateway", stack, event_log)
        provider = provider_for(settings, stack, provider)
        # template analysis and persona generation take their turns from the same LLM caps
        limiter = await open_limiter(event_log, settings, provider.name)
        guard = await open_guard(settings, event_log, clock)  # before anything starts: it may refuse
        quotas = await TenantQuotas.open(event_log, models, settings, clock)
        parked = ParkedEvents(event_log, metrics)
        await parked.ensure()
        waiter = ProjectionWaiter(models, settings.projection_wait_seconds)
        await waiter.listen(event_log)
        fence = ReadFence(event_log, waiter, timeout=settings.projection_wait_seconds, metrics=metrics)
        feeds = JobFeeds(event_log, ping_seconds=settings.sse_ping_seconds, exiting=server_exiting, fence=fence)
        await feeds.start()
        stack.push_async_callback(feeds.close)
        # no live SSE stream would move without the feed: take this gateway out of rotation
        health = Health(live_checks={"job_feed": lambda: feeds.alive},
                        ready_checks={"nats": lambda: nats_answers(event_log), "mongodb": lambda: mongo_answers(models),
                                      "serving": serving})
        ops_port = None
        if settings.gateway_http_port is not None:  # gateways sharing a port: each is scraped on its own
            ops_port = (await open_ops(stack, metrics, health, settings.http_host, settings.gateway_http_port)).port
        return Gateway(
            settings=settings, event_log=event_log, models=models, provider=provider, limiter=limiter,
            waiter=waiter, fence=fence, feeds=feeds, parked=parked,
            capacity=Capacities.from_settings(settings, tenants=guard.enforced), clock=clock, metrics=metrics,
            health=health, guard=guard,
            quotas=quotas, stack=stack, ops_port=ops_port,
        )
    except BaseException:  # what it opened is closed again: a test's process, or a retry, goes on
        await stack.aclose()
        raise
