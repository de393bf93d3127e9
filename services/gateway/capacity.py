"""Caps on what a gateway holds for a client while it waits: SSE streams, V1 waits and
event-history reads each hold a connection, tasks and often a JetStream consumer. When a
cap is full the gateway answers 503 with ``Retry-After`` at once, so one flood of clients
cannot take every resource of the gateway from the others."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from services.gateway.errors import ApiError
from services.runtime.settings import Settings

log = structlog.get_logger()


class Slot:
    """One unit of a capacity, given back once, however the work that held it ended."""

    def __init__(self, capacity: Capacity) -> None:
        self._capacity: Capacity | None = capacity

    def release(self) -> None:
        if self._capacity is not None:
            self._capacity.in_use -= 1
            self._capacity = None


class Capacity:
    def __init__(self, what: str, limit: int, *, retry_after: int) -> None:
        self.what = what
        self.limit = limit
        self.retry_after = retry_after
        self.in_use = 0

    def take(self) -> Slot:
        """A slot, or 503 ``gateway_busy`` when all ``limit`` are held."""
        if self.in_use >= self.limit:
            log.warning("gateway_busy", what=self.what, limit=self.limit)
            raise ApiError(
                503, "gateway_busy",
                f"This gateway already holds its limit of {self.limit} {self.what}; "
                f"try again in {self.retry_after}s",
                headers={"Retry-After": str(self.retry_after)},
            )
        self.in_use += 1
        return Slot(self)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        slot = self.take()
        try:
            yield
        finally:
            slot.release()


@dataclass(frozen=True)
class Capacities:
    sse_streams: Capacity
    v1_waits: Capacity
    history_reads: Capacity

    @classmethod
    def from_settings(cls, settings: Settings) -> Capacities:
        return cls(
            sse_streams=Capacity("SSE streams", settings.max_sse_streams, retry_after=5),
            v1_waits=Capacity("V1 requests waiting for their job", settings.max_v1_waits, retry_after=10),
            history_reads=Capacity("event-history reads", settings.max_history_reads, retry_after=1),
        )
