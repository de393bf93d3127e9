"""The generator process: bootstrap, run until stopped, close."""

from __future__ import annotations

import asyncio

from services.generator.bootstrap import bootstrap
from services.runtime.metrics import Metrics
from services.runtime.settings import Settings


async def run_generator(settings: Settings, stop: asyncio.Event, *, metrics: Metrics | None = None) -> None:
    generator = await bootstrap(settings, metrics=metrics)
    try:
        await generator.run(stop)
    finally:
        await generator.aclose()
