"""A cancel the generator hears on NATS counts only once the log holds it: the stream refuses a
cancel that comes after its job's end (or while it has no leader), and subscribers hear every
publish all the same. A refused cancel must not drop a job's work."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.errors import BadRequestError

from contracts.events import JobCancelRequested, encode_event
from services.generator.consumers import Cancellations
from tests.waiting import eventually


async def test_a_cancel_the_stream_refused_cancels_nothing_and_a_stored_one_does(event_log, monkeypatch):
    from services.generator import consumers

    monkeypatch.setattr(consumers, "CONFIRM_AFTER", (0.0, 0.05, 0.2, 0.5))
    cancellations = Cancellations(event_log)
    await cancellations.start()
    assert await cancellations.is_cancelled("refused") is False  # known before any cancel is heard
    refused, stored = JobCancelRequested(job_id="refused"), JobCancelRequested(job_id="stored")
    in_flight = {job: asyncio.create_task(asyncio.sleep(3600)) for job in ("refused", "stored")}
    try:
        with cancellations.calling("refused", in_flight["refused"]), \
                cancellations.calling("stored", in_flight["stored"]):
            with pytest.raises(BadRequestError):  # as a cancel that crosses its job's end is refused
                await event_log.js.publish(refused.subject(), encode_event(refused), stream=event_log.stream,
                                           headers={"Nats-Expected-Last-Subject-Sequence": "999999"})
            await event_log.publish(stored)  # heard after the refused one
            await eventually(lambda: asyncio.sleep(0, in_flight["stored"].cancelled()),
                             what="the stored cancel cancelling its job's call")
            assert not in_flight["refused"].done() and not cancellations.known.get("refused")
            assert cancellations.known["stored"] is True
            # what was known of the job is forgotten once a cancel was heard and not found: the
            # job's next item asks the log, where a retried cancel may be stored by then
            await eventually(lambda: asyncio.sleep(0, "refused" not in cancellations.confirming),
                             what="the refused cancel looked for to the end")
            assert "refused" not in cancellations.known and not in_flight["refused"].done()
        assert await cancellations.is_cancelled("refused") is False
    finally:
        for task in in_flight.values():
            task.cancel()
        await cancellations.close()
