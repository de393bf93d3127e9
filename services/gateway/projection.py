"""Read-your-writes: wait until the projector has applied a given event.

The gateway publishes, gets the event's stream sequence back, and waits for the
projector's checkpoint to pass it before answering, so a client that reads right
after a write finds what it wrote.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from pymongo.errors import PyMongoError

from services.store import ReadModels

log = structlog.get_logger()


class ProjectionWaiter:
    def __init__(self, models: ReadModels, timeout: float) -> None:
        self.models = models
        self.timeout = timeout
        self._seen = 0  # highest checkpoint observed: most waits end without a query

    async def wait_for(self, seq: int) -> bool:
        if seq <= self._seen:
            return True
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                self._seen = max(self._seen, await self.models.checkpoint())
            except PyMongoError as exc:  # MongoDB away: the write is durable in the log anyway
                log.warning("projection_unreadable", error=str(exc))
            if self._seen >= seq:
                return True
            if time.monotonic() >= deadline:
                log.warning("projection_lagging", seq=seq, checkpoint=self._seen)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
