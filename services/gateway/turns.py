"""Requests of this process that name the same thing take turns, so the next sees what the first
stored (a retry of one job, personas named by one Idempotency-Key). Requests at once to two
gateway processes do not: the log's first stored fact decides between them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Turns:
    def __init__(self) -> None:
        self._held: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # name -> its lock, requests holding it

    @contextlib.asynccontextmanager
    async def of(self, name: str) -> AsyncIterator[None]:
        lock, waiting = self._held.setdefault(name, (asyncio.Lock(), [0]))
        waiting[0] += 1
        try:
            async with lock:
                yield
        finally:
            waiting[0] -= 1
            if waiting[0] == 0:
                del self._held[name]

    def __len__(self) -> int:
        return len(self._held)
