"""Waiting for a condition the system reaches by itself, with a deadline and a clear failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 20, what: str = "the condition") -> T:
    """The first truthy value of ``check()``, polled until ``timeout``; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s (last: {value!r})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


async def sent(nc) -> None:
    """Return once the server has read everything ``nc`` was asked to send so far.

    nats-py (2.16) writes a flush's PING straight to the socket, ahead of commands still
    queued for its flusher task: one ``flush()`` can return before a ``subscribe()`` made
    just before it reached the server, and another connection's publish then finds nobody.
    While the first round trip is awaited the flusher writes the queue, so the second PING
    follows it."""
    await nc.flush()
    await nc.flush()
