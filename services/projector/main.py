"""The projector process: bootstrap, run until stopped, close."""

from __future__ import annotations

import asyncio

from services.projector.bootstrap import bootstrap
from services.runtime.metrics import Metrics
from services.runtime.settings import Settings


async def run_projector(settings: Settings, stop: asyncio.Event, *, metrics: Metrics | None = None) -> None:
    service = await bootstrap(settings, metrics=metrics)
    try:
        await service.run(stop)
    finally:
        await service.aclose()
