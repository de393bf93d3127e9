"""The event log in memory: :class:`~services.adapters.ports.EventLogPort` without a server.

One :class:`MemoryEventLog` plays the NATS server and every connection to it: give the same
one to each service of a test, as they would share one server. Events published to the log
also reach core subscribers of their subject, as on NATS (the generator's cancellations
rely on it), and a core publish to a subject a stream captures is stored (the max-deliveries
advisories reach the dead-letter stream that way).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from nats.errors import NoRespondersError
from nats.js import api
from nats.js.errors import NotFoundError

from contracts import subjects
from contracts.events import Envelope, encode_event
from services.adapters.event_log import DerivedReads, LogState, StoredEvent, Unchanged, Unless, stored_event
from services.runtime import tracing
from services.runtime.settings import Settings
from services.testing.memory_consumers import DurableConsumer, PullSubscription, StreamMessage, metadata
from services.testing.memory_core import CoreMessage, CoreRouter, CoreSubscription, MemoryKeyValue
from services.testing.memory_streams import MemoryStream, StoredMessage


def _event(msg: StoredMessage) -> StoredEvent:
    return stored_event(msg.seq, msg.time, msg.subject, msg.data, msg.headers)


class MemoryEventLog(DerivedReads):
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings(provider="offline")
        self.stream = self.settings.stream
        self._streams: dict[str, MemoryStream] = {}
        self._consumers: dict[tuple[str, str], DurableConsumer] = {}
        self._buckets: dict[str, MemoryKeyValue] = {}
        self._core = CoreRouter()
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._create_log_stream()

    def _create_log_stream(self) -> None:
        self._streams[self.stream] = MemoryStream(api.StreamConfig(
            name=self.stream, subjects=[subjects.ALL], duplicate_window=self.settings.duplicate_window_seconds,
        ))

    def delete_stream(self, name: str) -> None:
        """Delete a stream with its consumers, as an operator can (``nats stream rm``)."""
        self._stream(name)
        del self._streams[name]
        for key in [key for key in self._consumers if key[0] == name]:
            self._consumers.pop(key).close()

    # --- the server's side ----------------------------------------------------------------

    def _stream(self, name: str) -> MemoryStream:
        if name not in self._streams:
            raise NotFoundError(description=f"stream not found: {name}")
        return self._streams[name]

    def _store(self, stream: str, subject: str, data: bytes, headers: dict[str, str] | None = None) -> int:
        """A JetStream publish: stored in ``stream`` (which must capture ``subject``), then seen
        by core subscribers of the subject, duplicate or not, as on NATS."""
        target = self._streams.get(stream)
        if target is None or not target.captures(subject):
            raise NoRespondersError
        seq, _ = target.store(subject, data, headers)
        self._core.route(subject, data, headers=headers)
        return seq

    def _route(self, subject: str, data: bytes) -> None:
        """A core publish: stored by any stream that captures the subject, and delivered."""
        for stream in self._streams.values():
            if stream.captures(subject):
                stream.store(subject, data)
        self._core.route(subject, data)

    def reconnect(self) -> None:
        """Run the reconnection callbacks, as after a dropped connection."""
        for callback in self._reconnect_callbacks:
            callback()

    # --- the events -----------------------------------------------------------------------

    async def publish(self, event: Envelope, *, retry_seconds: float = 60, unless: Unless | None = None,
                      unchanged: Unchanged | None = None) -> int:
        subject = event.subject()
        with tracing.publishing(event, subject) as headers:
            await asyncio.sleep(0)  # a publish is a round trip: others run meanwhile
            data = encode_event(event)

            async def store(sent: dict[str, str]) -> int:
                return self._store(self.stream, subject, data, sent)  # the stream checks a condition

            if unchanged is not None:
                return await self._publish_unchanged(event, headers, unchanged, store)
            if unless is None:
                return await store(headers)
            return await self._publish_unless(event, headers, unless, store)

    async def publish_unannounced(self, event: Envelope) -> int:
        """Store ``event`` without delivering it to core subscribers yet: the moment on NATS
        between an event being stored and its notice reaching a subscriber."""
        subject = event.subject()
        with tracing.publishing(event, subject) as headers:
            seq, _ = self._streams[self.stream].store(subject, encode_event(event), headers)
            return seq

    async def last(self, subject: str, *, leader: bool = False) -> StoredEvent | None:
        msg = self._streams[self.stream].last_on(subject)
        return _event(msg) if msg is not None else None

    async def at(self, seq: int, *, leader: bool = False) -> StoredEvent | None:
        msg = self._streams[self.stream].get(seq)
        return _event(msg) if msg is not None else None

    async def last_seq_on(self, subject: str, *, leader: bool = False) -> int | None:
        msg = self._streams[self.stream].last_on(subject)
        return msg.seq if msg is not None else None

    async def last_seq(self) -> int:
        return self._streams[self.stream].last_seq

    async def state(self) -> LogState:
        source = self._stream(self.stream)
        return LogState(log_id=source.log_id, first_seq=source.first_seq, last_seq=source.last_seq)

    async def read_batches(
        self, filter_subject: str, start_seq: int = 1, max_batch: int = 1000
    ) -> AsyncIterator[list[StoredEvent]]:
        async with aclosing(self.read_messages(filter_subject, start_seq, max_batch)) as batches:
            async for msgs in batches:
                yield [stored_event(m.metadata.sequence.stream, m.metadata.timestamp, m.subject, m.data, m.headers)
                       for m in msgs]

    async def read_messages(
        self, filter_subject: str, start_seq: int = 1, max_batch: int = 1000, *, stream: str | None = None
    ) -> AsyncIterator[list[StreamMessage]]:
        """Until caught up: what arrives while reading is read too, as long as the reader has
        not yet reached the end."""
        source = self._stream(stream or self.stream)
        cursor, delivered = max(1, start_seq) - 1, 0
        while found := source.after(cursor, filter_subject, max_batch):
            await asyncio.sleep(0)  # each batch is a round trip
            left = source.count_after(cursor, filter_subject)
            batch = []
            for i, msg in enumerate(found):
                delivered += 1
                batch.append(StreamMessage(msg, metadata(msg, source.name, "ordered", consumer_seq=delivered,
                                                         delivered=1, pending=left - i - 1)))
            cursor = found[-1].seq
            yield batch

    async def read_page(self, filter_subject: str, start_seq: int, limit: int,
                        max_bytes: int | None = None) -> tuple[list[StoredEvent], bool]:
        await asyncio.sleep(0)
        source = self._streams[self.stream]
        found = source.after(max(1, start_seq) - 1, filter_subject, limit + 1)
        page, size = [], 0
        for msg in found[:limit]:
            page.append(msg)
            size += len(msg.data)
            if max_bytes is not None and size >= max_bytes:
                break
        return [_event(msg) for msg in page], len(found) > len(page)

    async def follow_batches(
        self, filter_subject: str, start_seq: int = 1, max_batch: int = 500, *,
        wanted: Callable[[str, int], bool] | None = None,
    ) -> AsyncIterator[list[StoredEvent]]:
        source = self._streams[self.stream]
        cursor = max(1, start_seq) - 1
        while True:
            if found := source.after(cursor, filter_subject, max_batch):
                cursor = found[-1].seq
                if kept := [msg for msg in found if wanted is None or wanted(msg.subject, msg.seq)]:
                    yield [_event(msg) for msg in kept]
            else:
                await source.changed.wait(None)

    async def work_queue(
        self, durable: str, filter_subject: str, *, max_ack_pending: int, ack_wait: float, max_deliver: int,
        stream: str | None = None,
    ) -> PullSubscription:
        source = self._stream(stream or self.stream)
        key = (source.name, durable)
        if key not in self._consumers:
            self._consumers[key] = DurableConsumer(source, durable, self._route)
        consumer = self._consumers[key]
        consumer.configure(filter_subject, max_ack_pending=max_ack_pending, ack_wait=ack_wait,
                           max_deliver=max_deliver)
        return PullSubscription(consumer)

    # --- side streams -----------------------------------------------------------------------

    async def ensure_stream(self, config: api.StreamConfig | None = None) -> None:
        if config is None:  # the event log's own stream: made at the start, or again once deleted
            if self.stream not in self._streams:
                self._create_log_stream()
            return
        if config.name in self._streams:
            self._streams[config.name].config = config
        else:
            self._streams[config.name] = MemoryStream(config)

    async def publish_to(self, stream: str, subject: str, data: bytes) -> int:
        await asyncio.sleep(0)
        return self._store(stream, subject, data)

    async def purge(self, stream: str, subject: str) -> None:
        self._stream(stream).purge(subject)

    # --- core messages ------------------------------------------------------------------------

    async def subscribe(self, subject: str, cb, *, queue: str | None = None) -> CoreSubscription:
        return self._core.subscribe(subject, cb, queue)

    async def send(self, subject: str, data: bytes) -> None:
        self._route(subject, data)

    async def request(self, subject: str, data: bytes, *, timeout: float) -> CoreMessage:
        return await self._core.request(subject, data, timeout=timeout)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnect_callbacks.append(callback)

    # --- key-value ------------------------------------------------------------------------------

    async def key_value(self, bucket: str, *, history: int = 1, replicas: int = 1) -> MemoryKeyValue:
        if bucket not in self._buckets:
            self._buckets[bucket] = MemoryKeyValue(bucket, on_write=self._route)
        return self._buckets[bucket]

    async def close(self) -> None:
        await self._core.close()
        for consumer in self._consumers.values():
            consumer.close()
