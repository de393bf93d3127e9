"""A pull consumer's loop outlives the server saying "not now" (503 while a leader is elected)."""

from __future__ import annotations

import asyncio

from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import ServiceUnavailableError

from services.adapters.event_log import pulled


class ElectingSubscription:
    """A pull subscription whose consumer has no leader for its first fetches."""

    def __init__(self, answers: list) -> None:
        self.answers = answers
        self.fetches = 0

    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list:
        self.fetches += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_a_fetch_refused_during_an_election_is_asked_again():
    sub = ElectingSubscription([ServiceUnavailableError(), NatsTimeout(), ServiceUnavailableError(), ["m1", "m2"]])
    stop = asyncio.Event()
    batches = pulled(sub, 4, stop)
    assert await asyncio.wait_for(anext(batches), 10) == ["m1", "m2"]
    assert sub.fetches == 4
    stop.set()
    await batches.aclose()
