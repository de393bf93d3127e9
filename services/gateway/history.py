"""A job's history for people: one record per event, used by the API and `promptgen replay`."""

from __future__ import annotations

from contextlib import aclosing

from contracts import subjects
from contracts.api import JobEventRecord
from contracts.events import UnknownEvent
from services.adapters.event_log import StoredEvent
from services.adapters.parked import preview
from services.adapters.ports import EventLogPort

MAX_SEQ = 2**63 - 1  # a page starts after at most this: JetStream's sequences are unsigned 64-bit
# A page ends with the event that reaches this many bytes of stored events: each work item holds
# its job's whole template, and 1,000 of them would be as many copies in one response.
PAGE_BYTES = 4 << 20

_STATUS_OF_TYPE = {
    "job.requested": "processing",
    "persona.prompt_requested": "queued",
    "persona.completed": "completed",
    "persona.failed": "failed",
    "job.cancel_requested": "cancel_requested",
}


def record(stored: StoredEvent) -> JobEventRecord:
    event = stored.event
    if event is None:  # shown as what it is: the log holds it, this code cannot read it
        unknown = isinstance(stored.error, UnknownEvent)
        return JobEventRecord(
            seq=stored.seq, time=stored.time, subject=stored.subject,
            type=stored.error.type if unknown else "undecodable",
            status="unknown" if unknown else "undecodable",
            error=str(stored.error), event={"first_bytes": preview(stored.data)},
        )
    return JobEventRecord(
        seq=stored.seq,
        time=stored.time,
        subject=stored.subject,
        type=event.type,
        persona_id=getattr(event, "persona_id", None),
        status=getattr(event, "status", None) or _STATUS_OF_TYPE.get(event.type),
        error=getattr(event, "error", None),
        actor=getattr(event, "actor", None),
        tenant=getattr(event, "tenant", None),
        event=event.model_dump(mode="json"),
    )


async def job_history(event_log: EventLogPort, job_id: str, start_seq: int = 1) -> list[JobEventRecord]:
    async with aclosing(event_log.read(subjects.job_history(job_id), start_seq)) as events:
        return [record(stored) async for stored in events]


async def job_history_page(
    event_log: EventLogPort, job_id: str, start_seq: int, limit: int
) -> tuple[list[JobEventRecord], int | None]:
    """Up to ``limit`` records from ``start_seq`` (fewer once they hold :data:`PAGE_BYTES`), and
    the sequence to read the next page after (None when there is no more)."""
    page, more = await event_log.read_page(subjects.job_history(job_id), start_seq, limit, max_bytes=PAGE_BYTES)
    return [record(stored) for stored in page], page[-1].seq if more else None
