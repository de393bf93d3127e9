"""Consumers of in-memory streams: durable pull consumers shared by workers, and the
messages they hand out, shaped like nats-py's (``.subject``, ``.data``, ``.metadata`` with
``.sequence.stream``, ``.num_delivered``, ``.num_pending``, ``.timestamp``).

A durable consumer delivers what its filter matches from the stream's start, keeps each
message out with a worker until it is acknowledged, redelivers after a ``nak`` (and its
delay) or when ``ack_wait`` runs out, never holds more than ``max_ack_pending`` unacknowledged,
and once a message was delivered ``max_deliver`` times announces it as the server does, on
``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``, instead of delivering it
again.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError
from nats.errors import TimeoutError as NatsTimeout

from services.testing.memory_streams import MemoryStream, StoredMessage

MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"

Announce = Callable[[str, bytes], None]


def metadata(stored: StoredMessage, stream: str, consumer: str, *, consumer_seq: int, delivered: int,
             pending: int) -> Msg.Metadata:
    return Msg.Metadata(
        sequence=Msg.Metadata.SequencePair(consumer=consumer_seq, stream=stored.seq),
        num_pending=pending, num_delivered=delivered, timestamp=stored.time, stream=stream, consumer=consumer,
    )


class StreamMessage:
    """One delivery of a stored message. ``consumer`` None: an ordered (read-only) consumer's,
    which takes no acknowledgement."""

    def __init__(self, stored: StoredMessage, md: Msg.Metadata, consumer: DurableConsumer | None = None) -> None:
        self.subject = stored.subject
        self.data = stored.data
        self.headers = stored.headers
        self.metadata = md
        self._consumer = consumer
        self._ackd = False

    def _settle(self) -> DurableConsumer | None:
        if self._ackd:
            raise MsgAlreadyAckdError(self)
        self._ackd = True
        return self._consumer

    async def ack(self) -> None:
        if consumer := self._settle():
            consumer.ack(self.metadata.sequence.stream)

    async def ack_sync(self, timeout: float = 1.0) -> StreamMessage:
        await self.ack()
        return self

    async def nak(self, delay: float | None = None) -> None:
        if consumer := self._settle():
            consumer.nak(self.metadata.sequence.stream, delay or 0.0)

    async def term(self) -> None:
        if consumer := self._settle():
            consumer.term(self.metadata.sequence.stream)

    async def in_progress(self) -> None:
        if self._consumer is not None:
            self._consumer.in_progress(self.metadata.sequence.stream)


class DurableConsumer:
    def __init__(self, stream: MemoryStream, name: str, announce: Announce) -> None:
        self.stream = stream
        self.name = name
        self.announce = announce
        self.filter_subject = ">"
        self.max_ack_pending = 0
        self.ack_wait = 30.0
        self.max_deliver = -1
        self._next = 1  # the first stream sequence never delivered
        self._consumer_seq = 0
        self._deliveries: dict[int, int] = {}  # seq -> times delivered, until acknowledged or given up
        self._out: dict[int, asyncio.TimerHandle] = {}  # seq -> its ack deadline, while a worker has it
        self._ready: dict[int, float] = {}  # seq -> loop time from which it may be delivered again

    def configure(self, filter_subject: str, *, max_ack_pending: int, ack_wait: float, max_deliver: int) -> None:
        self.filter_subject = filter_subject
        self.max_ack_pending = max_ack_pending
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver

    @property
    def pending_acks(self) -> int:
        return len(self._out)

    def take(self, batch: int) -> list[StreamMessage]:
        """Up to ``batch`` deliveries: redeliveries that are due first, then new messages."""
        room = batch if self.max_ack_pending <= 0 else min(batch, self.max_ack_pending - len(self._out))
        now = asyncio.get_running_loop().time()
        out: list[StreamMessage] = []
        for seq in sorted(s for s, due in self._ready.items() if due <= now):
            if len(out) >= room:
                return out
            del self._ready[seq]
            stored = self.stream.get(seq)
            if stored is None:  # deleted meanwhile
                self._deliveries.pop(seq, None)
                continue
            out.append(self._deliver(stored))
        while len(out) < room:
            found = self.stream.after(self._next - 1, self.filter_subject, 1)
            if not found:
                break
            self._next = found[0].seq + 1
            out.append(self._deliver(found[0]))
        return out

    def next_due_in(self) -> float | None:
        """Seconds until the next delayed redelivery is due, if one waits and may be delivered."""
        if not self._ready or 0 < self.max_ack_pending <= len(self._out):
            return None  # an acknowledgement wakes the fetch instead
        return max(0.0, min(self._ready.values()) - asyncio.get_running_loop().time())

    def _deliver(self, stored: StoredMessage) -> StreamMessage:
        seq = stored.seq
        delivered = self._deliveries[seq] = self._deliveries.get(seq, 0) + 1
        self._consumer_seq += 1
        self._out[seq] = self._deadline(seq)
        md = metadata(stored, self.stream.name, self.name, consumer_seq=self._consumer_seq, delivered=delivered,
                      pending=self.stream.count_after(self._next - 1, self.filter_subject))
        return StreamMessage(stored, md, self)

    def _deadline(self, seq: int) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(self.ack_wait, self._ack_wait_ran_out, seq)

    def _settled(self, seq: int) -> bool:
        """Forget ``seq``; whether it was still unacknowledged."""
        if seq not in self._deliveries:
            return False
        if (timer := self._out.pop(seq, None)) is not None:
            timer.cancel()
        self._ready.pop(seq, None)
        del self._deliveries[seq]
        if self.stream.work_queue:
            self.stream.delete(seq)
        self.stream.changed.fire()  # room for another delivery
        return True

    def ack(self, seq: int) -> None:
        self._settled(seq)

    def term(self, seq: int) -> None:
        self._settled(seq)

    def nak(self, seq: int, delay: float) -> None:
        if (timer := self._out.pop(seq, None)) is not None:
            timer.cancel()
            self._again_or_give_up(seq, delay)

    def in_progress(self, seq: int) -> None:
        if (timer := self._out.get(seq)) is not None:
            timer.cancel()
            self._out[seq] = self._deadline(seq)

    def _ack_wait_ran_out(self, seq: int) -> None:
        if self._out.pop(seq, None) is not None:
            self._again_or_give_up(seq, 0.0)

    def _again_or_give_up(self, seq: int, delay: float) -> None:
        delivered = self._deliveries.get(seq, 0)
        if 0 < self.max_deliver <= delivered:
            del self._deliveries[seq]
            self.announce(MAX_DELIVERIES_ADVISORY.format(stream=self.stream.name, consumer=self.name),
                          self._advisory(seq, delivered))
        else:
            self._ready[seq] = asyncio.get_running_loop().time() + delay
        self.stream.changed.fire()

    def _advisory(self, seq: int, deliveries: int) -> bytes:
        return json.dumps({
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "id": uuid.uuid4().hex,
            "timestamp": datetime.now(UTC).isoformat(),
            "stream": self.stream.name,
            "consumer": self.name,
            "stream_seq": seq,
            "deliveries": deliveries,
        }).encode()

    def close(self) -> None:
        for timer in self._out.values():
            timer.cancel()


class PullSubscription:
    """A worker's handle on a durable consumer (nats-py's ``PullSubscription``)."""

    def __init__(self, consumer: DurableConsumer) -> None:
        self.consumer = consumer

    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list[StreamMessage]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else 5)
        await asyncio.sleep(0)  # a fetch is a round trip: others run meanwhile
        while True:
            if msgs := self.consumer.take(batch):
                return msgs
            left = deadline - loop.time()
            if left <= 0:
                raise NatsTimeout
            due = self.consumer.next_due_in()
            await self.consumer.stream.changed.wait(left if due is None else min(left, due))

    async def unsubscribe(self) -> None:
        return None
