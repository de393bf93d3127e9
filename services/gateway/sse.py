"""A job's live Server-Sent Events stream (what each event becomes: :mod:`.sse_messages`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from contracts.events import JobFinished
from services.gateway.capacity import Slot
from services.gateway.feeds import JobFeeds
from services.gateway.sse_messages import Position, encode, unseen
from services.runtime import tracing
from services.runtime.metrics import Metrics


async def stream_job_events(
    feeds: JobFeeds,
    job_id: str,
    *,
    start_seq: int,
    after: Position | None,
    before_end: Callable[[int], Awaitable[object]] | None = None,
    retry_ms: int = 0,
    metrics: Metrics | None = None,
) -> AsyncIterator[bytes]:
    """A job's SSE messages from its start (or after ``after``), live, ending after its results.

    Whatever is ready is sent in one write. ``before_end(seq)`` runs before the
    final messages go out: the gateway waits there for the projector, so a poll
    right after ``results`` sees the final view. ``retry_ms`` (when set) goes first: how
    soon a browser reconnects, with ``Last-Event-ID``, if the stream drops."""
    if retry_ms:
        yield f"retry: {retry_ms}\n\n".encode()
    # Each delivered event is traced in the job's trace (a child of its publish), linked to the
    # request that holds this stream, which is in the client's trace, not the job's.
    stream_request = tracing.current_span()
    async with aclosing(feeds.watch(job_id, start_seq)) as batches:
        async for batch in batches:
            chunk: list[bytes] = []
            sent = 0
            delivered = []
            for stored, items, wire in batch:
                todo = unseen(stored.seq, items, after)
                if not todo:
                    continue
                if isinstance(stored.event, JobFinished) and before_end is not None:
                    await before_end(stored.seq)
                chunk.append(wire if len(todo) == len(items) else encode(todo))
                sent += len(todo)
                delivered.append(stored)
            if chunk:
                spans = tracing.event_spans("sse deliver", delivered, links=[stream_request])
                try:
                    yield b"".join(chunk)  # back here once the chunk is written (or the client left)
                finally:
                    tracing.end_spans(spans)
                if metrics is not None:
                    metrics.sse_messages.inc(sent)
            if batch and isinstance(batch[-1][0].event, JobFinished):
                return


class HeldEventStream(EventSourceResponse):
    """An SSE response holding a slot of the gateway's stream capacity, given back however
    the stream ends: its end, the client gone, an error, or a HEAD that never streams."""

    def __init__(self, *args, slot: Slot, metrics: Metrics | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slot = slot
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.metrics is not None:
            self.metrics.sse_clients.inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
            if self.metrics is not None:
                self.metrics.sse_clients.dec()
