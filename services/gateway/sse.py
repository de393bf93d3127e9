"""A job's live Server-Sent Events stream (what each event becomes: :mod:`.sse_messages`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing

import structlog
from opentelemetry.trace import Span
from sse_starlette.sse import AppStatus
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from contracts.events import JobFinished
from services.adapters.event_log import StoredEvent
from services.gateway.capacity import Slot
from services.gateway.feeds import PIECE_BYTES, JobFeeds
from services.gateway.http_head import DirectBody
from services.gateway.sse_messages import Position, encode, unseen
from services.runtime import tracing
from services.runtime.metrics import Metrics

log = structlog.get_logger()

PING = b": ping\n\n"  # a comment: keeps proxies from closing an idle stream; EventSource ignores it


def server_exiting() -> bool:
    """Whether uvicorn was told to stop (sse-starlette notes its exit signal): open streams end."""
    return AppStatus.should_exit


class StreamTap:
    """A stream as its job's feed writes to it once it has caught up (:class:`.feeds.Tap`):
    straight to the connection (:class:`.http_head.DirectBody`), counted and traced as the
    stream's own writes are."""

    __slots__ = ("_body", "_after", "_metrics", "_request")

    def __init__(self, body: DirectBody, *, after: Position | None, metrics: Metrics | None,
                 request: Span) -> None:
        self._body = body
        self._after = after
        self._metrics = metrics
        self._request = request

    def takes_all_after(self, seq: int) -> bool:
        return self._after is None or self._after.seq <= seq

    def writable(self) -> bool:
        return self._body.writable()

    def send(self, body: bytes, events: Sequence[StoredEvent], messages: int) -> bool:
        if not self._body.write(body):
            return False
        try:  # written: whatever fails now must not have it written again
            if self._metrics is not None:
                self._metrics.sse_messages.inc(messages)
            tracing.end_spans(tracing.event_spans("sse deliver", events, links=[self._request]))
        except Exception:
            log.exception("sse_delivery_not_recorded")
        return True

    def ping(self) -> None:
        self._body.write(PING)


async def stream_job_events(
    feeds: JobFeeds,
    job_id: str,
    *,
    start_seq: int,
    after: Position | None,
    retry_ms: int = 0,
    metrics: Metrics | None = None,
    direct: DirectBody | None = None,
) -> AsyncIterator[bytes]:
    """A job's SSE messages from its start (or after ``after``), live, ending after its results.

    Whatever is ready is sent in one write, the job's end as soon as the log has it: a read
    right after ``results`` waits for the projector itself (:mod:`.freshness`). ``retry_ms``
    (when set) goes first: how soon a browser reconnects, with ``Last-Event-ID``, if the
    stream drops. With ``direct`` (the server's writer of this response's body), the feed
    writes the live messages itself whenever the client has caught up."""
    if retry_ms:
        yield f"retry: {retry_ms}\n\n".encode()
    # Each delivered event is traced in the job's trace (a child of its publish), linked to the
    # request that holds this stream, which is in the client's trace, not the job's.
    stream_request = tracing.current_span()
    tap = StreamTap(direct, after=after, metrics=metrics, request=stream_request) if direct is not None else None
    async with aclosing(feeds.watch(job_id, start_seq, tap=tap)) as batches:
        async for batch in batches:
            if not batch:  # a keep-alive beat, nothing new
                yield PING
                continue
            # Written in pieces of at most PIECE_BYTES (one event at least): each waits until the
            # client has taken what came before, so a slow client is held one piece at a time.
            chunk: list[bytes] = []
            size = sent = 0
            delivered = []
            for n, (stored, items, wire) in enumerate(batch, 1):
                todo = unseen(stored.seq, items, after)
                if todo:
                    chunk.append(wire if len(todo) == len(items) else encode(todo))
                    size += len(chunk[-1])
                    sent += len(todo)
                    delivered.append(stored)
                if chunk and (size >= PIECE_BYTES or n == len(batch)):
                    spans = tracing.event_spans("sse deliver", delivered, links=[stream_request])
                    try:
                        yield b"".join(chunk)  # back here once it is written (or the client left)
                    finally:
                        tracing.end_spans(spans)
                    if metrics is not None:
                        metrics.sse_messages.inc(sent)
                    chunk, size, sent, delivered = [], 0, 0, []
            if isinstance(batch[-1][0].event, JobFinished):
                return


class HeldEventStream(StreamingResponse):
    """A job's SSE response, holding a slot of the gateway's stream capacity that is given
    back however the stream ends: its end, the client gone, or an error.

    Light, because a gateway holds thousands: the stream is written from the request's own
    task, and one more task per client waits for it to leave (a write to a closed connection
    does not fail under uvicorn, so only ``receive`` says so). Keep-alive comes from the
    feed's one timer (:mod:`.feeds`), not one per client."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], *, slot: Slot, metrics: Metrics | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(body, headers={"Cache-Control": "no-store", **(headers or {})},
                         media_type=self.media_type)
        self.slot = slot
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.metrics is not None:
            self.metrics.sse_clients.inc()
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await self._stream(receive, send)
        finally:
            if self.metrics is not None:
                self.metrics.sse_clients.dec()
            self.slot.release()

    async def _stream(self, receive: Receive, send: Send) -> None:
        writer = asyncio.current_task()
        assert writer is not None
        left = False

        async def until_gone() -> None:
            nonlocal left
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            except Exception:  # noqa: BLE001 - a request body the server refuses to read (past its limit)
                pass  # ends the stream too: nothing could tell this task the client left
            left = True
            writer.cancel()

        listener = asyncio.create_task(until_gone())
        try:
            async with aclosing(self.body_iterator) as chunks:
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not left:
                raise
            writer.uncancel()  # the client left: its stream is over, nothing failed
        finally:
            listener.cancel()
