"""Core messaging in memory: subscriptions with ``*`` / ``>`` subjects and queue groups,
request / reply, and a key-value bucket with compare-and-set, as nats-py shows them.

As with nats-py, each subscription's callback runs in a task of its own, one message after
another; an error in a callback is logged and the subscription goes on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable

import structlog
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from services.testing.memory_streams import subject_matches

log = structlog.get_logger()

Callback = Callable[["CoreMessage"], Awaitable[None]]


class CoreMessage:
    def __init__(self, core: CoreRouter, subject: str, data: bytes, reply: str = "",
                 headers: dict[str, str] | None = None) -> None:
        self._core = core
        self.subject = subject
        self.data = data
        self.reply = reply
        self.headers = headers

    async def respond(self, data: bytes) -> None:
        if not self.reply:
            raise NatsError("no reply subject available")
        self._core.route(self.reply, data)


class CoreSubscription:
    def __init__(self, core: CoreRouter, subject: str, queue: str | None, cb: Callback | None) -> None:
        self._core = core
        self.subject = subject
        self.queue = queue or None
        self._cb = cb
        self._pending: asyncio.Queue[CoreMessage] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"subscription {subject}") if cb else None

    def deliver(self, msg: CoreMessage) -> None:
        self._pending.put_nowait(msg)

    async def _run(self) -> None:
        assert self._cb is not None
        while True:
            msg = await self._pending.get()
            try:
                await self._cb(msg)
            except Exception as exc:  # noqa: BLE001 - as nats-py: the error callback hears, the subscription goes on
                log.warning("subscription_callback_failed", subject=msg.subject, error=repr(exc)[:300])

    async def next_msg(self, timeout: float | None = 1.0) -> CoreMessage:
        try:
            return await asyncio.wait_for(self._pending.get(), timeout)
        except TimeoutError:
            raise NatsTimeout from None

    async def unsubscribe(self) -> None:
        self._core.remove(self)
        if self._task is not None:
            self._task.cancel()


class CoreRouter:
    def __init__(self) -> None:
        self._subs: list[CoreSubscription] = []
        self._turns: dict[str, int] = defaultdict(int)  # queue group -> deliveries so far (round robin)

    def subscribe(self, subject: str, cb: Callback | None = None, queue: str | None = None) -> CoreSubscription:
        sub = CoreSubscription(self, subject, queue, cb)
        self._subs.append(sub)
        return sub

    def remove(self, sub: CoreSubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def route(self, subject: str, data: bytes, *, reply: str = "", headers: dict[str, str] | None = None) -> int:
        """Deliver to every plain subscriber and one member of each queue group; returns how many got it."""
        groups: dict[str, list[CoreSubscription]] = defaultdict(list)
        receivers: list[CoreSubscription] = []
        for sub in self._subs:
            if subject_matches(sub.subject, subject):
                if sub.queue:
                    groups[sub.queue].append(sub)
                else:
                    receivers.append(sub)
        for queue, members in groups.items():
            receivers.append(members[self._turns[queue] % len(members)])
            self._turns[queue] += 1
        for sub in receivers:
            sub.deliver(CoreMessage(self, subject, data, reply, headers))
        return len(receivers)

    async def request(self, subject: str, data: bytes, *, timeout: float) -> CoreMessage:
        inbox = self.subscribe(f"_INBOX.{uuid.uuid4().hex}")
        try:
            if self.route(subject, data, reply=inbox.subject) == 0:
                raise NoRespondersError
            return await inbox.next_msg(timeout)
        finally:
            await inbox.unsubscribe()

    async def close(self) -> None:
        for sub in list(self._subs):
            await sub.unsubscribe()


class MemoryKeyValue:
    """A bucket whose revisions count every write to it, as a KV stream's sequence does; each
    write is also handed to ``on_write(subject, value)``, as NATS publishes it on ``$KV.<bucket>.<key>``."""

    def __init__(self, bucket: str, on_write: Callable[[str, bytes], None] | None = None) -> None:
        self.bucket = bucket
        self._entries: dict[str, KeyValue.Entry] = {}
        self._revision = 0
        self._on_write = on_write

    async def get(self, key: str) -> KeyValue.Entry:
        if key not in self._entries:
            raise KeyNotFoundError
        return self._entries[key]

    async def put(self, key: str, value: bytes) -> int:
        self._revision += 1
        self._entries[key] = KeyValue.Entry(bucket=self.bucket, key=key, value=value, revision=self._revision,
                                            delta=None, created=None, operation=None)
        if self._on_write is not None:
            self._on_write(f"$KV.{self.bucket}.{key}", value)
        return self._revision

    async def create(self, key: str, value: bytes) -> int:
        return await self.update(key, value, last=0)

    async def keys(self) -> list[str]:
        if not self._entries:
            raise NoKeysError
        return list(self._entries)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        # as nats-py: no ``last`` expects no entry (revision 0), so an update always names the revision it read
        current = self._entries[key].revision if key in self._entries else 0
        if (last or 0) != current:
            raise KeyWrongLastSequenceError(description=f"wrong last sequence: {current}")
        return await self.put(key, value)
