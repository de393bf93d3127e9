"""A work item nobody finishes ends as a visible PersonaFailed, not a silent drop."""

from __future__ import annotations

from nats.errors import TimeoutError as NatsTimeout

from contracts import subjects
from services.generator.consumers import WORKERS
from services.generator.dead_letters import watch_dead_letters
from services.generator.work import fan_out
from tests.samples import job_requested


async def test_exhausted_deliveries_become_persona_failed(event_log):
    await watch_dead_letters(event_log, WORKERS)
    job = job_requested(job_id="jdead", pids=("p1",))
    await event_log.publish(fan_out(job)[0])
    # A worker that takes the item and dies before acking, twice: the deliveries run out.
    sub = await event_log.work_queue(WORKERS, subjects.WORK_ITEMS, max_ack_pending=4, ack_wait=0.5,
                                     max_deliver=2)
    # The pool keeps pulling (as live workers do); JetStream gives up after the second delivery.
    deliveries = 0
    failed = None
    for _ in range(20):
        try:
            deliveries += len(await sub.fetch(1, timeout=1))
        except (NatsTimeout, TimeoutError):
            pass
        failed = await event_log.last(subjects.job_persona("jdead", "p1", "failed"))
        if failed:
            break
    assert deliveries == 2
    assert failed is not None, "no PersonaFailed after the last delivery"
    assert failed.event.error_code == "delivery_exhausted" and failed.event.attempts == 2
    assert "2 deliveries" in failed.event.error
