"""The job's process manager: when a job is over, publish its end.

It follows the jobs' events with a position of its own, stored after the decisions
the events led to are published (at most once a second while it moves), and it decides from the log itself (the job's
history folded in memory by the same projections as the read models), never from
the read models, which may lag. So a crash between a decision and its position
replays the events and decides again: the end event has one deduplication id per
job, and a job whose history already holds its end is left alone. Nothing needs
repairing after a crash.

It keeps each running job's view as it follows (:class:`RunningJobs`), so the end of a
job it followed is decided the moment the event that ends it is read, with nothing read
back. A job it meets mid-way (after a restart) is learnt from its history once, and the
deadline sweep and a reapply decide on the whole history (the follower may be behind).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from contextlib import aclosing
from datetime import datetime
from functools import partial

import structlog

from contracts import subjects
from contracts.api import ParkedEvent
from contracts.domain import TERMINAL_PERSONA_STATUSES
from contracts.events import (
    Envelope,
    JobCancelRequested,
    JobFinished,
    JobRequested,
    PersonaCompleted,
    PersonaFailed,
)
from services.adapters.event_log import Moved, StoredEvent, Unchanged
from services.adapters.parked import ParkedEvents
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.adapters.read_models import Mark
from services.projector.log_reset import ResetWatch, reset_reason
from services.projector.memory_fold import MemoryFold
from services.projector.process_manager import decide_job_end
from services.projector.projections import JOB_PERSONAS, JOBS, job_persona_key, project
from services.runtime import tracing
from services.runtime.failures import Unstorable, durably
from services.runtime.lifecycle import Clock, keep_going, utc_now
from services.runtime.metrics import Metrics

log = structlog.get_logger()

JOB_MANAGER = "job-manager"
# How often, at most, the position is stored while it moves. Each store is a MongoDB write
# beside the fold's: one per batch of job events was a third of the projector's writes. A
# restart replays what came after the stored position, deciding again (idempotently).
POSITION_EVERY_SECONDS = 1.0
END_TRIES = 5  # decisions of one job's end in a row that its newer events may overtake
LEARN_BATCH = 32  # a job's history is decoded this many events at a time (each work item holds the template)


class _Deciding:
    """The lock of one job's decisions, and how many decisions hold it or wait for it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class EndContended(Exception):
    """The job's events kept coming while its end was decided (a cancel while its work items are
    still being dispatched): decided again at the next sweep, not parked."""


class JobView:
    """One job's documents (the job's and its personas'), as the read models will hold them."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.fold = MemoryFold()
        self.open: set[str] = set()  # its personas not yet ended
        self.decided = False  # its end is published (the event may not be back yet)
        self.known_to = 0  # the log's sequence up to which it holds every event of the job
        self.newest = 0  # the newest message of the job's it was made of, readable or not

    def apply(self, event: Envelope, seq: int) -> None:
        self.known_to = max(self.known_to, seq)
        self.newest = max(self.newest, seq)
        for collection, change in project(event, seq):
            if collection in (JOBS, JOB_PERSONAS):
                self.fold.apply(collection, change)
        if isinstance(event, JobRequested):
            for jp in event.personas:
                self._track(jp.persona.id)
        elif (persona_id := getattr(event, "persona_id", None)) is not None:
            self._track(persona_id)

    def _track(self, persona_id: str) -> None:
        doc = self.fold.collections[JOB_PERSONAS].get(job_persona_key(self.job_id, persona_id))
        if doc is None or doc["status"] in TERMINAL_PERSONA_STATUSES:
            self.open.discard(persona_id)
        else:
            self.open.add(persona_id)

    @property
    def size(self) -> int:
        return len(self.fold.collections[JOB_PERSONAS]) + 1

    def view(self) -> tuple[dict, list[dict]] | None:
        job = self.fold.collections[JOBS].get(self.job_id)
        if job is None:
            return None
        return job, sorted(self.fold.collections[JOB_PERSONAS].values(), key=lambda p: p["order"])

    def take(self, stored: StoredEvent) -> None:
        """A stored event of the job, readable or not."""
        self.newest = max(self.newest, stored.seq)
        if stored.event is not None:
            self.apply(stored.event, stored.seq)


class RunningJobs:
    """The view of each running job, folded by the same projections as the read models from the
    events the job manager follows, so deciding a job's end reads nothing back. A job first met
    mid-way (after a restart, or once forgotten) is learnt from its history in the log once;
    folding again an event that history held changes nothing (each change is guarded by its
    event's sequence). Bounded: past ``max_documents`` documents in all, the least recently
    touched jobs are forgotten (and learnt again if they come back)."""

    def __init__(self, event_log: EventLogPort, max_documents: int = 200_000, max_ended: int = 100_000) -> None:
        self.log = event_log
        self.max_documents = max_documents
        self.jobs: OrderedDict[str, JobView] = OrderedDict()
        self.documents = 0
        # Jobs whose end came back: an event of theirs stored after it (a call in flight when the
        # job was cancelled) has nothing left to decide, and would have the job learnt again.
        self.max_ended = max_ended
        self.ended: OrderedDict[str, None] = OrderedDict()

    async def fold(self, stored: StoredEvent) -> JobView | None:
        """Fold one followed event into its job's view (learning the job first if need be)."""
        event = stored.event
        job_id = getattr(event, "job_id", None)
        if event is None or job_id is None or job_id in self.ended:
            return None
        view = self.jobs.get(job_id)
        if view is None:
            # only learning reads the log: retried as any read, without a retrier for every event
            view = JobView(job_id) if isinstance(event, JobRequested) else \
                await durably(partial(self.learn, job_id), what="job history")
            if view is None:
                return None
        else:
            self.forget(job_id)
        view.apply(event, stored.seq)  # raising: the job is forgotten, and learnt again next time
        self._keep(job_id, view)
        return view

    async def learn(self, job_id: str) -> JobView | None:
        """The job's view folded from its whole history in the log, or None if it holds no request."""
        log_end = await self.log.last_seq()
        start = await self.log.last_seq_on(subjects.job(job_id, "requested"))
        if start is None:
            return None
        # folded a batch at a time: the history holds every work item, each with the job's template
        view = JobView(job_id)
        async with aclosing(self.log.read_batches(subjects.job_history(job_id), start,
                                                  max_batch=LEARN_BATCH)) as batches:
            async for batch in batches:
                for stored in batch:
                    view.take(stored)
        view.known_to = max(view.known_to, log_end)
        return view

    def _keep(self, job_id: str, view: JobView) -> None:
        self.jobs[job_id] = view
        self.jobs.move_to_end(job_id)
        self.documents += view.size
        while self.documents > self.max_documents and len(self.jobs) > 1:
            _, gone = self.jobs.popitem(last=False)
            self.documents -= gone.size

    def end(self, job_id: str) -> None:
        """The job's end came back from the log: its view goes, and its later events are ignored."""
        self.forget(job_id)
        self.ended[job_id] = None
        self.ended.move_to_end(job_id)
        while len(self.ended) > self.max_ended:
            self.ended.popitem(last=False)

    def forget(self, job_id: str) -> None:
        view = self.jobs.pop(job_id, None)
        if view is not None:
            self.documents -= view.size


class JobManager:
    def __init__(
        self,
        event_log: EventLogPort,
        models: ReadModelsPort,
        *,
        parked: ParkedEvents,
        clock: Clock = utc_now,
        metrics: Metrics | None = None,
        position_every: float = POSITION_EVERY_SECONDS,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.log = event_log
        self.models = models
        self.parked = parked
        self.clock = clock
        self.running = RunningJobs(event_log)
        self.position = 0
        # The log's end when following began: up to there the events are replayed (after a restart
        # the job may have ended later in the log), so they are decided on the job's whole history.
        self.replaying_to = 0
        self.watch = ResetWatch(JOB_MANAGER)
        self.log_id: str | None = None  # the log its position belongs to (stored with it)
        self.position_every = position_every
        self._stored: Mark | None = None  # the position as last stored (or read at the start)
        self._moved = asyncio.Event()  # the position moved since it was last stored
        self.undecided: set[str] = set()  # jobs whose end its newer events kept overtaking: the next sweep's
        self._deciding: dict[str, _Deciding] = {}  # a lock per job being decided

    async def run(self, stop: asyncio.Event, *, sweep_seconds: float = 5.0) -> None:
        sweeper = asyncio.create_task(keep_going(lambda: self._sweep(stop, sweep_seconds), stop, what="expiry"))
        keeper = asyncio.create_task(keep_going(self._keep_position, stop, what="job manager position"))
        try:
            await keep_going(lambda: self._follow_once(stop), stop, what="job manager")
        finally:
            sweeper.cancel()
            keeper.cancel()
            await self._last_position()

    async def _keep_position(self) -> None:
        """Store the position when it moves, at most every ``position_every`` seconds. A store
        that fails leaves the move noted: the keeper, started again, stores it."""
        while True:
            await self._moved.wait()
            await self._store_position()
            if Mark(self.position, self.log_id) == self._stored or self.watch.reason is not None:
                self._moved.clear()
            await asyncio.sleep(self.position_every)

    async def _store_position(self, *, retry: bool = True) -> None:
        """Store the position if it moved and still belongs to the log. Not while the follower
        is paused on a changed log, nor when the log changed since: a rebuild may have started
        the position again at 0 in the new log, and an old log's position must not undo that."""
        mark = Mark(self.position, self.log_id)
        if self._stored is None or self.watch.reason is not None or mark == self._stored:
            return  # not following yet (nothing read), paused, or stored already
        if reset_reason(mark, await self.log.state()) is not None:
            return  # the follower finds out and pauses
        save = partial(self.models.save_position, JOB_MANAGER, mark.seq, mark.log_id)
        await (durably(save, what="job manager position") if retry else save())
        self._stored = mark

    async def _last_position(self) -> None:
        """On the way out, the position not stored yet, in one attempt (MongoDB may be why it
        stops): without it, a restart replays those events and decides the same again."""
        try:
            async with asyncio.timeout(5):
                await self._store_position(retry=False)
        except Exception as exc:  # noqa: BLE001 - stopping anyway; the events are replayed instead
            log.warning("job_manager_position_not_stored", position=self.position, error=str(exc)[:300])

    async def _follow_once(self, stop: asyncio.Event) -> None:
        """Follow the jobs' events from the stored position, unless it belongs to another log
        (:mod:`services.projector.log_reset`): then wait for a rebuild to restart it."""
        mark = await self.models.position_mark(JOB_MANAGER)
        state = await self.log.state()
        if not self.watch.holds(mark, state):
            await self.watch.pause(stop)
            return
        if self.log_id is not None and state.log_id != self.log_id:
            self.running = RunningJobs(self.log)  # what it held described another log
        self.log_id, self.position = state.log_id, mark.seq
        self._stored = mark
        self.replaying_to = state.last_seq
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
        """Decide the jobs this batch may have ended, then move the position after it (stored
        within ``position_every`` seconds)."""
        # the jobs that may be over, in the order they may have ended, with the event that may have ended each
        over: dict[str, StoredEvent] = {}
        for stored in batch:
            event = stored.event
            if isinstance(event, JobFinished):
                over.pop(event.job_id, None)
                self.running.end(event.job_id)
                continue
            try:
                view = await self.running.fold(stored)
            except Exception as exc:  # noqa: BLE001 - an event its job's view cannot take: the job waits for a fix
                await self._park(getattr(event, "job_id", ""), exc.cause if isinstance(exc, Unstorable) else exc)
                continue
            if view is None or view.decided:
                continue
            if isinstance(event, JobCancelRequested):
                over[view.job_id] = stored  # decided at once, with personas still open
            elif isinstance(event, PersonaCompleted | PersonaFailed) and not view.open:
                over[view.job_id] = stored
        await self.decide(over, causes=over, live=True)
        self.position = batch[-1].seq
        self._moved.set()

    async def decide(self, jobs: Iterable[str], *, strict: bool = False, live: bool = False,
                     causes: Mapping[str, StoredEvent] | None = None) -> None:
        """Publish the end of each job that has one. A job whose end cannot be decided or
        stored is parked (``strict``: raised) and the others go on. A job's decision is traced
        as a child of the event in ``causes`` that may have ended it (so is the end it publishes).

        ``live``: decided on the job's view as of the events followed so far when that view
        holds the log at least to where the replay ends (the follower's decisions); else on its
        whole history in the log (a replay, the deadline sweep and a reapply: the log may hold
        more of the job, its end included, than the view)."""
        now = self.clock()
        for job_id in list(jobs):
            cause = (causes or {}).get(job_id)
            with tracing.consuming("decide job", cause.headers if cause else None, cause.event if cause else None,
                                   **{"promptgen.job_id": job_id}) as span:
                try:
                    await self._end_if_over(job_id, now, live)
                except EndContended as exc:
                    if strict:
                        raise
                    self.undecided.add(job_id)
                    log.info("job_end_deferred", job_id=job_id, reason=str(exc))
                except Unstorable as exc:
                    tracing.fail(span, exc.cause)
                    if strict:
                        raise exc.cause from None
                    await self._park(job_id, exc.cause)

    def settled(self, job_id: str) -> bool:
        """Whether the job's end is known here: published by this job manager, or come back."""
        view = self.running.jobs.get(job_id)
        return job_id in self.running.ended or (view is not None and view.decided)

    async def _end_if_over(self, job_id: str, now: datetime, live: bool) -> None:
        """One decision of a job at a time (the follower and the sweep both decide), none once
        its end is known here."""
        # The entry goes with its last user: a released lock whose waiter has not yet woken
        # reads unlocked, and a new lock beside it would let two decisions run.
        entry = self._deciding.get(job_id)
        if entry is None:
            entry = self._deciding[job_id] = _Deciding()
        entry.users += 1
        try:
            async with entry.lock:
                if not self.settled(job_id):
                    await self._decide_end(job_id, now, live)
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._deciding[job_id]

    async def _decide_end(self, job_id: str, now: datetime, live: bool) -> None:
        """Publish the job's end if it is over, on condition that nothing of the job came after
        the history it was decided on (an outcome stored while an expiry was decided would
        otherwise be counted failed in the job's results): if something did, decide again."""
        for _ in range(END_TRIES):
            held = self.running.jobs.get(job_id) if live else None
            if held is not None and held.known_to >= self.replaying_to:
                view: JobView | None = held
            else:
                view = await durably(lambda: self.running.learn(job_id), what="job history")
            if view is None or (history := view.view()) is None:
                return
            try:
                end = decide_job_end(*history, now)
            except Exception as exc:
                raise Unstorable(exc) from exc
            if end is None:
                return
            if await durably(partial(self._publish_end, end, Unchanged(subjects.job_history(job_id), view.newest)),
                             what="job end"):
                break
            live = False  # the log holds more of the job than the view: its whole history, again
        else:
            raise EndContended(f"the job's events kept coming while its end was decided, {END_TRIES} times")
        if (followed := self.running.jobs.get(job_id)) is not None:
            followed.decided = True
        tracing.note(**{"promptgen.job_status": end.status})
        self.metrics.jobs_finished.labels(status=end.status).inc()
        log.info("job_finished", job_id=job_id, status=end.status,
                 successful=end.results.successful, failed=end.results.failed)

    async def _publish_end(self, end: JobFinished, condition: Unchanged) -> bool:
        """Whether ``end`` is stored (False: the job moved past ``condition``)."""
        try:
            await self.log.publish(end, unchanged=condition)
        except Moved as moved:
            log.info("job_end_decided_again", job_id=end.job_id, reason=str(moved))
            return False
        return True

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

    async def expire_overdue(self, skip: Iterable[str] = ()) -> None:
        """Decide every job the read models show running past its deadline, or running with a
        cancel asked: the live decision of a cancel overtaken by the job's own events (its work
        items still being dispatched) is left to the sweep, and the read models keep it across a
        restart, as the job manager's memory does not."""
        now = self.clock()

        async def overdue() -> list[str]:
            cursor = self.models.jobs.find({"status": "processing", "$or": [
                {"deadline": {"$lte": now}}, {"cancel_requested_at": {"$exists": True}}]}, {"_id": 1})
            return [doc["_id"] async for doc in cursor]

        skipped = set(skip)  # decided in this sweep already, or whose end is known here
        jobs = await durably(overdue, what="overdue jobs")
        await self.decide([j for j in jobs if j not in skipped and not self.settled(j)])

    async def _decide_undecided(self) -> set[str]:
        """The jobs whose end their events kept overtaking, on their whole history (contended
        again, one is left for the next sweep); one that raises is kept, with those after it.
        Returns those decided."""
        jobs = list(self.undecided)
        for job_id in jobs:
            self.undecided.discard(job_id)
            try:
                await self.decide([job_id])
            except BaseException:
                self.undecided.add(job_id)
                raise
        return set(jobs)

    async def _sweep(self, stop: asyncio.Event, every: float) -> None:
        while not stop.is_set():
            if self.watch.reason is None:  # the read models may describe another log until a rebuild
                await self.expire_overdue(skip=await self._decide_undecided())
            try:
                await asyncio.wait_for(stop.wait(), timeout=every)
            except TimeoutError:
                pass
