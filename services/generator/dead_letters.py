"""Work that exhausted its deliveries becomes a visible failure, never a silent drop.

JetStream announces a message that reached ``max_deliver`` with an advisory. The
advisories are kept in a stream of their own (``<STREAM>_DEAD_LETTERS``), so one
emitted while no generator runs waits for the next; a durable consumer shared by
every replica turns each into a ``PersonaFailed`` (its dedup id makes a repeat one
event) and a log line. A worker that fails on the last delivery publishes the same
event itself; this covers workers that died instead.
"""

from __future__ import annotations

import asyncio
import json

import structlog
from nats.js import api

from contracts.api import ParkedEvent
from contracts.events import PersonaPromptRequested
from services.adapters.event_log import StoredEvent, pulled
from services.adapters.llm.base import LLMError
from services.adapters.parked import ParkedEvents
from services.adapters.ports import EventLogPort
from services.generator.work import failed, persona_ended, store_outcome
from services.runtime import tracing
from services.runtime.failures import brief, kind_of
from services.runtime.metrics import Metrics

log = structlog.get_logger()

DEAD_LETTERS = "generator-dead-letters"


def advisory_subject(stream: str, consumer: str) -> str:
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


def dead_letter_stream(event_log: EventLogPort) -> str:
    return f"{event_log.stream}_DEAD_LETTERS"


async def publish_dead_letter(event_log: EventLogPort, stream_seq: int, deliveries: int,
                              metrics: Metrics | None = None, *, parked: ParkedEvents | None = None,
                              consumer: str | None = None) -> bool:
    """Fail the persona of the work item at ``stream_seq`` that ran out of deliveries. One that is
    no work item reached its last delivery because the worker that met it could not park it: it
    is parked here for ``consumer`` (with ``parked``), so that it shows."""
    stored = await event_log.at(stream_seq, leader=True)  # a lagging replica would say it is gone
    if stored is None:
        log.warning("dead_letter_item_gone", stream_seq=stream_seq, deliveries=deliveries,
                    reason="the work item is no longer in the log (aged out or deleted): no persona to fail")
        return False
    item = stored.event
    if not isinstance(item, PersonaPromptRequested):
        log.warning("dead_letter_not_a_work_item", stream_seq=stream_seq, subject=stored.subject,
                    reason="undecodable: its worker could not park it; parked here (GET /admin/parked)")
        if parked is not None and consumer is not None:
            await parked.park(consumer, stored, "undecodable", str(stored.error or "not a work item"))
        return False
    if await persona_ended(event_log, item.job_id, item.persona_id, leader=True):
        # A worker stored the outcome, then died before its ack; the advisory waited longer than
        # the log's duplicate window (no generator ran meanwhile): the persona is not lost.
        log.info("dead_letter_persona_ended", job_id=item.job_id, persona_id=item.persona_id,
                 deliveries=deliveries, stream_seq=stream_seq)
        return False
    err = LLMError("delivery_exhausted",
                   f"no worker could finish this persona after {deliveries} deliveries (workers crashed or hung)")
    # In the work item's trace: the failure shows where the job's generation ended.
    with tracing.consuming("dead-letter persona", stored.headers, item, **{"promptgen.seq": stream_seq}):
        if (stored := await store_outcome(event_log, failed(item, err, deliveries))) != "stored":
            if metrics is not None:
                metrics.persona_finished(stored)
            return False  # its job was cancelled or expired: the job manager counted the persona so
    if metrics is not None:
        metrics.dead_letters.inc()
        metrics.persona_finished("failed", err.code)
    log.error("work_item_dead_lettered", job_id=item.job_id, persona_id=item.persona_id,
              deliveries=deliveries, stream_seq=stream_seq)
    return True


async def keep_dead_letters(event_log: EventLogPort, consumer: str) -> None:
    """Create (or update) the stream that stores ``consumer``'s max-deliveries advisories."""
    s = event_log.settings
    config = api.StreamConfig(
        name=dead_letter_stream(event_log),
        subjects=[advisory_subject(event_log.stream, consumer)],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.WORK_QUEUE,  # an advisory leaves once turned into its event
        max_age=s.stream_max_age_days * 86400,
        num_replicas=s.replicas,
    )
    await event_log.ensure_stream(config)


async def handle_advisory(event_log: EventLogPort, data: bytes, metrics: Metrics | None = None, *,
                          parked: ParkedEvents | None = None, consumer: str | None = None) -> None:
    advisory = json.loads(data)
    await publish_dead_letter(event_log, int(advisory["stream_seq"]), int(advisory.get("deliveries", 0)), metrics,
                              parked=parked, consumer=consumer)


async def run_dead_letters(event_log: EventLogPort, consumer: str, stop: asyncio.Event, parked: ParkedEvents,
                           metrics: Metrics | None = None) -> None:
    """Turn every stored advisory into its ``PersonaFailed``, until ``stop`` (the stream
    must exist: :func:`keep_dead_letters`). An advisory that makes no sense is parked."""
    stream = dead_letter_stream(event_log)
    sub = await event_log.work_queue(DEAD_LETTERS, advisory_subject(event_log.stream, consumer),
                                     max_ack_pending=64, ack_wait=30, max_deliver=-1, stream=stream)
    async for msgs in pulled(sub, 16, stop):
        for msg in msgs:
            try:
                await handle_advisory(event_log, msg.data, metrics, parked=parked, consumer=consumer)
            except Exception as exc:  # noqa: BLE001 - kept in the stream and tried again, or parked
                if kind_of(exc) == "permanent":
                    stored = StoredEvent(seq=msg.metadata.sequence.stream, time=msg.metadata.timestamp,
                                         subject=msg.subject, event=None, data=bytes(msg.data))
                    await parked.park(DEAD_LETTERS, stored, "undecodable", exc, stream=stream)
                    await msg.ack()
                    continue
                log.warning("dead_letter_publish_failed", error=brief(exc))
                await msg.nak(delay=5)
            else:
                await msg.ack()


async def reapply_advisory(event_log: EventLogPort, record: ParkedEvent) -> None:
    """An advisory leaves its stream once read: its parked record holds it whole."""
    await handle_advisory(event_log, record.first_bytes.encode())
