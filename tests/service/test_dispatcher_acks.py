"""The generator's dispatcher: it goes on when a job's acknowledgement is not answered in time,
and a job dispatched again gets only the work it lacks."""

from __future__ import annotations

import asyncio

from nats.errors import TimeoutError as NatsTimeout

from contracts import subjects
from contracts.events import JobCancelled
from services.adapters.parked import ParkedEvents
from services.generator.consumers import dispatch, run_dispatcher
from services.generator.work import fan_out
from services.testing.memory_consumers import StreamMessage
from tests.samples import job_requested, results
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


async def _work_items(memory_log) -> list[tuple[str, str]]:
    return [(s.event.job_id, s.event.persona_id) async for s in memory_log.read(subjects.WORK_ITEMS)]


async def test_a_job_dispatched_again_past_the_duplicate_window_gets_no_second_work_items(memory_log,
                                                                                         past_the_duplicate_window):
    """A request delivered again after a long outage (or applied again from the parked records):
    its personas were generated or are under way; a second item each would mean a second LLM
    call and a second outcome over the prompt."""
    request = job_requested("again", ("p1", "p2"))
    seq = await memory_log.publish(request)
    assert await dispatch(request, memory_log, seq) == 2
    past_the_duplicate_window()
    assert await dispatch(request, memory_log, seq) == 0
    assert await _work_items(memory_log) == [("again", "p1"), ("again", "p2")]


async def test_a_job_dispatched_in_part_gets_only_the_items_it_lacks(memory_log, past_the_duplicate_window):
    request = job_requested("part", ("p1", "p2", "p3"))
    seq = await memory_log.publish(request)
    await memory_log.publish(fan_out(request)[1])  # a dispatcher died after one of the three
    past_the_duplicate_window()
    assert await dispatch(request, memory_log, seq) == 2
    assert sorted(await _work_items(memory_log)) == [("part", "p1"), ("part", "p2"), ("part", "p3")]


async def test_an_ended_job_dispatched_again_gets_no_work(memory_log):
    request = job_requested("ended", ("p1",))
    seq = await memory_log.publish(request)
    await memory_log.publish(JobCancelled(job_id="ended", results=results({"p1": "cancelled"})))
    assert await dispatch(request, memory_log, seq) == 0
    assert await _work_items(memory_log) == []
