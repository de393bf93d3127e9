"""Read-your-writes: wait until the projector has applied a given event.

The gateway publishes, gets the event's stream sequence back, and waits for the
projector's checkpoint to pass it before answering, so a client that reads right
after a write finds what it wrote.

The projector announces each checkpoint it stores on core NATS
(:data:`contracts.subjects.PROJECTOR_CHECKPOINT`); a waiter that hears it wakes then. Core
NATS may lose a message, and an older projector announces nothing, so one poller serves
every waiting request too: it reads the checkpoint from MongoDB every few milliseconds while
no announcement has been heard lately, and only every quarter of a second while they come.
"""

from __future__ import annotations

import asyncio

import structlog
from pymongo.errors import PyMongoError

from contracts import subjects
from services.adapters.ports import CoreMessage, EventLogPort, ReadModelsPort

log = structlog.get_logger()

POLL_MAX_SECONDS = 0.01  # one checkpoint read per 10 ms at most, and only while a request waits
HEARD_POLL_SECONDS = 0.25  # the reads while announcements come: for one that was lost
HEARING_SECONDS = 30.0  # announcements are coming if one was heard this recently


class ProjectionWaiter:
    def __init__(self, models: ReadModelsPort, timeout: float) -> None:
        self.models = models
        self.timeout = timeout
        self._seen = 0  # highest checkpoint observed: most waits end without a query
        self._wanted = 0
        self._waiting = 0
        # Set (and replaced) when the checkpoint moves. Not a Condition: its lock would wake
        # the waiters one event-loop turn after another (a thousand SSE clients of one job).
        self._changed = asyncio.Event()
        self._poller: asyncio.Task | None = None
        self._heard_at: float | None = None  # the event loop's time of the last announcement

    @property
    def checkpoint(self) -> int:
        """The newest checkpoint seen (announced, or read while a request waited)."""
        return self._seen

    @property
    def waiting(self) -> int:
        """How many requests wait for the projector now."""
        return self._waiting

    async def listen(self, event_log: EventLogPort) -> None:
        """Hear the projector's announcements from now on."""
        await event_log.subscribe(subjects.PROJECTOR_CHECKPOINT, self._announced)

    async def _announced(self, msg: CoreMessage) -> None:
        try:
            checkpoint = int(msg.data)
        except ValueError:
            return  # not from a projector: the poller still reads MongoDB
        self._heard_at = asyncio.get_running_loop().time()
        self._advance(checkpoint)

    def _hearing(self) -> bool:
        return self._heard_at is not None and asyncio.get_running_loop().time() - self._heard_at < HEARING_SECONDS

    def _advance(self, checkpoint: int) -> bool:
        if checkpoint <= self._seen:
            return False
        self._seen = checkpoint
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def wait_for(self, seq: int, *, timeout: float | None = None) -> bool:
        """Whether the projector passed ``seq`` within ``timeout`` seconds (unset: this waiter's).
        A timeout of 0 waits for nothing and logs nothing: read-your-writes is turned off."""
        if seq <= self._seen:
            return True
        limit = self.timeout if timeout is None else timeout
        if limit <= 0:  # one look at the checkpoint, no wait: announcements may be lost, or not sent
            try:
                self._advance(await self.models.checkpoint())
            except PyMongoError as exc:
                log.warning("projection_unreadable", error=str(exc))
            return seq <= self._seen
        self._wanted = max(self._wanted, seq)
        self._waiting += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            async with asyncio.timeout(limit):
                while self._seen < seq:
                    await self._changed.wait()
            return True
        except TimeoutError:
            log.warning("projection_lagging", seq=seq, checkpoint=self._seen)
            return False
        finally:
            self._waiting -= 1

    async def _poll(self) -> None:
        # Backs off from 2 ms to 10 ms while the checkpoint stands still: a read after a job's end
        # waits here for the projector (tens of ms), and the step that overshoots is added to it.
        delay = 0.002
        while self._waiting and self._seen < self._wanted:
            if self._hearing():
                try:  # the next announcement, or a read in case one was lost
                    await asyncio.wait_for(self._changed.wait(), HEARD_POLL_SECONDS)
                    continue
                except TimeoutError:
                    pass
            try:
                checkpoint = await self.models.checkpoint()
            except PyMongoError as exc:  # MongoDB away: the write is durable in the log anyway
                log.warning("projection_unreadable", error=str(exc))
                checkpoint = self._seen
            if self._advance(checkpoint):
                delay = 0.002
                continue
            if not self._hearing():
                await asyncio.sleep(delay)
                delay = min(delay * 2, POLL_MAX_SECONDS)
