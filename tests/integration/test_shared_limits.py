"""The shared LLM rate limiter over a real JetStream key-value bucket."""

from __future__ import annotations

import asyncio
import time

import pytest

from contracts.domain import TokenUsage
from services.adapters.event_log import EventLog
from services.adapters.llm.base import Answer, LLMError
from services.adapters.llm.limits import NoTurnSoon, SharedLimiter, limited
from services.runtime.metrics import Metrics
from tests.metrics_text import sample
from tests.waiting import eventually

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
    assert await a.acquire(1) == pytest.approx(3.0)  # the one that backs off waits from then on
    # another hears it as NATS publishes the write (in its own process: within a round trip)
    assert await eventually(lambda: b.acquire(1), what="b hearing the back-off") == pytest.approx(3.0)


class CountedReads:
    """A real bucket whose reads are counted."""

    def __init__(self, kv) -> None:
        self.kv, self.reads = kv, 0

    async def get(self, key: str):
        self.reads += 1
        return await self.kv.get(key)

    def __getattr__(self, name: str):
        return getattr(self.kv, name)


async def test_with_no_rate_caps_a_call_reads_the_bucket_once_then_hears_back_offs(settings):
    log_a, log_b = await EventLog.connect(settings, "limiter-a"), await EventLog.connect(settings, "limiter-b")
    try:
        (a, _), (b, _) = await _limiter(log_a, rpm=0, tpm=0), await _limiter(log_b, rpm=0, tpm=0)
        b.kv = counted = CountedReads(b.kv)
        assert [await b.acquire(1) for _ in range(5)] == [0] * 5
        assert counted.reads == 1
        await a.back_off(2.0)  # another process's 429
        assert await eventually(lambda: b.acquire(1), what="b hearing the back-off") == pytest.approx(2.0)
        assert counted.reads == 1
        # after a reconnection (its callback, as nats-py runs it) a write may have gone unheard:
        # the next call reads the bucket again
        b._reconnected()
        assert await b.acquire(1) == pytest.approx(2.0)
        assert counted.reads == 2
    finally:
        await log_a.close()
        await log_b.close()


async def test_a_turn_further_off_than_the_caller_allows_is_refused_and_reserves_nothing(event_log):
    limiter, waits = await _limiter(event_log, rpm=0, tpm=60_000)  # 1000 tokens per second
    assert await limiter.acquire(50_000) == 0  # 50 s of the budget
    revision = (await limiter.kv.get("state")).revision
    with pytest.raises(NoTurnSoon) as refused:
        await limiter.acquire(1000, max_wait=20)
    # not even the same state written again: a flood of refusals must not make the others' turns contend
    assert (await limiter.kv.get("state")).revision == revision
    assert refused.value.retry_after == pytest.approx(50.0) and refused.value.code == "llm_rate_limited"
    assert waits == []  # refused at once, not after a wait
    assert await limiter.acquire(1000, max_wait=60) == pytest.approx(50.0)  # the refusal took no turn
    # with no caps, a back-off the LLM asked for counts the same
    free, _ = await _limiter(event_log, rpm=0, tpm=0)
    await free.back_off(30.0)
    with pytest.raises(NoTurnSoon):
        await free.acquire(1, max_wait=5)
    assert await free.acquire(1) == pytest.approx(30.0)  # a caller without a bound waits its turn


async def test_a_gateway_call_gives_back_what_it_reserved_beyond_its_answer_and_is_counted(event_log):
    """``limited`` (the gateway's template and persona calls): the tokens it reserved are corrected
    to the answer's, so a large guess holds the budget only as long as the call took, and the
    call is in the LLM series as a generator's is."""
    limiter, _ = await _limiter(event_log, rpm=0, tpm=60_000)  # 1000 tokens per second
    metrics = Metrics(service="gateway")

    async def answered() -> Answer[str]:
        return Answer("template", "gpt-test-2", TokenUsage(prompt_tokens=600, completion_tokens=400))

    assert (await limited(limiter, 5000, answered, metrics=metrics, model="gpt-test")).value == "template"
    assert await limiter.acquire(10) == pytest.approx(1.0)  # 1,000 tokens taken, not the 5,000 guessed

    async def refused() -> Answer[str]:
        raise LLMError("llm_auth", "no")

    with pytest.raises(LLMError):
        await limited(limiter, 10, refused, metrics=metrics, model="gpt-test")
    text = metrics.exposition()
    assert sample(text, "promptgen_llm_call_duration_seconds_count", model="gpt-test", outcome="ok") == 1
    assert sample(text, "promptgen_llm_call_duration_seconds_count", model="gpt-test", outcome="error") == 1
    assert sample(text, "promptgen_llm_tokens_total", model="gpt-test-2", direction="prompt") == 600
    assert sample(text, "promptgen_llm_tokens_total", model="gpt-test-2", direction="completion") == 400
    assert sample(text, "promptgen_llm_rate_limit_wait_seconds_count") == 2

    async def no_usage() -> Answer[str]:  # a server that does not say what it used
        return Answer("template", "gpt-test", TokenUsage())

    start = await limiter.acquire(3000)  # 3 s of the budget, given back only with a real usage
    await limited(limiter, 2000, no_usage, metrics=metrics, model="gpt-test")  # reserves 2 s more, keeps them
    assert await limiter.acquire(10) == pytest.approx(start + 3.0 + 2.0)
