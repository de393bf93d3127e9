"""The generator's dispatcher goes on when a job's acknowledgement is not answered in time."""

from __future__ import annotations

import asyncio

from nats.errors import TimeoutError as NatsTimeout

from contracts import subjects
from services.adapters.parked import ParkedEvents
from services.generator.consumers import run_dispatcher
from services.testing.memory_consumers import StreamMessage
from tests.samples import job_requested
from tests.waiting import eventually


async def test_an_acknowledgement_a_busy_server_does_not_answer_stops_nothing(memory_log, monkeypatch):
    """nats-py's ack_sync times out when NATS is slow to answer: the dispatcher used to die of it,
    and with it every later job of that generator (seen under load). The request is left to come back."""
    answered = StreamMessage.ack_sync
    unanswered = []

    async def slow_server(self, timeout: float = 1.0):
        if not unanswered:
            unanswered.append(self.metadata.sequence.stream)
            raise NatsTimeout
        return await answered(self, timeout)

    monkeypatch.setattr(StreamMessage, "ack_sync", slow_server)
    memory_log.settings.ack_wait_seconds = 1  # the unacknowledged request comes back after it
    stop = asyncio.Event()
    dispatcher = asyncio.create_task(run_dispatcher(memory_log, stop, ParkedEvents(memory_log)))
    try:
        for job_id in ("first", "second"):
            await memory_log.publish(job_requested(job_id, ("p1",)))

        async def both_dispatched() -> bool:
            items = {s.event.job_id async for s in memory_log.read(subjects.WORK_ITEMS)}
            return items == {"first", "second"}

        await eventually(both_dispatched, what="both jobs' work items")
        assert unanswered and not dispatcher.done()
    finally:
        stop.set()
        await asyncio.wait_for(dispatcher, 10)
    items = [s async for s in memory_log.read(subjects.WORK_ITEMS)]
    assert len(items) == 2  # one work item per job
