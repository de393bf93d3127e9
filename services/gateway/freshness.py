"""Read-your-writes for what the SSE streams show before the projector has it.

A job's end goes to its SSE clients as soon as it is in the log, not once the projector has
applied it. A client that reads the job's view or a persona's prompt right after must still
find them final, so each such read first waits for the projector to apply the events of what
it reads that the log held when the read began, and only those:

* every gateway's feed sees every event of the log (its subject and sequence; most are never
  decoded), and remembers, until the projector's checkpoint passes them, where each job ended
  and where each persona's prompt was last written;
* a read asks the log where it ends (one request, shared by the reads that come while it is
  about to be sent) and waits until its own feed has seen that far: an end that another
  gateway process delivered is then known here too;
* then it waits for the projector to pass the newest of those events of the jobs or personas
  it reads, if there is one, and reads (again: a read made before the wait may predate an
  end the projector applied during it).

A read of anything else, or of a job or persona with nothing new in the last moments, waits
for nothing but the log's answer. Both waits together are bounded by one timeout; a wait that
times out (the projector or the feed is away) is logged, and the read answers from what is
stored.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

import structlog
from nats.errors import Error as NatsError

from contracts import subjects
from services.adapters.ports import EventLogPort
from services.gateway.projection import ProjectionWaiter
from services.runtime.metrics import Metrics

log = structlog.get_logger()

LIMIT = 100_000  # events remembered while the projector lags; past it, the oldest are waited for together


class ReadFence:
    def __init__(self, event_log: EventLogPort, waiter: ProjectionWaiter, *, timeout: float,
                 limit: int = LIMIT, metrics: Metrics | None = None) -> None:
        self._metrics = metrics or Metrics()
        self._metrics.read_fence_remembered.set_function(lambda: self.remembered)
        self._log = event_log
        self._waiter = waiter
        self._timeout = timeout
        self._limit = limit
        self._latest: dict[str, int] = {}  # "job:<id>" / "persona:<id>" -> its newest such event
        self._order: deque[tuple[int, str]] = deque()  # the same, oldest first, to forget them
        self._floor = 0  # the newest event forgotten while the projector had not passed it
        self._seen = 0  # how far the feed has seen the log
        self._newest_end = 0  # the newest job end it has seen
        self._moved = asyncio.Event()  # set (and replaced) when it sees further
        self._asking: asyncio.Task[int] | None = None  # where the log ends: the question not yet sent
        self._sent = True

    def starts_at(self, seq: int) -> None:
        """The feed follows the log from after ``seq``. What came before, it never sees one by
        one: what the projector had not applied of it then is waited for as a whole."""
        self._floor = max(self._floor, seq)
        self._advance(seq)

    @property
    def seen(self) -> int:
        return self._seen

    def _advance(self, seq: int) -> None:
        if seq > self._seen:
            self._seen = seq
            self._moved.set()
            self._moved = asyncio.Event()

    def observe(self, subject: str, seq: int) -> None:
        """The feed saw the event at ``seq`` (every event of the log, in order; one seen before,
        by a feed that restarted from an earlier position, changes nothing)."""
        if seq <= self._seen:
            return
        if (job_id := subjects.ended_job(subject)) is not None:
            self._remember(f"job:{job_id}", seq)
            self._newest_end = seq
        elif (persona_id := subjects.prompted_persona(subject)) is not None:
            self._remember(f"persona:{persona_id}", seq)
        self._advance(seq)

    def _remember(self, key: str, seq: int) -> None:
        self._forget_applied()
        self._latest[key] = seq
        self._order.append((seq, key))
        if len(self._order) > self._limit:
            oldest, gone = self._order.popleft()
            self._floor = max(self._floor, oldest)
            if self._latest.get(gone) == oldest:
                del self._latest[gone]

    def _forget_applied(self) -> None:
        checkpoint = self._waiter.checkpoint
        while self._order and self._order[0][0] <= checkpoint:
            seq, key = self._order.popleft()
            if self._latest.get(key) == seq:
                del self._latest[key]

    @property
    def remembered(self) -> int:
        return len(self._latest)

    async def jobs(self, job_ids: Iterable[str]) -> bool:
        """Wait until the projector has applied every job end the log holds now of ``job_ids``: a
        read of them from here is up to date. False when a wait timed out."""
        return await self._wait([f"job:{j}" for j in job_ids])

    async def every_job(self) -> bool:
        """Wait until the projector has applied every job end the log holds now (for a list of
        jobs, some of which it may not show yet)."""
        return await self._wait([], every_job=True)

    async def personas(self, persona_ids: Iterable[str]) -> bool:
        """Wait until the projector has applied every prompt the log holds now of
        ``persona_ids``: a read of them from here is up to date. False when a wait timed out."""
        return await self._wait([f"persona:{p}" for p in persona_ids])

    def _log_end(self) -> asyncio.Future[int]:
        """Where the log ends, asked after this call: the reads that come while a question is
        about to be sent share it (a thousand polls at once ask once); one that comes after it
        was sent asks again, since an end stored meanwhile may be what it must see."""
        if self._asking is None or self._sent:
            self._sent = False
            self._asking = asyncio.ensure_future(self._ask())
            # Every read that shared it may have given up (its deadline): the failure is theirs,
            # said by them, not asyncio's "exception was never retrieved" when it is collected.
            self._asking.add_done_callback(lambda asked: asked.cancelled() or asked.exception())
        return asyncio.shield(self._asking)

    async def _ask(self) -> int:
        self._sent = True
        return await self._log.last_seq()

    async def _wait(self, keys: list[str], *, every_job: bool = False) -> bool:
        if not keys and not every_job:
            return True
        with self._metrics.read_fence_wait.time():
            outcome = await self._fence(keys, every_job=every_job)
        self._metrics.read_fence_reads.labels(outcome=outcome).inc()
        return outcome == "fresh"

    async def _fence(self, keys: list[str], *, every_job: bool) -> str:
        """One deadline for the whole read: the projector gets what the feed's wait left of it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            if self._timeout > 0:  # 0: nothing is waited for, and what the feed has seen decides
                async with asyncio.timeout_at(deadline):
                    end = await self._log_end()
                    while self._seen < end:
                        await self._moved.wait()
        except NatsError as exc:  # where the log ends is unknown: what the feed has seen is waited for
            # (first: nats-py's own timeout is a TimeoutError too, and says nothing of the feed)
            log.warning("read_fence_log_unreachable", error=type(exc).__name__)
            self._metrics.read_fence_log_errors.inc()
        except TimeoutError:
            log.warning("read_fence_feed_lagging", seen=self._seen)
            return "feed_lagging"
        self._forget_applied()
        newest = self._newest_end if every_job else 0
        applied = await self._waiter.wait_for(max(self._floor, newest, *(self._latest.get(k, 0) for k in keys)),
                                              timeout=max(0.0, deadline - loop.time()))
        return "fresh" if applied else "projection_lagging"
