"""The generator process: bootstrap, run until stopped, close."""

from __future__ import annotations

import asyncio

from services.generator.bootstrap import bootstrap
from services.runtime.settings import Settings


async def run_generator(settings: Settings, stop: asyncio.Event) -> None:
    generator = await bootstrap(settings)
    try:
        await generator.run(stop)
    finally:
        await generator.aclose()
