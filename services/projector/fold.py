"""The fold: the event log into MongoDB, batch by batch, from its stored checkpoint.

The checkpoint (last stream sequence applied) lives in MongoDB beside the read
models it describes. With transactions on (``PROMPTGEN_MONGO_TRANSACTIONS=auto``) and a
server that takes them, a batch's writes and its checkpoint are one transaction (one
commit; they are seen together); otherwise, or when a batch replayed after a crash meets
its own documents (a duplicate aborts a transaction), the writes go one by one and the
checkpoint after them: a crash in between replays a batch whose writes are idempotent.
Writes are retried while MongoDB is away; nothing moves the checkpoint past an event
whose effect is neither stored nor parked (:mod:`services.adapters.parked`: an event that
cannot be decoded or stored is set aside for an operator, and the fold goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog

from contracts import subjects
from contracts.api import ParkedEvent
from contracts.events import UnknownEvent
from services.adapters.event_log import StoredEvent
from services.adapters.parked import ParkedEvents
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.adapters.read_models import CollectionWrites, Mark
from services.projector.fold_workers import FoldWorkers
from services.projector.log_reset import ResetWatch, restart_positions
from services.projector.projections import Write, coalesce, is_creation, split_creations, writers_of, writes_for
from services.projector.rebuild import Progress, rebuild_into
from services.runtime import tracing
from services.runtime.failures import Unstorable, durably
from services.runtime.lifecycle import Clock, keep_going, utc_now
from services.runtime.metrics import Metrics

log = structlog.get_logger()

PROJECTOR = "projector"
REAPPLY_BATCH = 500  # events written again together by a re-apply


class Superseded(Exception):
    """A parked event's update that later events have moved past: only a rebuild applies it."""


class Fold:
    def __init__(
        self,
        event_log: EventLogPort,
        models: ReadModelsPort,
        *,
        job_retention: timedelta = timedelta(days=7),
        parked: ParkedEvents | None = None,
        on_reapplied: Callable[[set[str]], Awaitable[None]] | None = None,
        on_rebuilt: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        clock: Clock = utc_now,
        scratch_dir: str | None = None,
        workers: FoldWorkers | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.scratch_dir = scratch_dir  # where a rebuild folds the log (None: the system's temporary directory)
        self.workers = workers  # the processes a rebuild reads and folds the log in (None: this one)
        self.clock = clock
        self.applied_at: datetime | None = None  # when the newest applied event was stored in the log
        self.on_reapplied = on_reapplied  # who decides the jobs a re-applied event touched
        self.on_rebuilt = on_rebuilt  # who else waits for a rebuild (a consumer whose log was reset)
        self.watch = ResetWatch(PROJECTOR)
        self.log_id: str | None = None  # the log the checkpoint belongs to (stored with it)
        self.log = event_log
        self.parked = parked or ParkedEvents(event_log)
        self.skipped = 0  # events of a type or version this code does not know
        self.job_retention = job_retention
        self.models = models
        self.position = 0
        self._lock = asyncio.Lock()  # one writer at a time: the live fold or a rebuild
        self._generation = 0  # bumped by a rebuild: the live fold restarts from the new checkpoint

    @property
    def exclusive(self) -> asyncio.Lock:
        """Held, no batch is applied and no rebuild runs (the retention sweep holds it)."""
        return self._lock

    async def apply(self, batch: list[StoredEvent], *, last_seq: int | None = None) -> None:
        """Write a batch's effects, then the checkpoint. An event that cannot be decoded or
        stored is parked; the rest of the batch is stored all the same. ``last_seq``: the
        log's, if known (for the lag)."""
        # A span per event, each a child of that event's publish, rather than one span for the
        # batch linking them: a batch holds many jobs' events, and a link would leave the write
        # out of each job's trace. They share the batch's timing: the writes are made together.
        spans = tracing.event_spans("project", batch, **{"messaging.batch.message_count": len(batch)})
        try:
            await self._apply(batch, spans, last_seq)
        finally:
            tracing.end_spans(spans)

    async def _apply(self, batch: list[StoredEvent], spans: dict, last_seq: int | None) -> None:
        writes = defaultdict(list)
        readable: list[StoredEvent] = []
        for stored in batch:
            event = stored.event
            if event is None:
                await self._unreadable(stored)
                continue
            try:
                ops = writes_for(event, stored.seq, self.job_retention)
            except Exception as exc:  # noqa: BLE001 - an event no projection can express (a date out of range)
                tracing.fail(spans.get(stored.seq), exc)
                await self.parked.park(PROJECTOR, stored, "unstorable", exc)
                continue
            readable.append(stored)
            for collection, op in ops:
                writes[collection].append(op)

        # Per collection, new documents in one unordered insert, then the updates in order.
        plan = [CollectionWrites(collection, *split_creations(coalesce(ops))) for collection, ops in writes.items()]

        async def write_all() -> None:
            if await self.models.write_batch(plan, batch[-1].seq, self.log_id):
                self.metrics.projector_batches.labels(written="transaction").inc()
            else:  # no transactions, or a replayed batch: each write on its own, the checkpoint last
                await self._write_plan(plan)
                await self.models.save_checkpoint(batch[-1].seq, self.log_id)
                self.metrics.projector_batches.labels(written="separately").inc()
            for w in plan:
                self.metrics.count_writes(len(w.docs), w.updates)

        try:
            await durably(write_all, what="projection")
        except Unstorable:
            # One event of the batch cannot be stored: find it by storing them one by one.
            for stored in readable:
                try:
                    await durably(lambda stored=stored: self._write(stored), what="projection")
                except Unstorable as exc:
                    tracing.fail(spans.get(stored.seq), exc.cause)
                    await self.parked.park(PROJECTOR, stored, "unstorable", exc.cause)
            await durably(lambda: self.models.save_checkpoint(batch[-1].seq, self.log_id), what="checkpoint")
        self.position = batch[-1].seq
        self.applied_at = batch[-1].time
        await self.announce()
        await self.measure_lag(last_seq)

    async def announce(self) -> None:
        """Say where the checkpoint is (:data:`contracts.subjects.PROJECTOR_CHECKPOINT`): a gateway
        waiting for it wakes at once. Best effort: a gateway that hears nothing reads MongoDB."""
        try:
            await self.log.send(subjects.PROJECTOR_CHECKPOINT, str(self.position).encode())
        except Exception as exc:  # noqa: BLE001 - the checkpoint is stored; only the news is lost
            log.debug("checkpoint_not_announced", seq=self.position, error=str(exc))

    async def measure_lag(self, last_seq: int | None = None) -> int:
        """How far behind the head of the log the fold is, in events (also set as gauges, with
        the age of the newest applied event while behind: a stuck fold shows a growing age)."""
        if last_seq is None:
            last_seq = await self.log.last_seq()
        behind = max(0, last_seq - self.position)
        self.metrics.projector_lag_events.set(behind)
        age = (self.clock() - self.applied_at).total_seconds() if behind and self.applied_at else 0.0
        self.metrics.projector_lag_seconds.set(max(0.0, age))
        return behind

    async def _write_plan(self, plan: list[CollectionWrites]) -> None:
        """Per collection, its new documents in one unordered insert, then its updates in order."""
        for w in plan:
            if w.docs:
                await self.models.insert_new(w.collection, w.docs)
            if w.updates:
                await self.models.apply(w.collection, w.updates)

    async def _write(self, stored: StoredEvent) -> None:
        for collection, change in writes_for(stored.event, stored.seq, self.job_retention):
            await self.models.apply(collection, [change])

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
        persona completed before its creation was stored), so the events that write what it
        wrote (:func:`~services.projector.projections.writers_of`: for a job, the job's own
        events; for a persona, its prompts) are folded again after it, up to where the fold
        is: every write is idempotent, and those already applied change nothing. In bulk,
        under the fold's lock throughout: a live event applied in between would win over an
        older one re-applied after it (each update is guarded by its event's sequence as a
        whole), and the read models would no longer be what one fold of the log makes. For
        the same reason a parked update of a document a later event has changed since cannot
        be re-applied (:class:`Superseded`, and the record stays): a rebuild puts it in its place."""
        async with self._lock:
            end = self.position
            parked = await self.log.at(record.seq, leader=True) if record.seq <= end else None
            if parked is None:
                raise LookupError(f"event {record.seq} is no longer in the log (or is past the projector's position)")
            if parked.event is None:
                raise parked.error or ValueError("undecodable")
            writes = writes_for(parked.event, parked.seq, self.job_retention)
            await self._not_superseded(parked.seq, writes)
            writers = sorted({subject for collection, change in writes
                              for subject in writers_of(collection, change.filter["_id"])})
            again = {parked.seq: parked}
            for subject in writers:
                async with contextlib.aclosing(self.log.read(subject, parked.seq + 1)) as events:
                    async for stored in events:
                        if stored.seq > end:
                            break
                        again[stored.seq] = stored
            ordered = [again[seq] for seq in sorted(again)]
            for start in range(0, len(ordered), REAPPLY_BATCH):
                await self._write_again(ordered[start:start + REAPPLY_BATCH], record.seq)
        log.info("reapply_refolded", seq=record.seq, events=len(ordered), subjects=writers)
        if self.on_reapplied is not None:
            await self.on_reapplied({job_id for stored in ordered if (job_id := getattr(stored.event, "job_id", None))})

    async def _not_superseded(self, parked_seq: int, writes: list[Write]) -> None:
        """Raises :class:`Superseded` if a document the parked event (at ``parked_seq``, writing
        ``writes``) updates was changed by a later event since: its update, guarded by its
        sequence, would be passed over there, and the re-apply would say it was applied when it
        was not."""
        later = []
        for collection, change in writes:
            _id = change.filter.get("_id")
            if is_creation(change) or change.many or not isinstance(_id, str):
                continue
            doc = await self.models.collection(collection).find_one({"_id": _id}, {"_seq": 1})
            if doc is not None and doc.get("_seq", 0) > parked_seq:
                later.append(f"{collection} {_id} (changed at {doc['_seq']})")
        if later:
            raise Superseded(f"later events changed what event {parked_seq} updates: {', '.join(later)}; a re-apply "
                             "cannot put its change under theirs: `promptgen rebuild` folds the whole log, this event "
                             "in its place (then `promptgen parked discard` its record)")

    async def _write_again(self, batch: list[StoredEvent], parked_seq: int) -> None:
        """A batch's writes again, in bulk (no checkpoint: it is past them). The parked event
        failing again raises; any other event that fails is passed by (it has its own record)."""
        writes = defaultdict(list)
        readable: list[StoredEvent] = []
        for stored in batch:
            if stored.event is None:
                continue
            try:
                ops = writes_for(stored.event, stored.seq, self.job_retention)
            except Exception as exc:
                if stored.seq == parked_seq:
                    raise
                log.warning("reapply_skipped_event", seq=stored.seq, error=str(exc))
                continue
            readable.append(stored)
            for collection, op in ops:
                writes[collection].append(op)
        plan = [CollectionWrites(collection, *split_creations(coalesce(ops))) for collection, ops in writes.items()]
        try:
            await durably(lambda: self._write_plan(plan), what="re-applied projection")
        except Unstorable:  # one of them cannot be stored: each on its own, to find it
            for stored in readable:
                try:
                    await durably(lambda stored=stored: self._write(stored), what="re-applied projection")
                except Unstorable as exc:
                    if stored.seq == parked_seq:
                        raise exc.cause from None
                    log.warning("reapply_skipped_event", seq=stored.seq, error=str(exc))

    async def run(self, stop: asyncio.Event) -> None:
        await keep_going(lambda: self._follow_once(stop), stop, what="fold")

    async def _follow_once(self, stop: asyncio.Event) -> None:
        """Follow the log from the stored checkpoint until stopped or the read models are rebuilt.
        A checkpoint the log no longer matches (:mod:`services.projector.log_reset`) is not
        followed, and a batch of a log that changed while it was followed is not applied:
        the fold waits for a rebuild."""
        generation = self._generation
        mark = await self.models.checkpoint_mark()
        state = await self.log.state()
        if not self.watch.holds(mark, state):
            await self.watch.pause(stop)
            return
        self.log_id = state.log_id
        start = mark.seq + 1
        self.position = mark.seq
        log.info("projector_following", from_seq=start, log=self.log_id)
        follower = self.log.follow_batches(subjects.ALL, start)
        try:
            async for batch in follower:
                async with self._lock:
                    if generation != self._generation:
                        return
                    state = await self.log.state()
                    if not self.watch.holds(Mark(self.position, self.log_id), state):
                        return
                    await self.apply(batch, last_seq=state.last_seq)
                if stop.is_set():
                    return
        finally:
            await follower.aclose()

    async def rebuild(self, progress: Progress) -> int:
        """Rebuild every read model from the log and switch to it, pausing the live fold."""
        async with self._lock:
            state = await self.log.state()  # before reading: a log recreated meanwhile is caught later
            position = await rebuild_into(self.log, self.models, progress, job_retention=self.job_retention,
                                          unusable=self._park_unusable, log_id=state.log_id,
                                          scratch_dir=self.scratch_dir, workers=self.workers)
            await restart_positions(self.models, state)
            self.position = position
            self._generation += 1
        await self.announce()
        self.watch.wake()
        if self.on_rebuilt is not None:
            self.on_rebuilt()
        return position
