"""A work item nobody finishes ends as a visible PersonaFailed, not a silent drop."""

from __future__ import annotations

import asyncio
import contextlib

from nats.errors import TimeoutError as NatsTimeout
from structlog.testing import capture_logs

from contracts import subjects
from contracts.events import encode_event
from services.adapters.event_log import EventLog
from services.adapters.parked import ParkedEvents
from services.generator.consumers import WORKERS
from services.generator.dead_letters import dead_letter_stream, keep_dead_letters, run_dead_letters
from services.generator.work import fan_out
from tests.samples import job_requested, sample
from tests.waiting import eventually


async def _exhaust_deliveries(event_log: EventLog, job_id: str, *, until_failed: bool) -> int:
    """Publish one work item and take it twice without acking, as workers that die do;
    JetStream gives up after the second delivery. Returns the deliveries seen."""
    await event_log.publish(fan_out(job_requested(job_id=job_id, pids=("p1",)))[0])
    sub = await event_log.work_queue(WORKERS, subjects.WORK_ITEMS, max_ack_pending=4, ack_wait=0.5,
                                     max_deliver=2)
    deliveries = 0
    for _ in range(20):  # the pool keeps pulling, as live workers do
        with contextlib.suppress(NatsTimeout, TimeoutError):
            deliveries += len(await sub.fetch(1, timeout=1))
        if until_failed and await event_log.last(subjects.job_persona(job_id, "p1", "failed")):
            break
        if not until_failed and deliveries == 2:
            info = await event_log.js.stream_info(dead_letter_stream(event_log))
            if info.state.messages == 1:  # the advisory is stored
                break
    return deliveries


async def _failed(event_log: EventLog, job_id: str, timeout: float = 10):
    found = await eventually(lambda: event_log.last(subjects.job_persona(job_id, "p1", "failed")), timeout=timeout,
                             what=f"a persona.failed for {job_id}")
    return found.event


async def test_exhausted_deliveries_become_persona_failed(event_log):
    await keep_dead_letters(event_log, WORKERS)
    stop = asyncio.Event()
    watcher = asyncio.create_task(run_dead_letters(event_log, WORKERS, stop, ParkedEvents(event_log)))
    try:
        assert await _exhaust_deliveries(event_log, "jdead", until_failed=True) == 2
        failed = await _failed(event_log, "jdead")
    finally:
        stop.set()
        await watcher
    assert failed.error_code == "delivery_exhausted" and failed.attempts == 2
    assert "2 deliveries" in failed.error


async def test_an_advisory_emitted_while_no_generator_runs_waits_for_the_next(event_log):
    await keep_dead_letters(event_log, WORKERS)  # as every generator does when it starts
    assert await _exhaust_deliveries(event_log, "jlate", until_failed=False) == 2
    assert await event_log.last(subjects.job_persona("jlate", "p1", "failed")) is None

    stop = asyncio.Event()
    watcher = asyncio.create_task(run_dead_letters(event_log, WORKERS, stop, ParkedEvents(event_log)))
    try:
        failed = await _failed(event_log, "jlate")
        async def advisories_left() -> bool:  # a handled advisory leaves the dead-letter stream once acked
            return not (await event_log.js.stream_info(dead_letter_stream(event_log))).state.messages

        await eventually(advisories_left, timeout=10, what="the dead-letter stream emptying")
    finally:
        stop.set()
        await watcher
    assert failed.error_code == "delivery_exhausted"


async def test_an_advisory_for_a_persona_that_ended_fails_nothing(event_log):
    """A worker stored the persona's outcome and died before its ack; the advisory waited past the
    log's duplicate window (no generator ran), so the dedup id no longer drops a second end: the
    persona is not failed after its prompt was stored."""
    await keep_dead_letters(event_log, WORKERS)
    assert await _exhaust_deliveries(event_log, "jdone", until_failed=False) == 2
    done = sample("persona.completed").model_copy(update={"job_id": "jdone", "persona_id": "p1"})
    # without its Nats-Msg-Id: as if stored longer ago than the duplicate window
    await event_log.js.publish(done.subject(), encode_event(done), stream=event_log.stream)

    stop = asyncio.Event()
    watcher = asyncio.create_task(run_dead_letters(event_log, WORKERS, stop, ParkedEvents(event_log)))
    try:
        with capture_logs() as logs:
            async def advisories_left() -> bool:
                return not (await event_log.js.stream_info(dead_letter_stream(event_log))).state.messages

            await eventually(advisories_left, timeout=10, what="the advisory handled")
    finally:
        stop.set()
        await watcher
    assert await event_log.last(subjects.job_persona("jdone", "p1", "failed")) is None
    assert [line["persona_id"] for line in logs if line["event"] == "dead_letter_persona_ended"] == ["p1"]


async def test_an_item_its_workers_could_not_park_is_parked_when_its_deliveries_run_out(event_log):
    """A worker parks what it cannot read; when that fails each time (the parked stream away),
    the item runs out of deliveries instead: the dead letters park it, so that it shows."""
    await keep_dead_letters(event_log, WORKERS)
    seq = (await event_log.js.publish(subjects.job_persona("jjunk", "p1", "requested"), b"[1, 2, 3]",
                                      stream=event_log.stream)).seq
    sub = await event_log.work_queue(WORKERS, subjects.WORK_ITEMS, max_ack_pending=4, ack_wait=0.5,
                                     max_deliver=2)
    parked = ParkedEvents(event_log)
    stop = asyncio.Event()
    watcher = asyncio.create_task(run_dead_letters(event_log, WORKERS, stop, parked))
    try:
        async def parked_by_the_dead_letters():
            with contextlib.suppress(NatsTimeout, TimeoutError):
                await sub.fetch(1, timeout=0.5)  # taken and never acked, as by a worker whose park fails
            return [r for r in await parked.list(WORKERS) if r.seq == seq]

        (record,) = await eventually(parked_by_the_dead_letters, timeout=20, what="the garbage parked")
    finally:
        stop.set()
        await watcher
    assert record.error_kind == "undecodable" and record.subject == subjects.job_persona("jjunk", "p1", "requested")
