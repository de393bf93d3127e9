"""The shared LLM rate limiter over a real JetStream key-value bucket."""

from __future__ import annotations

import asyncio
import time

from services.generator.limits import SharedLimiter


async def _limiter(event_log, **caps):
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    limiter = await SharedLimiter.open(event_log.js, **caps)
    limiter.sleep = record
    return limiter, waits


async def test_two_limiters_never_share_a_slot(event_log):
    (a, _), (b, _) = await _limiter(event_log, rpm=600, tpm=0), await _limiter(event_log, rpm=600, tpm=0)
    t0 = time.time()
    waits = await asyncio.gather(*(lim.acquire(100) for lim in [a, b] * 10))
    starts = sorted(t0 + w for w in waits)
    gaps = [y - x for x, y in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 0.1 - 0.02, gaps  # 600 rpm: one request every 0.1 s, whoever asks
    assert starts[-1] - starts[0] >= 1.9 - 0.2


async def test_token_budget_spaces_calls_by_their_size(event_log):
    limiter, _ = await _limiter(event_log, rpm=0, tpm=60_000)  # 1000 tokens per second
    first = await limiter.acquire(2000)
    second = await limiter.acquire(500)
    assert first < 0.1 and 1.8 <= second <= 2.1
    await limiter.settle(500, 1500)  # the call used more than estimated: the next waits longer
    third = await limiter.acquire(10)
    assert third >= second + 0.5 + 1.0 - 0.2


async def test_a_retry_after_makes_every_worker_wait(event_log):
    (a, _), (b, _) = await _limiter(event_log, rpm=0, tpm=0), await _limiter(event_log, rpm=0, tpm=0)
    assert await b.acquire(1) < 0.05
    await a.back_off(3.0)
    assert 2.7 <= await b.acquire(1) <= 3.05
