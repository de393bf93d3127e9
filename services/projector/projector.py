"""Folds the event log into MongoDB, batch by batch, from its stored checkpoint.

The checkpoint (last stream sequence applied) lives in MongoDB beside the read
models it describes, and is written after them: a crash in between replays a
batch whose writes are idempotent. Writes are retried while MongoDB is away;
nothing moves the checkpoint past an event whose effect is neither stored nor
parked (:mod:`services.parking`: an event that cannot be decoded or stored is set
aside for an operator, and the fold goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import structlog

from contracts import subjects
from contracts.domain import TERMINAL_PERSONA_STATUSES
from contracts.api import ParkedEvent
from contracts.events import (
    JobCancelRequested,
    JobFinished,
    PersonaCompleted,
    PersonaFailed,
    UnknownEvent,
)
from services.bus import EventLog, StoredEvent
from services.failures import Unstorable, durably
from services.parking import ParkedEvents
from services.projector.process_manager import decide_job_end
from services.projector.projections import coalesce, writes_for
from services.projector.rebuild import SUFFIX, Progress, rebuild_into, switch_to
from services.store import ReadModels

log = structlog.get_logger()

PROJECTOR = "projector"
JOB_MANAGER = "job-manager"


class EndedPersonas:
    """Which personas of each running job have ended, so a job is read and decided only
    once it may be over. Learnt from MongoDB once per job, then kept by the events (sets:
    replays are harmless). Bounded: the least recently touched jobs are forgotten."""

    def __init__(self, models: ReadModels, max_jobs: int = 10_000) -> None:
        self.models = models
        self.max_jobs = max_jobs
        self.jobs: OrderedDict[str, tuple[int, set[str]]] = OrderedDict()
        self.pending: dict[str, set[str]] = defaultdict(set)  # ended before the job was learnt

    def note(self, job_id: str, persona_id: str) -> None:
        if job_id in self.jobs:
            self.jobs[job_id][1].add(persona_id)
        else:
            self.pending[job_id].add(persona_id)

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self.pending.pop(job_id, None)

    async def all_ended(self, job_id: str) -> bool:
        if job_id not in self.jobs:
            job = await self.models.jobs.find_one({"_id": job_id}, {"total_personas": 1})
            if job is None:
                return False
            cursor = self.models.job_personas.find(
                {"job_id": job_id, "status": {"$in": sorted(TERMINAL_PERSONA_STATUSES)}}, {"persona_id": 1})
            ended = {doc["persona_id"] async for doc in cursor} | self.pending.pop(job_id, set())
            self.jobs[job_id] = (job["total_personas"], ended)
            while len(self.jobs) > self.max_jobs:
                self.jobs.popitem(last=False)
        self.jobs.move_to_end(job_id)
        total, ended = self.jobs[job_id]
        return len(ended) >= total


class Projector:
    def __init__(
        self,
        event_log: EventLog,
        models: ReadModels,
        *,
        manage_jobs: bool = True,
        job_retention: timedelta = timedelta(days=7),
        parked: ParkedEvents | None = None,
    ) -> None:
        self.log = event_log
        self.parked = parked or ParkedEvents(event_log)
        self.skipped = 0  # events of a type or version this code does not know
        self.job_retention = job_retention
        self.models = models
        self.manage_jobs = manage_jobs
        self.position = 0
        self._ended = EndedPersonas(models)
        self._lock = asyncio.Lock()  # one writer at a time: the live fold or a rebuild
        self._generation = 0  # bumped by a rebuild: the live fold restarts from the new checkpoint

    async def apply(self, batch: list[StoredEvent]) -> tuple[set[str], set[str]]:
        """Write a batch's effects, then the checkpoint; returns the jobs to re-examine
        (those where a persona ended, and those asked to cancel). An event that cannot be
        decoded or stored is parked; the rest of the batch is stored all the same."""
        writes = defaultdict(list)
        readable: list[StoredEvent] = []
        jobs: set[str] = set()
        cancels: set[str] = set()
        for stored in batch:
            event = stored.event
            if event is None:
                await self._unreadable(stored)
                continue
            try:
                ops = writes_for(event, stored.seq, self.job_retention)
            except Exception as exc:  # noqa: BLE001 - an event no projection can express (a date out of range)
                await self.parked.park(PROJECTOR, stored, "unstorable", exc)
                continue
            readable.append(stored)
            for collection, op in ops:
                writes[collection].append(op)
            if isinstance(event, PersonaCompleted | PersonaFailed):
                jobs.add(event.job_id)
                self._ended.note(event.job_id, event.persona_id)
            elif isinstance(event, JobCancelRequested):
                cancels.add(event.job_id)
            elif isinstance(event, JobFinished):
                jobs.discard(event.job_id)
                cancels.discard(event.job_id)
                self._ended.forget(event.job_id)

        async def write_all() -> None:
            for collection, ops in writes.items():
                await self.models.collection(collection).bulk_write(coalesce(ops), ordered=True)
            await self.models.save_checkpoint(batch[-1].seq)

        try:
            await durably(write_all, what="projection")
        except Unstorable:
            # One event of the batch cannot be stored: find it by storing them one by one.
            for stored in readable:
                try:
                    await durably(lambda stored=stored: self._write(stored), what="projection")
                except Unstorable as exc:
                    await self.parked.park(PROJECTOR, stored, "unstorable", exc.cause)
            await durably(lambda: self.models.save_checkpoint(batch[-1].seq), what="checkpoint")
        self.position = batch[-1].seq
        return jobs - cancels, cancels

    async def _write(self, stored: StoredEvent) -> None:
        for collection, op in writes_for(stored.event, stored.seq, self.job_retention):
            await self.models.collection(collection).bulk_write([op], ordered=True)

    async def _park_unusable(self, stored: StoredEvent, kind: str, error: BaseException | str) -> None:
        await self.parked.park(PROJECTOR, stored, kind, error)

    async def _unreadable(self, stored: StoredEvent) -> None:
        if isinstance(stored.error, UnknownEvent):
            self.skipped += 1
            log.warning("event_skipped", seq=stored.seq, subject=stored.subject, reason=str(stored.error),
                        skipped=self.skipped)
            return
        await self.parked.park(PROJECTOR, stored, "undecodable", str(stored.error))

    async def reapply(self, record: ParkedEvent) -> None:
        """Apply a parked event again (a fix was deployed), raising if it still fails.

        Later events may have found nothing to update because this one was missing (a
        persona completed before its creation was stored), so the log is folded again from
        the parked event up to the current position: every write is idempotent, and those
        already applied change nothing."""
        if record.consumer == JOB_MANAGER:
            await self._reexamine(record)
            return
        jobs: set[str] = set()
        found = False
        async with self._lock:
            end = self.position
            async for batch in self.log.read_batches(subjects.ALL, record.seq):
                for stored in batch:
                    if stored.seq > end:
                        break
                    if stored.seq == record.seq:
                        found = True
                        if stored.event is None:
                            raise stored.error or ValueError("undecodable")
                    if stored.event is None:
                        continue
                    try:
                        await durably(lambda stored=stored: self._write(stored), what="re-applied projection")
                    except Unstorable as exc:
                        if stored.seq == record.seq:
                            raise exc.cause from None
                        log.warning("reapply_skipped_event", seq=stored.seq, error=str(exc))
                    if job_id := getattr(stored.event, "job_id", None):
                        jobs.add(job_id)
                if batch and batch[-1].seq >= end:
                    break
        if not found:
            raise LookupError(f"event {record.seq} is no longer in the log (or is past the projector's position)")
        await self.examine(sorted(jobs))

    async def _reexamine(self, record: ParkedEvent) -> None:
        if record.job_id is None:
            raise LookupError("the parked decision names no job")
        await self.examine((), forced=[record.job_id], strict=True)

    async def _already_ended(self, job_id: str) -> bool:
        return await self.log.first_seq_on(subjects.job_ends(job_id)) is not None

    async def examine(self, job_ids: Iterable[str], *, forced: Iterable[str] = (), strict: bool = False) -> None:
        """Publish the end of every job in ``job_ids`` that has reached one; ``forced`` ones
        (cancelled, overdue) are decided even while personas are still open. A job whose end
        cannot be decided or stored is parked (``strict``: raised) and the others go on."""
        if not self.manage_jobs:
            return
        now = datetime.now(UTC)
        forced = set(forced)
        for job_id in [*job_ids, *forced]:
            try:
                await self._end_if_over(job_id, now, forced=job_id in forced)
            except Unstorable as exc:
                if strict:
                    raise exc.cause from None
                await self._park_decision(job_id, exc.cause)

    async def _end_if_over(self, job_id: str, now: datetime, *, forced: bool) -> None:
        end = await durably(lambda: self._decide(job_id, now, forced=forced), what="job decision")
        if end is None or await self._already_ended(job_id):
            return
        await durably(lambda: self.log.publish(end), what="job end")
        log.info("job_finished", job_id=job_id, status=end.status,
                 successful=end.results.successful, failed=end.results.failed)

    async def _park_decision(self, job_id: str, error: BaseException) -> None:
        request = await self.log.last(subjects.job(job_id, "requested"))
        if request is None:
            log.error("job_decision_failed", job_id=job_id, error=str(error))
            return
        await self.parked.park(JOB_MANAGER, request, "unstorable", error)

    async def _decide(self, job_id: str, now: datetime, *, forced: bool) -> JobFinished | None:
        # Cheap test first: only a job that may end (all personas ended, or a cancel, or an
        # expiry sweep) is read and decided.
        if not forced and not await self._ended.all_ended(job_id):
            return None
        job = await self.models.jobs.find_one({"_id": job_id})
        if job is None or job.get("status") != "processing":
            return None
        return decide_job_end(job, await self.models.job_persona_docs(job_id), now)

    async def reconcile(self) -> None:
        """Decide every job still processing. A projector that died after storing a batch's
        checkpoint but before publishing the job end it implied resumes past that batch:
        this is where such a job gets its end."""
        if not self.manage_jobs:
            return
        async def open_jobs() -> list[str]:
            return [doc["_id"] async for doc in self.models.jobs.find({"status": "processing"}, {"_id": 1})]

        await self.examine(await durably(open_jobs, what="open jobs"))

    async def expire_overdue(self) -> None:
        now = datetime.now(UTC)
        cursor = self.models.jobs.find({"status": "processing", "deadline": {"$lte": now}}, {"_id": 1})
        await self.examine((), forced=[doc["_id"] async for doc in cursor])

    async def run(self, stop: asyncio.Event, *, sweep_seconds: float = 5.0) -> None:
        sweeper = asyncio.create_task(self._sweep(stop, sweep_seconds)) if self.manage_jobs else None
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._follow_once(stop)
                    failures = 0
                except Exception as exc:  # noqa: BLE001 - resume from the checkpoint, never stop folding
                    failures += 1
                    log.warning("projector_resuming", error=repr(exc), failures=failures)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=min(5.0, 0.1 * 2**failures))
        finally:
            if sweeper:
                sweeper.cancel()

    async def _follow_once(self, stop: asyncio.Event) -> None:
        """Follow the log from the stored checkpoint until stopped or the read models are rebuilt."""
        generation = self._generation
        start = await self.models.checkpoint() + 1
        self.position = start - 1
        await self.reconcile()
        log.info("projector_following", from_seq=start)
        follower = self.log.follow_batches(subjects.ALL, start)
        try:
            async for batch in follower:
                async with self._lock:
                    if generation != self._generation:
                        return
                    jobs, cancels = await self.apply(batch)
                await self.examine(jobs, forced=cancels)
                if stop.is_set():
                    return
        finally:
            await follower.aclose()

    async def rebuild(self, progress: Progress) -> int:
        """Rebuild every read model from the log and switch to it, pausing the live fold."""
        async with self._lock:
            target = ReadModels(self.models.db, suffix=SUFFIX)
            position = await rebuild_into(self.log, target, progress, job_retention=self.job_retention,
                                          unusable=self._park_unusable)
            await switch_to(target, self.models)
            self.position = position
            self._generation += 1
            return position

    async def _sweep(self, stop: asyncio.Event, every: float) -> None:
        while not stop.is_set():
            try:
                await self.expire_overdue()
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.warning("expiry_sweep_failed", error=str(exc))
            try:
                await asyncio.wait_for(stop.wait(), timeout=every)
            except TimeoutError:
                pass
