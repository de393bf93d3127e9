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


class Consumer:
    """A pull consumer with ``ready`` messages and room for ``room`` more unacknowledged ones,
    answering as JetStream does: a fetch for more than it can hand out now holds the ones it
    has until it expires; one that gets none times out, and meanwhile ``freed`` acks come in."""

    def __init__(self, ready: int, room: int, freed: int) -> None:
        self.ready, self.room, self.freed = ready, room, freed
        self.fetches: list[tuple[int, float | None]] = []
        self.held_until_expiry: list[float | None] = []

    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list:
        self.fetches.append((batch, timeout))
        n = min(batch, self.ready, self.room)
        if n == 0:
            self.room += self.freed
            raise NatsTimeout
        if n < batch:
            self.held_until_expiry.append(timeout)
        self.ready -= n
        self.room -= n
        return ["m"] * n


async def test_a_fetch_that_waits_for_work_asks_for_one_message_then_takes_what_is_ready():
    sub = Consumer(ready=10, room=3, freed=8)
    stop = asyncio.Event()
    batches = pulled(sub, 8, stop, ready=0.01)
    sizes = [len(await anext(batches)) for _ in range(4)]
    stop.set()
    await batches.aclose()
    # one at once, then what the room lets out; no room: a timeout, then again one, then the rest
    assert sizes == [1, 2, 1, 6]
    assert sub.fetches == [(1, 1), (8, 0.01), (8, 0.01), (1, 1), (8, 0.01)]
    # a short batch was only ever held for the short expiry, never for a second
    assert sub.held_until_expiry == [0.01, 0.01]


class _Msg:
    def __init__(self, headers: dict | None) -> None:
        self.headers = headers


def test_a_pull_ends_only_where_the_server_says_it_has_no_more_and_fails_on_any_other_status():
    import pytest

    from services.adapters.event_log import PULL_COMPLETED, PULL_END, PULL_FULL, PullFailed, pull_status

    assert pull_status(_Msg(None)) is None and pull_status(_Msg({"Nats-Msg-Id": "x"})) is None  # events
    assert pull_status(_Msg({"Status": "404", "Description": "No Messages"})) == PULL_END
    assert pull_status(_Msg({"Status": "408", "Description": "Request Timeout"})) == PULL_END
    assert pull_status(_Msg({"Status": "409", "Description": "Message Size Exceeds MaxBytes"})) == PULL_FULL
    assert pull_status(_Msg({"Status": "409", "Description": "Batch Completed"})) == PULL_COMPLETED
    assert pull_status(_Msg({"Status": "408", "Description": "Requests Pending"})) == PULL_COMPLETED  # not the end
    for status, said in (("409", "Exceeded MaxRequestBatch of 100"), ("409", "Consumer Deleted"),
                         ("503", "No Responders")):
        with pytest.raises(PullFailed, match=f"{status} {said}"):
            pull_status(_Msg({"Status": status, "Description": said}))
