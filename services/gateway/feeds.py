"""Live job feeds shared by every SSE client of a gateway.

One ordered JetStream consumer per gateway follows the whole log (``promptgen.>``: the
read fence, :mod:`.freshness`, is told of every event); each
job that has watchers gets a :class:`JobChannel` holding its history (loaded
once from the log) and every later event, each decoded and rendered once. A
client is a cursor into that list: a thousand clients of one job cost one
decode per event, not a thousand. An event no client here can be shown (of a job
without watchers on this gateway, or a work item) is passed over by its subject,
undecoded.

A client that has caught up with its job is written to by the feed itself (a :class:`Tap`):
each batch of the log is written to all such clients of a job in one pass, the bytes joined
once, instead of waking a task per client to do it. A client that falls behind (its connection's
buffer full) goes back to its own task, which waits for it, and is tapped again once caught up.

No event is missed: a channel registers for live events *before* it loads the
job's history, and merges the two by stream sequence.

Keep-alive comes from one timer for the whole gateway, not one per client: each ping
interval every channel's watchers are woken with nothing new, and their streams send a
comment. The same timer ends every stream when the server is shutting down (the browser
reconnects, with ``Last-Event-ID``, to a gateway that stays).

No event stops the feed: one that cannot be decoded ends only its own job's
streams (the browser reconnects with ``Last-Event-ID`` and reads that job from
the log again, where the event is skipped), and a dispatch loop that dies anyway
is logged and started again from where it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from contracts import subjects
from contracts.events import JobFinished, JobRequested, UnknownEvent
from services.adapters.event_log import StoredEvent
from services.adapters.ports import EventLogPort
from services.gateway.freshness import ReadFence
from services.gateway.sse_messages import encode, render
from services.runtime.lifecycle import cancel_and_wait

log = structlog.get_logger()

Delivery = tuple[StoredEvent, list[dict[str, str]], bytes]  # an event, its SSE items, their wire bytes


class Tap(Protocol):
    """A client's stream as its job's feed writes to it directly, once it has caught up."""

    def takes_all_after(self, seq: int) -> bool:
        """Whether every message of every event after ``seq`` is for this client (none seen before)."""

    def writable(self) -> bool:
        """Whether a write would go out now (the client is there and not behind)."""

    def send(self, body: bytes, events: Sequence[StoredEvent], messages: int) -> bool:
        """Writes ``body`` (the wire bytes of ``events``, ``messages`` SSE messages), if it can go out now."""

    def ping(self) -> None:
        """A keep-alive comment, if it can go out now."""


PIECE_BYTES = 64 * 1024  # the most the feed writes to a client at once (one event may be more)


@dataclass(frozen=True)
class _Piece:
    upto: int  # the events before this index are written with it
    events: list[StoredEvent]
    body: bytes
    messages: int


@dataclass(eq=False)
class _Tapped:
    tap: Tap
    cursor: int  # the events written to it so far
    back: asyncio.Future[None]  # done when its own task takes over again


@dataclass
class JobChannel:
    job_id: str
    events: list[StoredEvent] = field(default_factory=list)
    rendered: list[list[dict[str, str]]] = field(default_factory=list)
    wire: list[bytes] = field(default_factory=list)
    loaded: bool = False
    loading: asyncio.Task | None = None
    early: list[StoredEvent] = field(default_factory=list)  # live events that came while loading
    # Set (and replaced) whenever the channel changes. Not a Condition: its lock would wake N
    # watchers one event-loop turn after another, so the last one would wait N turns.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: int = 0
    beats: int = 0  # keep-alive beats so far: a watcher woken by one with nothing new sends a comment
    broken: bool = False  # one of the job's live events could not be decoded: its streams end
    tapped: dict[_Tapped, None] = field(default_factory=dict)  # caught-up clients the feed writes to (in order)

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def append(self, stored: StoredEvent) -> bool:
        """Kept, rendered and encoded once for every watcher, if a client sees it. An event no
        client sees (a work item, a cancel request) is not kept: each work item holds its job's
        whole template, and a job's channel lives as long as anyone watches it."""
        items = render(stored)
        if not items:
            return False
        self.events.append(stored)
        self.rendered.append(items)
        self.wire.append(encode(items))
        return True

    async def add(self, stored: StoredEvent) -> bool:
        """Whether it is new here: then :meth:`flush` writes it to the tapped clients."""
        if not self.loaded:
            if render(stored):
                self.early.append(stored)
            return False
        if stored.seq > self.last_seq and self.append(stored):
            self._wake()
            return True
        return False

    async def break_off(self) -> None:
        self.broken = True
        self._wake()
        self.untap()

    def beat(self) -> None:
        self.beats += 1
        self._wake()
        for tapped in self.tapped:
            try:
                tapped.tap.ping()
            except Exception:  # a ping is not owed: the next one, or the next write, finds out
                log.exception("sse_ping_failed", job_id=self.job_id)

    def flush(self) -> None:
        """Writes the events that came since the last flush to every tapped client, up to the
        job's end and no further, in pieces of at most :data:`PIECE_BYTES` (one event at least)
        joined once for all of them, each while the client's connection takes it. A client that
        cannot take them all now, and every client once the end is written, goes back to its
        own task: a client that stops reading is held at most one piece past its buffer."""
        end = len(self.events)
        pieces_from: dict[int, list[_Piece]] = {}  # by cursor: the same pieces for every client there
        back = []
        for tapped in self.tapped:
            cursor = tapped.cursor
            if cursor >= end:
                continue
            pieces = pieces_from.get(cursor)
            if pieces is None:
                pieces = pieces_from[cursor] = self._pieces(cursor, end)
            for piece in pieces:
                try:
                    sent = tapped.tap.send(piece.body, piece.events, piece.messages)
                except Exception:  # its own task writes it, and says what fails
                    log.exception("sse_direct_write_failed", job_id=self.job_id)
                    sent = False
                if not sent:
                    break
                tapped.cursor = piece.upto
            if tapped.cursor < pieces[-1].upto or self.ended_before(tapped.cursor):
                back.append(tapped)
        self._hand_back(back)

    def _pieces(self, cursor: int, end: int) -> list[_Piece]:
        pieces: list[_Piece] = []
        start, size, upto = cursor, 0, self.through_end(cursor, end)
        for i in range(cursor, upto):
            size += len(self.wire[i])
            if size >= PIECE_BYTES or i == upto - 1:
                pieces.append(_Piece(i + 1, self.events[start:i + 1], b"".join(self.wire[start:i + 1]),
                                     sum(len(items) for items in self.rendered[start:i + 1])))
                start, size = i + 1, 0
        return pieces

    def through_end(self, cursor: int, end: int) -> int:
        """Where a stream at ``cursor`` stops in the events before ``end``: after the job's end,
        if it is among them, and no further (an event stored after it, a call in flight when the
        job was cancelled, must not keep the stream open)."""
        return next((i + 1 for i in range(cursor, end) if isinstance(self.events[i].event, JobFinished)), end)

    def ended_before(self, cursor: int) -> bool:
        """Whether the event just before ``cursor`` is the job's end: a stream there is done."""
        return cursor > 0 and isinstance(self.events[cursor - 1].event, JobFinished)

    async def tap(self, tap: Tap, cursor: int) -> int:
        """Writes to ``tap`` from ``cursor`` on, in :meth:`flush`, until it goes back to its
        task: the events written to it by then."""
        tapped = _Tapped(tap, cursor, asyncio.get_running_loop().create_future())
        self.tapped[tapped] = None
        try:
            await tapped.back
        finally:
            self.tapped.pop(tapped, None)
        return tapped.cursor

    def untap(self) -> None:
        """Every tapped client back to its own task."""
        self._hand_back(list(self.tapped))

    def _hand_back(self, back: list[_Tapped]) -> None:
        for tapped in back:
            self.tapped.pop(tapped, None)
            if not tapped.back.done():
                tapped.back.set_result(None)

    def _wake(self) -> None:
        self.changed.set()  # every watcher waiting on it is runnable on the loop's next turn
        self.changed = asyncio.Event()


class JobFeeds:
    def __init__(self, event_log: EventLogPort, *, ping_seconds: float = 15.0,
                 exiting: Callable[[], bool] = lambda: False, fence: ReadFence | None = None) -> None:
        """``exiting()``: whether the server is shutting down (then every stream ends); ``fence``:
        told where the feed starts, then of every event of the log, in order."""
        self.log = event_log
        self.fence = fence
        self.channels: dict[str, JobChannel] = {}
        self.ping_seconds = ping_seconds
        self.exiting = exiting
        self._task: asyncio.Task | None = None
        self._beating: asyncio.Task | None = None
        self._position = 0  # the last stream sequence dispatched: where a restarted loop resumes

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        # From the log's end as the gateway starts: the consumer starts at a sequence, so no
        # live event is missed whenever its subscription is made.
        self._position = await self.log.last_seq()
        if self.fence is not None:
            self.fence.starts_at(self._position)
        self._task = asyncio.create_task(self._run(), name="job-feeds")
        self._beating = asyncio.create_task(self._beat(), name="job-feeds-keepalive")

    async def close(self) -> None:
        for task in (self._task, self._beating):
            if task:
                await cancel_and_wait(task)

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.ping_seconds
        while True:
            await asyncio.sleep(min(0.5, self.ping_seconds))
            if self.exiting():
                for channel in list(self.channels.values()):
                    await self._end_streams(channel)
            elif loop.time() >= next_ping:
                next_ping = loop.time() + self.ping_seconds
                for channel in list(self.channels.values()):
                    channel.beat()

    async def _run(self) -> None:
        """Dispatch for as long as the gateway runs: a loop that dies is logged at error and
        started again after the last event it dispatched (every live SSE stream depends on it)."""
        while True:
            try:
                await self._dispatch()
            except Exception:
                log.exception("job_feed_died", position=self._position)
                await asyncio.sleep(1)
            log.warning("job_feed_restarted", position=self._position)

    def _shown(self, subject: str, seq: int) -> bool:
        """Whether a live event can reach a client, by its subject alone (so no other is decoded):
        one of a job with a channel here, and not a work item (no client is shown one). A job's
        channel made later loads what came before from the log. Every event is observed."""
        if self.fence is not None:
            self.fence.observe(subject, seq)
        return subjects.job_id_of(subject) in self.channels and not subjects.is_work_item(subject)

    async def _dispatch(self) -> None:
        async with aclosing(self.log.follow_batches(subjects.ALL, self._position + 1,
                                                    wanted=self._shown)) as batches:
            async for batch in batches:
                grown: dict[str, JobChannel] = {}
                for stored in batch:
                    try:
                        channel = await self._deliver(stored)
                        if channel is not None:
                            grown[channel.job_id] = channel
                    except Exception:
                        log.exception("job_feed_message_failed", subject=stored.subject, seq=stored.seq)
                    self._position = max(self._position, stored.seq)
                for channel in grown.values():  # the batch at once: one write per tapped client
                    try:
                        channel.flush()
                    except Exception:  # its clients' own tasks write what came, and wait for them
                        log.exception("job_feed_flush_failed", job_id=channel.job_id)
                        channel.untap()

    async def _deliver(self, stored: StoredEvent) -> JobChannel | None:
        """The job's channel, when the event is new to it."""
        job_id = subjects.job_id_of(stored.subject)
        channel = self.channels.get(job_id) if job_id else None
        if channel is None:
            return None
        if stored.event is None and isinstance(stored.error, UnknownEvent):
            # A newer producer's event: nothing this version can show, and nothing missing.
            log.warning("job_feed_event_unknown", job_id=job_id, subject=stored.subject, seq=stored.seq,
                        error=str(stored.error))
            return None
        error: Exception | None = stored.error
        if error is None:
            try:
                return channel if await channel.add(stored) else None
            except Exception as exc:  # noqa: BLE001 - not rendered: its watchers would miss it
                error = exc
        # Its watchers stop here, and a reconnect reads the job from the log again.
        log.error("job_feed_event_unreadable", job_id=job_id, subject=stored.subject, seq=stored.seq,
                  error=str(error)[:500])
        await self._end_streams(channel)
        return None

    async def _end_streams(self, channel: JobChannel) -> None:
        if self.channels.get(channel.job_id) is channel:
            del self.channels[channel.job_id]
        await channel.break_off()

    async def _load(self, channel: JobChannel, start_seq: int) -> None:
        try:
            async with aclosing(self.log.read(subjects.job_history(channel.job_id), start_seq)) as history:
                async for stored in history:
                    if stored.event is None:  # shown to nobody: logged, and the stream goes on
                        level = log.warning if isinstance(stored.error, UnknownEvent) else log.error
                        level("job_history_event_unreadable", job_id=channel.job_id, subject=stored.subject,
                              seq=stored.seq, error=str(stored.error)[:500])
                        continue
                    channel.append(stored)
        except BaseException:
            if self.channels.get(channel.job_id) is channel:
                del self.channels[channel.job_id]
            raise
        for stored in channel.early:
            if stored.seq > channel.last_seq:
                channel.append(stored)
        channel.early.clear()
        channel.loaded = True

    def requested(self, job_id: str) -> StoredEvent | None:
        """The job's request event, when this gateway already follows the job (no I/O): a
        thousand clients of one job cost one lookup of where it starts and whose it is."""
        channel = self.channels.get(job_id)
        if channel is None or not channel.loaded or channel.broken or not channel.events:
            return None
        first = channel.events[0]
        return first if isinstance(first.event, JobRequested) else None

    async def watch(
        self, job_id: str, start_seq: int, *, tap: Tap | None = None
    ) -> AsyncIterator[list[Delivery]]:
        """The job's events from its start, then live, up to its end or until the caller stops
        (or one of its events cannot be read, or the server shuts down): each time, everything
        that has arrived since the last (stored event, items, wire bytes); an empty list when
        a keep-alive beat came and nothing else.

        With a ``tap``, whenever the caller has caught up (and takes every message from there
        on), the feed writes the events to it itself; what it could not write comes here."""
        channel = self.channels.get(job_id)
        if channel is None:
            channel = self.channels[job_id] = JobChannel(job_id)
            channel.loading = asyncio.create_task(self._load(channel, start_seq))
        channel.watchers += 1
        try:
            assert channel.loading is not None
            await asyncio.shield(channel.loading)  # shared: one watcher leaving does not cancel it
            cursor, beats = 0, channel.beats
            while True:
                end = len(channel.events)
                if cursor < end:
                    upto = channel.through_end(cursor, end)
                    yield [(channel.events[i], channel.rendered[i], channel.wire[i]) for i in range(cursor, upto)]
                    cursor = upto
                    if channel.ended_before(cursor):
                        return
                elif beats != channel.beats:
                    yield []
                beats = channel.beats
                if channel.broken:
                    return
                if cursor == len(channel.events) and beats == channel.beats and not channel.broken:
                    if tap is not None and tap.takes_all_after(channel.last_seq) and tap.writable():
                        cursor = await channel.tap(tap, cursor)
                        beats = channel.beats  # its beats were pinged
                        if channel.ended_before(cursor):
                            return
                        continue
                    await channel.changed.wait()
        finally:
            channel.watchers -= 1
            if channel.watchers == 0 and self.channels.get(job_id) is channel:
                del self.channels[job_id]
