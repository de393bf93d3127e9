"""The job's process manager: when a job is over, publish its end.

It follows the jobs' events with a position of its own, stored after the decisions
the events led to are published, and it decides from the log itself (the job's
history folded in memory by the same projections as the read models), never from
the read models, which may lag. So a crash between a decision and its position
replays the events and decides again: the end event has one deduplication id per
job, and a job whose history already holds its end is left alone. Nothing needs
repairing after a crash.

Cheap test first: it counts the personas that ended per job, and reads a job's
history only when the job may be over (every persona ended, a cancel, the deadline).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime

import structlog

from contracts import subjects
from contracts.api import ParkedEvent
from contracts.domain import TERMINAL_PERSONA_STATUSES
from contracts.events import (
    JobCancelRequested,
    JobFinished,
    JobRequested,
    PersonaCompleted,
    PersonaFailed,
)
from services.adapters.event_log import StoredEvent
from services.adapters.parked import ParkedEvents
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.adapters.read_models import Mark
from services.projector.log_reset import ResetWatch
from services.projector.memory_fold import MemoryFold
from services.projector.process_manager import decide_job_end
from services.projector.projections import JOB_PERSONAS, JOBS, project
from services.runtime import tracing
from services.runtime.failures import Unstorable, durably
from services.runtime.lifecycle import Clock, keep_going, utc_now
from services.runtime.metrics import Metrics

log = structlog.get_logger()

JOB_MANAGER = "job-manager"


class EndedPersonas:
    """How many personas each running job has and which have ended, kept from the events
    (sets: replays are harmless). A job first met mid-way (after a restart) is learnt
    from its history once. Bounded: the least recently touched jobs are forgotten."""

    def __init__(self, event_log: EventLogPort, max_jobs: int = 10_000) -> None:
        self.log = event_log
        self.max_jobs = max_jobs
        self.jobs: OrderedDict[str, tuple[int, set[str]]] = OrderedDict()

    def _keep(self, job_id: str, total: int, ended: set[str]) -> None:
        self.jobs[job_id] = (total, ended)
        self.jobs.move_to_end(job_id)
        while len(self.jobs) > self.max_jobs:
            self.jobs.popitem(last=False)

    def started(self, event: JobRequested) -> None:
        self._keep(event.job_id, len(event.personas), self.jobs.get(event.job_id, (0, set()))[1])

    async def ended(self, job_id: str, persona_id: str) -> bool:
        """Note that ``persona_id`` ended; whether every persona of the job now has."""
        if job_id not in self.jobs:
            history = await job_history(self.log, job_id)
            if history is None:
                return False
            job, personas = history
            self._keep(job_id, job["total_personas"],
                       {p["persona_id"] for p in personas if p["status"] in TERMINAL_PERSONA_STATUSES})
        total, ended = self.jobs[job_id]
        ended.add(persona_id)
        self.jobs.move_to_end(job_id)
        return len(ended) >= total

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)


async def job_history(event_log: EventLogPort, job_id: str) -> tuple[dict, list[dict]] | None:
    """A job's view (the job and its personas, as the read models hold them) folded from its
    events in the log, or None if the log holds no request for it."""
    start = await event_log.last_seq_on(subjects.job(job_id, "requested"))
    if start is None:
        return None
    fold = MemoryFold()
    async for batch in event_log.read_batches(subjects.job_history(job_id), start):
        for stored in batch:
            if stored.event is not None:
                for collection, op in project(stored.event, stored.seq):
                    fold.apply(collection, op)
    job = fold.collections[JOBS].get(job_id)
    if job is None:
        return None
    personas = sorted(fold.collections[JOB_PERSONAS].values(), key=lambda p: p["order"])
    return job, personas


class JobManager:
    def __init__(
        self,
        event_log: EventLogPort,
        models: ReadModelsPort,
        *,
        parked: ParkedEvents,
        clock: Clock = utc_now,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.log = event_log
        self.models = models
        self.parked = parked
        self.clock = clock
        self.ended = EndedPersonas(event_log)
        self.position = 0
        self.watch = ResetWatch(JOB_MANAGER)
        self.log_id: str | None = None  # the log its position belongs to (stored with it)

    async def run(self, stop: asyncio.Event, *, sweep_seconds: float = 5.0) -> None:
        sweeper = asyncio.create_task(keep_going(lambda: self._sweep(stop, sweep_seconds), stop, what="expiry"))
        try:
            await keep_going(lambda: self._follow_once(stop), stop, what="job manager")
        finally:
            sweeper.cancel()

    async def _follow_once(self, stop: asyncio.Event) -> None:
        """Follow the jobs' events from the stored position, unless it belongs to another log
        (:mod:`services.projector.log_reset`): then wait for a rebuild to restart it."""
        mark = await self.models.position_mark(JOB_MANAGER)
        state = await self.log.state()
        if not self.watch.holds(mark, state):
            await self.watch.pause(stop)
            return
        self.log_id, self.position = state.log_id, mark.seq
        log.info("job_manager_following", from_seq=mark.seq + 1, log=self.log_id)
        follower = self.log.follow_batches(subjects.ALL_JOBS, mark.seq + 1)
        try:
            async for batch in follower:
                if not self.watch.holds(Mark(self.position, self.log_id), await self.log.state()):
                    return
                await self.handle(batch)
                if stop.is_set():
                    return
        finally:
            await follower.aclose()

    async def handle(self, batch: list[StoredEvent]) -> None:
        """Decide the jobs this batch may have ended, then store the position after it."""
        # the jobs that may be over, in the order they may have ended, with the event that may have ended each
        over: dict[str, StoredEvent] = {}
        for stored in batch:
            event = stored.event
            if isinstance(event, JobRequested):
                self.ended.started(event)
            elif isinstance(event, PersonaCompleted | PersonaFailed):
                if await self.ended.ended(event.job_id, event.persona_id):
                    over[event.job_id] = stored
            elif isinstance(event, JobCancelRequested):
                over[event.job_id] = stored  # decided at once, with personas still open
            elif isinstance(event, JobFinished):
                over.pop(event.job_id, None)
                self.ended.forget(event.job_id)
        await self.decide(over, causes=over)
        await durably(lambda: self.models.save_position(JOB_MANAGER, batch[-1].seq, self.log_id),
                      what="job manager position")
        self.position = batch[-1].seq

    async def decide(self, jobs: Iterable[str], *, strict: bool = False,
                     causes: Mapping[str, StoredEvent] | None = None) -> None:
        """Publish the end of each job that has one. A job whose end cannot be decided or
        stored is parked (``strict``: raised) and the others go on. A job's decision is traced
        as a child of the event in ``causes`` that may have ended it (so is the end it publishes)."""
        now = self.clock()
        for job_id in list(jobs):
            cause = (causes or {}).get(job_id)
            with tracing.consuming("decide job", cause.headers if cause else None, cause.event if cause else None,
                                   **{"promptgen.job_id": job_id}) as span:
                try:
                    await self._end_if_over(job_id, now)
                except Unstorable as exc:
                    tracing.fail(span, exc.cause)
                    if strict:
                        raise exc.cause from None
                    await self._park(job_id, exc.cause)

    async def _end_if_over(self, job_id: str, now: datetime) -> None:
        history = await durably(lambda: job_history(self.log, job_id), what="job history")
        if history is None:
            return
        try:
            end = decide_job_end(*history, now)
        except Exception as exc:
            raise Unstorable(exc) from exc
        if end is None:
            return
        await durably(lambda: self.log.publish(end), what="job end")
        tracing.note(**{"promptgen.job_status": end.status})
        self.metrics.jobs_finished.labels(status=end.status).inc()
        self.ended.forget(job_id)
        log.info("job_finished", job_id=job_id, status=end.status,
                 successful=end.results.successful, failed=end.results.failed)

    async def _park(self, job_id: str, error: BaseException) -> None:
        request = await self.log.last(subjects.job(job_id, "requested"))
        if request is None:
            log.error("job_decision_failed", job_id=job_id, error=str(error))
            return
        await self.parked.park(JOB_MANAGER, request, "unstorable", error)

    async def reapply(self, record: ParkedEvent) -> None:
        """Decide a parked job again (a fix was deployed), raising if it still fails."""
        if record.job_id is None:
            raise LookupError("the parked decision names no job")
        await self.decide([record.job_id], strict=True)

    async def expire_overdue(self) -> None:
        """Decide every job the read models show running past its deadline."""
        now = self.clock()

        async def overdue() -> list[str]:
            cursor = self.models.jobs.find({"status": "processing", "deadline": {"$lte": now}}, {"_id": 1})
            return [doc["_id"] async for doc in cursor]

        await self.decide(await durably(overdue, what="overdue jobs"))

    async def _sweep(self, stop: asyncio.Event, every: float) -> None:
        while not stop.is_set():
            if self.watch.reason is None:  # the read models may describe another log until a rebuild
                await self.expire_overdue()
            try:
                await asyncio.wait_for(stop.wait(), timeout=every)
            except TimeoutError:
                pass
