"""A live read never waits on a consumer the server lost: after a silence it asks the server,
and says so (FollowStalled), for its caller to resume from its own stored position (an
ordered consumer on a NATS node that died can otherwise stall for good)."""

from __future__ import annotations

import asyncio

import pytest

from contracts import subjects
from services.adapters.event_log import FollowStalled
from tests.samples import sample


async def test_a_follower_whose_consumer_vanished_says_so(event_log):
    await event_log.publish(sample("template.created"))
    batches = event_log.follow_batches(subjects.ALL, 1, check_after=0.5)
    try:
        first = await asyncio.wait_for(anext(batches), 10)
        assert first[0].event.type == "template.created"
        for consumer in await event_log.js.consumers_info(event_log.stream):
            await event_log.js.delete_consumer(event_log.stream, consumer.name)
        with pytest.raises(FollowStalled):
            await asyncio.wait_for(anext(batches), 10)
    finally:
        await batches.aclose()


async def test_a_quiet_log_is_not_a_stalled_one(event_log):
    batches = event_log.follow_batches(subjects.ALL, 1, check_after=0.2)
    try:
        reading = asyncio.ensure_future(anext(batches))
        done, _ = await asyncio.wait([reading], timeout=1.5)  # several checks pass in silence
        assert not done
        seq = await event_log.publish(sample("template.created"))
        assert [s.seq for s in await asyncio.wait_for(reading, 10)] == [seq]
    finally:
        await batches.aclose()
