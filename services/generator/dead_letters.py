"""Work that exhausted its deliveries becomes a visible failure, never a silent drop.

JetStream announces a message that reached ``max_deliver`` with an advisory; we
turn it into a ``PersonaFailed`` (its dedup id makes every replica's copy one
event) and a log line. A worker that fails on the last delivery publishes the
same event itself; this covers workers that died instead.
"""

from __future__ import annotations

import json

import structlog
from nats.js.errors import NotFoundError

from contracts.events import PersonaPromptRequested, parse_event
from services.bus import EventLog
from services.generator.work import failed
from services.llm.base import LLMError

log = structlog.get_logger()


def advisory_subject(stream: str, consumer: str) -> str:
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


async def publish_dead_letter(event_log: EventLog, stream_seq: int, deliveries: int) -> bool:
    try:
        raw = await event_log.js.get_msg(event_log.stream, seq=stream_seq)
    except NotFoundError:
        return False
    item = parse_event(raw.data)
    if not isinstance(item, PersonaPromptRequested):
        return False
    err = LLMError("delivery_exhausted",
                   f"no worker could finish this persona after {deliveries} deliveries (workers crashed or hung)")
    await event_log.publish(failed(item, err, deliveries))
    log.error("work_item_dead_lettered", job_id=item.job_id, persona_id=item.persona_id,
              deliveries=deliveries, stream_seq=stream_seq)
    return True


async def watch_dead_letters(event_log: EventLog, consumer: str) -> None:
    async def on_advisory(msg) -> None:
        advisory = json.loads(msg.data)
        try:
            await publish_dead_letter(event_log, int(advisory["stream_seq"]), int(advisory.get("deliveries", 0)))
        except Exception as exc:  # noqa: BLE001 - another replica may still publish it
            log.warning("dead_letter_publish_failed", error=str(exc), advisory=advisory)

    await event_log.nc.subscribe(advisory_subject(event_log.stream, consumer), cb=on_advisory)
