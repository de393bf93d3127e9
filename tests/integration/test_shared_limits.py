"""The shared LLM rate limiter over a real JetStream key-value bucket."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.adapters.llm.limits import SharedLimiter

NOW = time.time()


async def _limiter(event_log, **caps):
    """A limiter on the shared bucket whose clock stands still (at NOW) and that does not
    sleep: each wait it returns is then exactly its reserved start minus NOW, however slow
    the machine is."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    limiter = await SharedLimiter.open(event_log, **caps)
    limiter.sleep = record
    limiter.clock = lambda: NOW
    return limiter, waits


async def test_two_limiters_never_share_a_slot(event_log):
    (a, _), (b, _) = await _limiter(event_log, rpm=600, tpm=0), await _limiter(event_log, rpm=600, tpm=0)
    starts = sorted(await asyncio.gather(*(lim.acquire(100) for lim in [a, b] * 10)))
    # 600 rpm: one request every 0.1 s, whoever asks
    assert starts == pytest.approx([i * 0.1 for i in range(20)]), starts


async def test_token_budget_spaces_calls_by_their_size(event_log):
    limiter, _ = await _limiter(event_log, rpm=0, tpm=60_000)  # 1000 tokens per second
    first = await limiter.acquire(2000)
    second = await limiter.acquire(500)
    assert first == 0 and second == pytest.approx(2.0)
    await limiter.settle(500, 1500)  # the call used more than estimated: the next waits longer
    third = await limiter.acquire(10)
    assert third == pytest.approx(second + 0.5 + 1.0)


async def test_a_retry_after_makes_every_worker_wait(event_log):
    (a, _), (b, _) = await _limiter(event_log, rpm=0, tpm=0), await _limiter(event_log, rpm=0, tpm=0)
    assert await b.acquire(1) == 0
    await a.back_off(3.0)
    assert await b.acquire(1) == pytest.approx(3.0)
