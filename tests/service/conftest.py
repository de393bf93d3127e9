"""The server-free tier: the real gateway app, projector and generator, wired by their own
composition roots onto the in-memory adapters, in the test's event loop. Nothing here
starts nats-server or MongoDB (a test that asks for a fixture that would is refused)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager

from services.adapters.read_models import ReadModels
from services.gateway.app import create_app
from services.generator.bootstrap import bootstrap as generator_bootstrap
from services.projector.bootstrap import bootstrap as projector_bootstrap
from services.runtime.settings import Settings
from services.testing import ManualClock, MemoryEventLog, memory_read_models, memory_streams
from tests.service.providers import ScriptedProvider

SERVER_FIXTURES = {"nats_server", "session_mongo", "mongo_server_url", "settings", "event_log", "models", "system",
                   "client"}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Refuse, before any fixture is set up, a test here that would start a server."""
    asked = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
    if asked:
        raise pytest.UsageError(f"{item.nodeid} is server-free but asks for {sorted(asked)}, which start servers")


@pytest.fixture
def service_settings() -> Settings:
    return Settings(provider="offline", projection_wait_seconds=5, ack_wait_seconds=5, sse_ping_seconds=1,
                    expiry_sweep_seconds=0.05, generator_http_port=0, projector_http_port=0)


@pytest_asyncio.fixture
async def memory_log(service_settings) -> AsyncIterator[MemoryEventLog]:
    log = MemoryEventLog(service_settings)
    yield log
    await log.close()


@pytest.fixture
def past_the_duplicate_window(monkeypatch, memory_log) -> Callable[[], None]:
    """Called, the log's clock reads later than its duplicate window from then on: a second copy
    of an event is no longer dropped as a duplicate."""
    def move() -> None:
        ahead = memory_log.settings.duplicate_window_seconds + 1
        # the log's own clock only: the event loop's (time.monotonic) must go on
        monkeypatch.setattr(memory_streams, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + ahead))

    return move


@pytest.fixture
def memory_models() -> ReadModels:
    return memory_read_models()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


class ServerFreeSystem:
    """The three services on shared in-memory adapters; ``client`` talks to the gateway over ASGI."""

    def __init__(self, settings: Settings, event_log: MemoryEventLog, models: ReadModels,
                 provider: ScriptedProvider, clock: ManualClock) -> None:
        self.settings, self.event_log, self.models = settings, event_log, models
        self.provider, self.clock = provider, clock
        self.services: dict[str, tuple[Any, asyncio.Event, asyncio.Task]] = {}
        self.client: httpx.AsyncClient | None = None
        self._lifespan: LifespanManager | None = None

    async def start(self, *, generator: bool = True) -> ServerFreeSystem:
        await self.start_service("projector")
        if generator:
            await self.start_service("generator")
        app = self.app = create_app(self.settings, event_log=self.event_log, models=self.models,
                                    provider=self.provider, clock=self.clock)
        self._lifespan = LifespanManager(app)
        await self._lifespan.__aenter__()
        # a loopback name: one the gateway answers for by default (its Host allow-list)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self._lifespan.app),
                                        base_url="http://localhost", timeout=20)
        return self

    async def start_service(self, name: str) -> None:
        if name == "projector":
            service = await projector_bootstrap(self.settings, event_log=self.event_log, models=self.models,
                                                clock=self.clock)
        else:
            service = await generator_bootstrap(self.settings, event_log=self.event_log, provider=self.provider,
                                                clock=self.clock)
        stop = asyncio.Event()
        self.services[name] = (service, stop, asyncio.create_task(service.run(stop), name=name))

    async def stop_service(self, name: str) -> None:
        service, stop, task = self.services.pop(name)
        stop.set()
        await asyncio.wait_for(task, 15)
        await service.aclose()

    async def close(self) -> None:
        self.provider.release()  # no worker stays stuck in an LLM call
        if self.client is not None:
            await self.client.aclose()
        if self._lifespan is not None:
            await self._lifespan.__aexit__(None, None, None)
        for name in list(self.services):
            await self.stop_service(name)


@pytest_asyncio.fixture
async def start_system(service_settings, memory_log, memory_models, provider, clock):
    """Start the system (``generator=False``: the projector and gateway only); stopped after the test."""
    systems: list[ServerFreeSystem] = []

    async def start(*, generator: bool = True) -> ServerFreeSystem:
        system = ServerFreeSystem(service_settings, memory_log, memory_models, provider, clock)
        systems.append(system)
        return await system.start(generator=generator)

    yield start
    for system in systems:
        await system.close()


@pytest_asyncio.fixture
async def running(start_system) -> ServerFreeSystem:
    return await start_system()


@pytest.fixture
def gateway(running) -> httpx.AsyncClient:
    assert running.client is not None
    return running.client
