"""Assembles the gateway: settings, adapters and routers, created in the lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from services.bus import EventLog
from services.gateway.capacity import Capacities
from services.gateway.errors import ApiError, install_error_handlers
from services.gateway.feeds import JobFeeds
from services.gateway.projection import ProjectionWaiter
from services.gateway.routes import admin, interactions, jobs, scenario, v1
from services.llm.factory import build_provider
from services.llm.limits import open_limiter
from services.parking import ParkedEvents
from services.runtime import announce_ready
from services.settings import Settings
from services.store import ReadModels, mongo_client

log = structlog.get_logger()
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        client = mongo_client(settings)
        event_log = await EventLog.connect(settings, "promptgen-gateway")
        models = ReadModels(client[settings.mongo_db])
        provider = build_provider(settings)
        app.state.settings = settings
        app.state.event_log = event_log
        app.state.models = models
        app.state.provider = provider
        # template analysis and persona generation take their turns from the same LLM caps
        app.state.limiter = await open_limiter(event_log.js, settings, provider.name)
        app.state.waiter = ProjectionWaiter(models, settings.projection_wait_seconds)
        app.state.capacity = Capacities.from_settings(settings)
        app.state.parked = ParkedEvents(event_log)
        await app.state.parked.ensure()
        app.state.feeds = JobFeeds(event_log)
        await app.state.feeds.start()
        announce_ready(provider=provider.name, mongo_db=settings.mongo_db, port=settings.port)
        try:
            yield
        finally:
            await app.state.feeds.close()
            await event_log.close()
            await provider.aclose()
            await client.close()

    app = FastAPI(
        title="promptgen",
        version="0.1.0",
        description="System prompts for avatar conversations, generated asynchronously with live progress.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(scenario.router)
    app.include_router(jobs.router)
    app.include_router(v1.router)
    app.include_router(interactions.router)
    app.include_router(admin.router)

    @app.get("/healthz", tags=["operations"])
    async def healthz(request: Request) -> dict[str, str]:
        if not request.app.state.feeds.alive:  # no live SSE stream would move: take us out of rotation
            raise ApiError(503, "job_feed_down", "This gateway's live job feed is not running")
        return {"status": "ok"}

    if (STATIC / "index.html").exists():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(STATIC / "index.html")

    return app
