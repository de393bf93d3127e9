"""Server-Sent Events: what each event becomes, and a job's live stream.

Message ids are stream sequences. An event that becomes two messages (a job's
end: ``status_update`` then ``results``) gives the first the id ``<seq>-0`` and
the last ``<seq>``, so ``Last-Event-ID`` always names an exact position.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from functools import singledispatch

from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from contracts.events import (
    Envelope,
    JobFinished,
    JobRequested,
    PersonaCompleted,
    PersonaFailed,
    PersonaProgress,
)
from contracts.sse import PersonaProgressMessage, ResultsMessage, StatusUpdate
from services.bus import StoredEvent
from services.gateway.capacity import Slot
from services.gateway.feeds import JobFeeds

Message = StatusUpdate | PersonaProgressMessage | ResultsMessage


@singledispatch
def messages_for(event: Envelope) -> list[Message]:
    """Events a client does not see (work items, cancel requests)."""
    return []


@messages_for.register
def _(event: JobRequested) -> list[Message]:
    return [StatusUpdate(status="processing")]


@messages_for.register
def _(event: PersonaProgress) -> list[Message]:
    return [
        PersonaProgressMessage(
            persona_id=event.persona_id, status="processing", persona_name=event.persona_name, mode=event.mode
        )
    ]


@messages_for.register
def _(event: PersonaCompleted) -> list[Message]:
    return [
        PersonaProgressMessage(
            persona_id=event.persona_id, status="completed", persona_name=event.persona_name, mode=event.mode
        )
    ]


@messages_for.register
def _(event: PersonaFailed) -> list[Message]:
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
def _(event: JobFinished) -> list[Message]:
    return [StatusUpdate(status=event.status, error=event.error), ResultsMessage(results=event.results)]


@dataclass(frozen=True)
class Position:
    """A place in a job's message stream: after message ``index`` of event ``seq``
    (``index`` None: after all of that event's messages)."""

    seq: int
    index: int | None = None

    @classmethod
    def parse(cls, value: str | None) -> Position | None:
        if not value:
            return None
        head, _, tail = value.strip().partition("-")
        try:
            return cls(int(head), int(tail) if tail else None)
        except ValueError:
            return None


def render(stored: StoredEvent) -> list[dict[str, str]]:
    """The SSE items of one stored event: ``id`` and ``data`` of each message."""
    msgs = messages_for(stored.event)
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


def sse_items(stored: StoredEvent, after: Position | None = None) -> list[dict[str, str]]:
    return unseen(stored.seq, render(stored), after)


def encode(items: list[dict[str, str]]) -> bytes:
    """SSE wire format of ``items``: unnamed messages with an id."""
    return "".join(f"id: {item['id']}\ndata: {item['data']}\n\n" for item in items).encode()


async def stream_job_events(
    feeds: JobFeeds,
    job_id: str,
    *,
    start_seq: int,
    after: Position | None,
    before_end: Callable[[int], Awaitable[object]] | None = None,
    retry_ms: int = 0,
) -> AsyncIterator[bytes]:
    """A job's SSE messages from its start (or after ``after``), live, ending after its results.

    Whatever is ready is sent in one write. ``before_end(seq)`` runs before the
    final messages go out: the gateway waits there for the projector, so a poll
    right after ``results`` sees the final view. ``retry_ms`` (when set) goes first: how
    soon a browser reconnects, with ``Last-Event-ID``, if the stream drops."""
    if retry_ms:
        yield f"retry: {retry_ms}\n\n".encode()
    async with aclosing(feeds.watch(job_id, start_seq)) as batches:
        async for batch in batches:
            chunk: list[bytes] = []
            for stored, items, wire in batch:
                todo = unseen(stored.seq, items, after)
                if not todo:
                    continue
                if isinstance(stored.event, JobFinished) and before_end is not None:
                    await before_end(stored.seq)
                chunk.append(wire if len(todo) == len(items) else encode(todo))
            if chunk:
                yield b"".join(chunk)
            if batch and isinstance(batch[-1][0].event, JobFinished):
                return


class HeldEventStream(EventSourceResponse):
    """An SSE response holding a slot of the gateway's stream capacity, given back however
    the stream ends: its end, the client gone, an error, or a HEAD that never streams."""

    def __init__(self, *args, slot: Slot, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
