"""What each event becomes on a Server-Sent Events stream: pure functions, no I/O.

Message ids are stream sequences. An event that becomes several messages (a job's
end: ``status_update`` then ``results``, after a cancel's or an expiry's last
``persona_progress`` messages) gives each but the last the id ``<seq>-<n>`` (from 0)
and the last ``<seq>``, so ``Last-Event-ID`` always names an exact position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import singledispatch

from contracts.events import (
    Envelope,
    JobCompleted,
    JobFinished,
    JobRequested,
    PersonaCompleted,
    PersonaFailed,
    PersonaProgress,
)
from contracts.sse import PersonaProgressMessage, ResultsMessage, SseMessage, StatusUpdate
from services.adapters.event_log import StoredEvent


@singledispatch
def messages_for(event: Envelope) -> list[SseMessage]:
    """Events a client does not see (work items, cancel requests)."""
    return []


@messages_for.register
def _(event: JobRequested) -> list[SseMessage]:
    return [StatusUpdate(status="processing")]


@messages_for.register
def _(event: PersonaProgress) -> list[SseMessage]:
    return [
        PersonaProgressMessage(
            persona_id=event.persona_id, status="processing", persona_name=event.persona_name, mode=event.mode
        )
    ]


@messages_for.register
def _(event: PersonaCompleted) -> list[SseMessage]:
    return [
        PersonaProgressMessage(
            persona_id=event.persona_id, status="completed", persona_name=event.persona_name, mode=event.mode
        )
    ]


@messages_for.register
def _(event: PersonaFailed) -> list[SseMessage]:
    return [
        PersonaProgressMessage(
            persona_id=event.persona_id,
            status="failed",
            persona_name=event.persona_name,
            mode=event.mode,
            error=event.error,
            error_code=event.error_code,
        )
    ]


@messages_for.register
def _(event: JobFinished) -> list[SseMessage]:
    """A job's end: ``status_update``, then ``results``; a cancel's or an expiry's first the last
    ``persona_progress`` of each persona it cut short (a client that follows only those sees every
    persona end; one the generator refused after the deadline already had its own, the same). A
    job that completed ended after every persona's own end: nothing to add."""
    ends: list[SseMessage] = [] if isinstance(event, JobCompleted) else [
        PersonaProgressMessage(persona_id=pid, status=r.status, persona_name=r.persona_name, mode=r.mode,
                               error=r.error, error_code=r.error_code)
        for pid, r in event.results.cut_short().items()
    ]
    return [*ends, StatusUpdate(status=event.status, error=event.error), ResultsMessage(results=event.results)]


_MESSAGE_ID = re.compile(r"([0-9]+)(?:-([0-9]+))?")  # an SSE message id: <seq> or <seq>-<index>


@dataclass(frozen=True)
class Position:
    """A place in a job's message stream: after message ``index`` of event ``seq``
    (``index`` None: after all of that event's messages)."""

    seq: int
    index: int | None = None

    def has_seen(self, seq: int, count: int) -> bool:
        """Whether a client here has seen every one of the ``count`` messages of event ``seq``
        (an id past them, which this gateway never gave, counts as past them too)."""
        return self.seq > seq or (self.seq == seq and (self.index is None or self.index >= count - 1))

    @classmethod
    def parse(cls, value: str | None) -> Position | None:
        """An id this gateway sent (``<seq>`` or ``<seq>-<index>``, ASCII digits), or None: what
        ``int()`` alone would also take ("+15", "1_5", "15--1", other scripts' digits) is no id."""
        matched = _MESSAGE_ID.fullmatch(value.strip()) if value else None
        if matched is None:
            return None
        try:
            return cls(int(matched[1]), int(matched[2]) if matched[2] is not None else None)
        except ValueError:  # past the digits Python converts (4,300)
            return None


def render(stored: StoredEvent) -> list[dict[str, str]]:
    """The SSE items of one stored event: ``id`` and ``data`` of each message."""
    msgs = messages_for(stored.event) if stored.event is not None else []
    return [
        {"id": str(stored.seq) if i == len(msgs) - 1 else f"{stored.seq}-{i}", "data": msg.to_json()}
        for i, msg in enumerate(msgs)
    ]


def unseen(stored_seq: int, items: list[dict[str, str]], after: Position | None) -> list[dict[str, str]]:
    """The items of the event at ``stored_seq`` that a client resuming ``after`` has not seen."""
    if after is None or stored_seq > after.seq:
        return items
    if stored_seq < after.seq or after.index is None:
        return []
    return items[after.index + 1 :]


def encode(items: list[dict[str, str]]) -> bytes:
    """SSE wire format of ``items``: unnamed messages with an id."""
    return "".join(f"id: {item['id']}\ndata: {item['data']}\n\n" for item in items).encode()
