"""LLM rate limits shared by every process that calls the LLM (generators and
gateways), kept in a JetStream key-value bucket.

* requests and tokens per minute: GCRA ("theoretical arrival time") for each,
  so calls are spaced evenly and no minute ever holds more than the cap;
* a shared back-off: when the LLM answers 429 with a retry-after, every worker
  in every process waits until then.

Each reservation is a compare-and-set on one key, so two processes never take
the same slot. (Clocks of the hosts are assumed NTP-synchronised.) With no rate
caps a call asks nothing of NATS: each limiter hears every write of the key as
NATS publishes it, and keeps the latest back-off it heard of.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar

import structlog

from contracts.domain import TokenUsage
from services.adapters.compare_and_set import change_entry, read_entry
from services.adapters.llm.base import LLMError, approx_tokens
from services.adapters.ports import EventLogPort
from services.runtime.metrics import Metrics
from services.runtime.settings import Settings

log = structlog.get_logger()

BUCKET = "promptgen_llm_limits"
KEY = "state"


class NoTurnSoon(LLMError):
    """The shared caps (or a back-off the LLM asked for) give no turn within the wait a caller
    allows: nothing was reserved. ``retry_after``: when the turn would have been."""

    def __init__(self, wait: float) -> None:
        super().__init__("llm_rate_limited", f"the shared LLM rate limits (PROMPTGEN_LLM_RPM, PROMPTGEN_LLM_TPM) "
                         f"or its back-off give no turn for {wait:.0f} s", retryable=True, retry_after=wait)


@dataclass
class LimitState:
    request_tat: float = 0.0  # when the next request may start
    token_tat: float = 0.0  # when the token budget allows the next request
    backoff_until: float = 0.0  # no request before this (server said retry-after)


class SharedLimiter:
    def __init__(
        self,
        kv,
        *,
        rpm: int = 0,
        tpm: int = 0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.kv = kv
        self.request_interval = 60.0 / rpm if rpm else 0.0
        self.token_interval = 60.0 / tpm if tpm else 0.0
        self.clock = clock
        self.sleep = sleep
        self.backoff_heard = 0.0  # the latest shared back-off this limiter knows of (it only moves later)
        self.listening = False  # subscribed to the key's writes
        self.connection = 0  # counts reconnections: writes may go unheard while one is under way
        self.current_since: int | None = None  # the connection since which backoff_heard is current

    @classmethod
    async def open(cls, event_log: EventLogPort, *, rpm: int, tpm: int, replicas: int = 1) -> SharedLimiter:
        kv = await event_log.key_value(BUCKET, history=1, replicas=replicas)
        limiter = cls(kv, rpm=rpm, tpm=tpm)
        await limiter.listen(event_log)
        return limiter

    async def listen(self, event_log: EventLogPort) -> None:
        """Hear each write of the shared state (NATS publishes a bucket's writes on the key's
        subject): the back-off is then read from the bucket once, and again after each
        reconnection, when a write may have gone unheard."""

        async def on_write(msg) -> None:
            with contextlib.suppress(ValueError, TypeError):  # a deletion or a foreign value: nothing to hear
                self._heard(LimitState(**json.loads(msg.data)).backoff_until)

        await event_log.subscribe(f"$KV.{BUCKET}.{KEY}", on_write)
        event_log.on_reconnect(self._reconnected)
        self.listening = True

    def _heard(self, backoff_until: float) -> None:
        self.backoff_heard = max(self.backoff_heard, backoff_until)

    def _reconnected(self) -> None:
        self.connection += 1

    async def _load(self) -> tuple[LimitState, int]:
        stored, revision = await read_entry(self.kv, KEY)
        return LimitState(**stored), revision

    async def _change(self, change: Callable[[LimitState, float], float]) -> float:
        """Apply ``change`` atomically; returns what it returned (a start time)."""

        async def apply(stored: dict) -> float:
            state = LimitState(**stored)
            result = change(state, self.clock())
            stored.update(asdict(state))
            return result

        return await change_entry(self.kv, KEY, apply)

    async def acquire(self, tokens: int, *, max_wait: float | None = None) -> float:
        """Wait for a turn to send a request of about ``tokens`` tokens; returns the wait. With
        ``max_wait``, a turn further off than that is not taken: :class:`NoTurnSoon` says when
        to ask again (a caller who answers a person; otherwise every wait is taken, however long)."""
        if not self.request_interval and not self.token_interval:
            # No rate caps: only a shared back-off can hold us, and the one heard of is current.
            if not self.listening or self.current_since != self.connection:
                connection = self.connection
                state, _ = await self._load()
                self._heard(state.backoff_until)
                if self.listening:
                    self.current_since = connection
            wait = self.backoff_heard - self.clock()
            if max_wait is not None and wait > max_wait:
                raise NoTurnSoon(wait)
            if wait > 0:
                await self.sleep(wait)
            return max(0.0, wait)

        def reserve(state: LimitState, now: float) -> float:
            start = max(now, state.backoff_until)
            if self.request_interval:
                start = max(start, state.request_tat)
            if self.token_interval:
                start = max(start, state.token_tat)
            if max_wait is not None and start - now > max_wait:
                raise NoTurnSoon(start - now)  # a change that raises writes nothing: nothing reserved
            if self.request_interval:
                state.request_tat = start + self.request_interval
            if self.token_interval:
                state.token_tat = start + tokens * self.token_interval
            return start

        start = await self._change(reserve)  # taken: waited for however long the write itself took
        wait = start - self.clock()
        if wait > 0:
            await self.sleep(wait)
        return max(0.0, wait)

    async def settle(self, estimated: int, actual: int) -> None:
        """Correct the token budget once the real usage is known."""
        if not self.token_interval or actual == estimated:
            return

        def correct(state: LimitState, now: float) -> float:
            state.token_tat += (actual - estimated) * self.token_interval
            return now

        await self._change(correct)

    async def back_off(self, seconds: float) -> None:
        """Make every worker wait ``seconds`` (the server's retry-after)."""

        def push(state: LimitState, now: float) -> float:
            state.backoff_until = max(state.backoff_until, now + seconds)
            return state.backoff_until

        self._heard(await self._change(push))
        log.warning("llm_backoff_shared", seconds=round(seconds, 3))


class Limiter(Protocol):
    """What an LLM call needs of the shared caps (:class:`SharedLimiter`)."""

    async def acquire(self, tokens: int, *, max_wait: float | None = None) -> float: ...
    async def settle(self, estimated: int, actual: int) -> None: ...
    async def back_off(self, seconds: float) -> None: ...


class Costed(Protocol):
    """An LLM call's answer: who gave it and what it took (``Answer``, ``GeneratedText``)."""

    @property
    def model(self) -> str: ...
    @property
    def usage(self) -> TokenUsage: ...


C = TypeVar("C", bound=Costed)


def estimated_tokens(prompt_chars: int, expected_completion: int) -> int:
    """A cheap upper-side guess of a call's tokens, for the shared token budget."""
    return approx_tokens(prompt_chars) + expected_completion


async def limited(limiter: Limiter | None, tokens: int, call: Callable[[], Awaitable[C]], *,
                  metrics: Metrics, model: str, max_wait: float | None = None) -> C:
    """One LLM call within the shared caps: it waits for its turn (or, a turn further off than
    ``max_wait``, raises :class:`NoTurnSoon`, which holds nobody else back), a 429 with a
    retry-after holds every caller in every process until then, and the ``tokens`` it reserved
    are corrected to what the answer took (kept when it reports none). Counted in ``metrics``
    (``model``: the one asked for, which labels a failed call). The gateway's calls, and each
    attempt of the generator's."""
    if limiter is not None:
        metrics.rate_limit_wait.observe(await limiter.acquire(tokens, max_wait=max_wait))
    started = time.perf_counter()
    try:
        answer = await call()
    except LLMError as exc:
        metrics.llm_call_duration.labels(model=model, outcome="error").observe(time.perf_counter() - started)
        if exc.retry_after and limiter is not None:
            await limiter.back_off(exc.retry_after)
        raise
    metrics.llm_call_duration.labels(model=model, outcome="ok").observe(time.perf_counter() - started)
    metrics.llm_tokens.labels(model=answer.model, direction="prompt").inc(answer.usage.prompt_tokens)
    metrics.llm_tokens.labels(model=answer.model, direction="completion").inc(answer.usage.completion_tokens)
    used = answer.usage.prompt_tokens + answer.usage.completion_tokens
    if limiter is not None and used:  # a server that reports no usage keeps the estimate, not nothing
        await limiter.settle(tokens, used)
    return answer


async def open_limiter(event_log: EventLogPort, settings: Settings, provider_name: str) -> SharedLimiter | None:
    """The shared limiter for a real LLM; None for the offline provider (nothing to limit)."""
    if provider_name == "offline":
        return None
    return await SharedLimiter.open(event_log, rpm=settings.llm_rpm, tpm=settings.llm_tpm,
                                    replicas=settings.replicas)
