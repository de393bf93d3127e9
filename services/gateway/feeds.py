"""Live job feeds shared by every SSE client of a gateway.

One ordered JetStream consumer per gateway follows ``promptgen.job.>``; each
job that has watchers gets a :class:`JobChannel` holding its history (loaded
once from the log) and every later event, each decoded and rendered once. A
client is a cursor into that list: a thousand clients of one job cost one
decode per event, not a thousand.

No event is missed: a channel registers for live events *before* it loads the
job's history, and merges the two by stream sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import structlog
from nats.js import api

from contracts import subjects
from contracts.events import JobFinished, parse_event
from services.bus import EventLog, StoredEvent

log = structlog.get_logger()


@dataclass
class JobChannel:
    job_id: str
    events: list[StoredEvent] = field(default_factory=list)
    rendered: list[list[dict[str, str]]] = field(default_factory=list)
    wire: list[bytes] = field(default_factory=list)
    loaded: bool = False
    early: list[StoredEvent] = field(default_factory=list)  # live events that came while loading
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    watchers: int = 0

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    @property
    def finished(self) -> bool:
        return bool(self.events) and isinstance(self.events[-1].event, JobFinished)

    def append(self, stored: StoredEvent) -> None:
        from services.gateway.sse import encode, render  # rendered and encoded once, for every watcher

        items = render(stored)
        self.events.append(stored)
        self.rendered.append(items)
        self.wire.append(encode(items))

    async def add(self, stored: StoredEvent) -> None:
        if not self.loaded:
            self.early.append(stored)
            return
        if stored.seq > self.last_seq:
            self.append(stored)
            async with self.changed:
                self.changed.notify_all()


class JobFeeds:
    def __init__(self, event_log: EventLog) -> None:
        self.log = event_log
        self.channels: dict[str, JobChannel] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        sub = await self.log.js.subscribe(
            subjects.ALL_JOBS, stream=self.log.stream, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW, idle_heartbeat=2,
        )
        self._task = asyncio.create_task(self._dispatch(sub))

    async def close(self) -> None:
        if self._task:
            self._task.cancel()

    async def _dispatch(self, sub) -> None:
        from services.bus import stored_message  # one decoder for the whole gateway

        while True:
            try:
                msg = await sub.next_msg(timeout=None)
            except Exception:  # noqa: BLE001 - the ordered consumer resets itself after a reconnect
                await asyncio.sleep(0.1)
                continue
            channel = self.channels.get(msg.subject.split(".", 3)[2])
            if channel is not None:
                await channel.add(stored_message(msg))

    async def _load(self, channel: JobChannel, start_seq: int) -> None:
        try:
            async with aclosing(self.log.read(subjects.job_history(channel.job_id), start_seq)) as history:
                async for stored in history:
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

    async def watch(
        self, job_id: str, start_seq: int
    ) -> AsyncIterator[list[tuple[StoredEvent, list[dict[str, str]], bytes]]]:
        """The job's events from its start, then live, until its end or the caller stops:
        each time, everything that has arrived since the last (stored event, items, wire bytes)."""
        channel = self.channels.get(job_id)
        if channel is None:
            channel = self.channels[job_id] = JobChannel(job_id)
            self._loading[job_id] = asyncio.create_task(self._load(channel, start_seq))
        channel.watchers += 1
        try:
            loading = self._loading.get(job_id)
            if loading is not None:
                try:
                    await asyncio.shield(loading)
                finally:
                    if loading.done():
                        self._loading.pop(job_id, None)
            cursor = 0
            while True:
                end = len(channel.events)
                if cursor < end:
                    yield [(channel.events[i], channel.rendered[i], channel.wire[i]) for i in range(cursor, end)]
                    cursor = end
                    if isinstance(channel.events[end - 1].event, JobFinished):
                        return
                async with channel.changed:
                    await channel.changed.wait_for(lambda: cursor < len(channel.events))
        finally:
            channel.watchers -= 1
            if channel.watchers == 0 and self.channels.get(job_id) is channel:
                del self.channels[job_id]
