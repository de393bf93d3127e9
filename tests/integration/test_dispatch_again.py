"""A job's request dispatched again on JetStream gets only the work items it lacks: the
lookups by wildcard subject that decide it, on the real server (the service tests move the
log's clock past its duplicate window; here the count of items published shows it)."""

from __future__ import annotations

from contracts import subjects
from contracts.events import JobExpired
from services.generator.consumers import dispatch
from services.generator.work import fan_out
from tests.samples import job_requested, results


async def test_a_request_dispatched_again_publishes_only_the_missing_items(event_log):
    request = job_requested("again", ("p1", "p2", "p3"))
    seq = await event_log.publish(request)
    await event_log.publish(fan_out(request)[2])  # a dispatcher died after one of the three
    assert await dispatch(request, event_log, seq) == 2
    assert await dispatch(request, event_log, seq) == 0
    items = sorted([s.event.persona_id async for s in event_log.read(subjects.WORK_ITEMS)])
    assert items == ["p1", "p2", "p3"]


async def test_an_ended_job_is_not_dispatched_again(event_log):
    request = job_requested("over", ("p1",))
    seq = await event_log.publish(request)
    await event_log.publish(JobExpired(job_id="over", results=results({"p1": "failed"})))
    assert await dispatch(request, event_log, seq) == 0
    assert [s async for s in event_log.read(subjects.WORK_ITEMS)] == []
