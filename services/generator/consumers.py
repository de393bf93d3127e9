"""The generator's two JetStream consumers.

* dispatcher: ``JobRequested`` -> one work item per persona (those the job lacks), then ack.
* workers: a durable pull consumer shared by every generator replica; each item
  is acked only after its outcome event is stored. A redelivered item (or one applied
  again from the parked records) whose persona already ended costs no second LLM call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime

import structlog
from nats.errors import Error as NatsError

from contracts import subjects
from contracts.api import ParkedEvent
from contracts.domain import EXPIRED_PERSONA_ERROR
from contracts.events import (
    EventDecodeError,
    JobRequested,
    PersonaCompleted,
    PersonaFailed,
    PersonaProgress,
    PersonaPromptRequested,
    UnknownEvent,
    caused_by,
    parse_event,
)
from services.adapters.event_log import StoredEvent, pulled, stored_message
from services.adapters.llm.base import LLMError, Provider
from services.adapters.parked import ParkedEvents
from services.adapters.ports import EventLogPort
from services.generator.work import (
    Stored,
    failed,
    fan_out,
    generate_persona_prompt,
    persona_ended,
    request_seq,
    store_outcome,
)
from services.runtime import tracing
from services.runtime.failures import brief, kind_of
from services.runtime.lifecycle import Clock, cancel_and_wait, utc_now
from services.runtime.metrics import Metrics
from services.runtime.settings import Settings

log = structlog.get_logger()

DISPATCHER = "generator-dispatcher"
WORKERS = "generator-workers"


async def _publish_all(event_log: EventLogPort, events: list, first: int = 16, chunk: int = 256) -> None:
    """Publish ``events`` concurrently, ``chunk`` at a time after a first chunk of ``first``:
    a chunk reaches the server once all of it is encoded, and the first items of a large
    job need not wait for hundreds of others before a worker can start on them."""
    start, size = 0, first
    while start < len(events):
        await asyncio.gather(*(event_log.publish(e) for e in events[start : start + size]))
        start, size = start + size, chunk


# A newer version's event on a work queue is offered again, for a process of that version (a
# rolling deployment runs both), this many deliveries in all, this long apart; then parked.
NEWER_DELIVERIES = 5
NEWER_RETRY_SECONDS = 5.0


async def set_aside(msg, stored: StoredEvent, consumer: str, parked: ParkedEvents,
                    error: BaseException | None = None, *, deliveries: int = NEWER_DELIVERIES) -> None:
    """Take a message this consumer cannot use out of its queue, parked for an operator. One of
    a type or version this code does not know (a newer producer's) is work for a newer process:
    given back for one to take, until its ``deliveries``-th delivery here; then parked, to be
    applied again once every generator runs that version (dropped, the work would be lost)."""
    if error is None and isinstance(stored.error, UnknownEvent):
        delivered = msg.metadata.num_delivered
        if delivered < deliveries:
            log.warning("event_left_for_newer", consumer=consumer, seq=stored.seq, subject=stored.subject,
                        deliveries=delivered, reason=str(stored.error))
            await msg.nak(delay=NEWER_RETRY_SECONDS)
            return
        await parked.park(consumer, stored, "undecodable", f"{stored.error}: a newer version's; apply it again "
                                                           "once every generator runs that version")
    elif error is None:
        await parked.park(consumer, stored, "undecodable", str(stored.error))
    else:
        await parked.park(consumer, stored, "unstorable", error)
    await msg.term()


async def dispatch(event: JobRequested, event_log: EventLogPort, at: int = 1) -> int:
    """Fan a job out into the work items it does not have yet; how many were published.

    Each item has a deterministic id, so the log drops a second copy within its duplicate
    window. Past it (a request delivered again after a long outage, or applied again from the
    parked records) a second copy would be a second LLM call and a second outcome that
    overwrites the persona's prompt: so an ended job gets none, and a job dispatched before
    only the items it lacks (what a dispatcher that died in the middle left out). ``at``: where
    the request is in the log (its items follow it)."""
    items = fan_out(event)
    if await event_log.first_readable_on(subjects.job_ends(event.job_id)) is not None:
        log.info("job_dispatch_skipped", reason="job ended", personas=len(items))
        return 0
    its_items = subjects.job_persona(event.job_id, "*", "requested")
    if await event_log.last_seq_on(its_items) is not None:
        present = set()
        async with contextlib.aclosing(event_log.read(its_items, at)) as found:
            async for stored in found:
                if isinstance(stored.event, PersonaPromptRequested):
                    present.add(stored.event.persona_id)
        items = [item for item in items if item.persona_id not in present]
        log.info("job_dispatched_before", present=len(present), missing=len(items))
    await _publish_all(event_log, items)
    return len(items)


@contextlib.asynccontextmanager
async def still_working(msg, ack_wait: float) -> AsyncIterator[None]:
    """While the block runs, tell JetStream every third of ``ack_wait`` that this worker is on
    ``msg``: a long LLM call does not look like a dead worker, and a dead worker's message goes
    to another one after ``ack_wait``, not after the longest call we allow."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(max(0.5, ack_wait / 3))
            with contextlib.suppress(Exception):  # a lost beat costs at worst a redelivery
                await msg.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


async def acknowledged(msg) -> None:
    """Acknowledge a work item whose handling is over. A lost ack only means a redelivery, which
    finds the item's end (or its job's) and skips: it must not send the item down the failure path."""
    try:
        await msg.ack()
    except Exception as exc:  # noqa: BLE001 - the connection is away: the item comes back
        log.warning("work_item_ack_lost", error=brief(exc))


async def run_dispatcher(event_log: EventLogPort, stop: asyncio.Event, parked: ParkedEvents) -> None:
    ack_wait = event_log.settings.ack_wait_seconds
    sub = await event_log.work_queue(
        DISPATCHER, subjects.JOBS_REQUESTED, max_ack_pending=16, ack_wait=ack_wait, max_deliver=-1
    )
    async for msgs in pulled(sub, 4, stop):
        for msg in msgs:
            stored = stored_message(msg)
            if not isinstance(stored.event, JobRequested):
                await set_aside(msg, stored, DISPATCHER, parked)
                continue
            # The work items are published inside this span: each carries the job's trace on.
            with structlog.contextvars.bound_contextvars(job_id=stored.event.job_id), \
                    tracing.consuming("dispatch job.requested", stored.headers, stored.event,
                                      **{"promptgen.seq": stored.seq}) as span:
                try:
                    async with still_working(msg, ack_wait):  # a job of many personas takes a while
                        count = await dispatch(stored.event, event_log, stored.seq)
                except Exception as exc:  # noqa: BLE001 - one job must not stop the dispatcher
                    tracing.fail(span, exc)
                    if kind_of(exc) == "permanent":
                        await set_aside(msg, stored, DISPATCHER, parked, exc)
                    else:
                        log.warning("job_dispatch_retry", error=brief(exc))
                        with contextlib.suppress(NatsError):  # unsaid, it comes back after the ack wait
                            await msg.nak(delay=2)
                    continue
                try:
                    await msg.ack_sync()
                except NatsError as exc:  # a busy server's answer too late: the dispatcher goes on, and the
                    # request comes back after the ack wait, dispatched again into work items the log dedups
                    log.warning("job_dispatch_ack_lost", error=brief(exc), personas=count)
                    continue
                log.info("job_dispatched", personas=count)


async def reapply_dispatch(event_log: EventLogPort, record: ParkedEvent) -> None:
    stored = await _parked_event(event_log, record)
    if not isinstance(stored.event, JobRequested):
        raise ValueError(f"event {record.seq} is not a job request")
    await dispatch(stored.event, event_log, stored.seq)


async def _parked_event(event_log: EventLogPort, record: ParkedEvent) -> StoredEvent:
    stored = await event_log.at(record.seq, leader=True)  # a lagging replica would say it is gone
    if stored is None:
        raise LookupError(f"event {record.seq} is no longer in the log")
    if stored.event is None:
        raise stored.error or ValueError("undecodable")
    return stored


def _an_event(data: bytes) -> bool:
    """Whether ``data`` is an event (a newer version's included): garbage on a cancel's subject
    cancels nothing (the job manager, which decodes it, would never end the job)."""
    try:
        parse_event(data)
    except UnknownEvent:
        return True
    except EventDecodeError as exc:
        log.warning("cancel_unreadable", error=str(exc)[:200])
        return False
    return True


# After a cancel is heard, how long its job's cancel may take to be readable in the log (the
# stream stores it as subscribers hear it): looked for at these moments, then taken as refused.
CONFIRM_AFTER = (0.0, 0.05, 0.2, 0.5, 1.0, 2.0)


class Cancellations:
    """Which jobs were cancelled: asked of the log once per job, then kept current by a
    subscription to cancel events (cleared on reconnect, when one may have been missed).
    A job's LLM calls in flight here (:meth:`calling`) are cancelled with it.

    What the subscription hears is a publish, not a stored cancel: the stream refuses a cancel
    that comes after its job's end (or while it has no leader), and subscribers hear it all the
    same. A cancel heard counts once the log holds it (:data:`CONFIRM_AFTER`)."""

    def __init__(self, event_log: EventLogPort, max_jobs: int = 10_000) -> None:
        self.log = event_log
        self.known: OrderedDict[str, bool] = OrderedDict()
        self.max_jobs = max_jobs
        self.calls: dict[str, set[asyncio.Task]] = {}
        self.confirming: dict[str, asyncio.Task] = {}
        self.heard_again: set[str] = set()  # jobs whose cancel was heard again while being looked for
        self.closed = False

    async def start(self) -> None:
        async def on_cancel(msg) -> None:
            job_id = subjects.job_id_of(msg.subject)
            if self.closed or not job_id or self.known.get(job_id) or not _an_event(msg.data):
                return
            if job_id in self.confirming:
                self.heard_again.add(job_id)  # a retry of a refused publish may be the one stored
                return
            self.confirming[job_id] = asyncio.create_task(self._confirm(job_id))

        await self.log.subscribe(subjects.JOBS_CANCEL_REQUESTED, on_cancel)
        self.log.on_reconnect(self.known.clear)

    async def _confirm(self, job_id: str) -> None:
        subject = subjects.job(job_id, "cancel_requested")
        try:
            while True:
                self.heard_again.discard(job_id)
                for wait in CONFIRM_AFTER:
                    await asyncio.sleep(wait)
                    if await self.log.first_readable_on([subject], leader=True) is not None:
                        self._remember(job_id, True)
                        for call in self.calls.get(job_id, ()):
                            call.cancel()
                        return
                if job_id not in self.heard_again:
                    break
        except Exception as exc:  # noqa: BLE001 - the next item of the job asks the log itself
            log.warning("cancel_not_confirmed", job_id=job_id, error=f"{type(exc).__name__}: {exc}"[:300])
        else:
            log.info("cancel_heard_not_stored", job_id=job_id)
        finally:
            # here, not in a done callback a loop turn later: a cancel heard in between would find
            # this one still looking, and be noted for a look that never comes
            if self.confirming.get(job_id) is asyncio.current_task():
                del self.confirming[job_id]
            self.heard_again.discard(job_id)
        self.known.pop(job_id, None)  # the job's next item asks the log, which may hold it by then

    async def close(self) -> None:
        """Stop looking for the cancels heard, and for any heard from now on (the process is stopping)."""
        self.closed = True
        for task in list(self.confirming.values()):
            await cancel_and_wait(task)

    def _remember(self, job_id: str, cancelled: bool) -> None:
        self.known[job_id] = cancelled or self.known.get(job_id, False)
        self.known.move_to_end(job_id)
        while len(self.known) > self.max_jobs:
            self.known.popitem(last=False)

    async def is_cancelled(self, job_id: str) -> bool:
        if job_id not in self.known:
            found = await self.log.first_readable_on([subjects.job(job_id, "cancel_requested")]) is not None
            self._remember(job_id, found)
        return self.known[job_id]

    @contextlib.contextmanager
    def calling(self, job_id: str, call: asyncio.Task):
        """``call`` (a job's LLM call) is cancelled if the job is, until the block ends."""
        calls = self.calls.setdefault(job_id, set())
        calls.add(call)
        try:
            yield
        finally:
            calls.discard(call)
            if not calls:
                del self.calls[job_id]


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Detached:
    """A parked work item applied again by hand: there is no delivery to acknowledge."""

    metadata = None

    async def ack(self) -> None: ...
    async def in_progress(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self) -> None: ...


class WorkerPool:
    def __init__(self, event_log: EventLogPort, provider: Provider, settings: Settings, limiter=None,
                 parked: ParkedEvents | None = None, clock: Clock = utc_now,
                 metrics: Metrics | None = None) -> None:
        self.log = event_log
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.parked = parked or ParkedEvents(event_log)
        self.provider = provider
        self.settings = settings
        self.limiter = limiter
        self.cancellations = Cancellations(event_log)
        self.requests: OrderedDict[str, int] = OrderedDict()  # where each job's request is in the log
        self.in_flight: set[asyncio.Task] = set()

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        sub = await self.log.work_queue(
            WORKERS,
            subjects.WORK_ITEMS,
            max_ack_pending=s.llm_concurrency,
            ack_wait=s.ack_wait_seconds,
            max_deliver=s.max_deliveries,
        )
        limit = s.worker_concurrency

        async def room() -> int:  # calls in flight stay within this process's share
            while len(self.in_flight) >= limit:
                await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
            return limit - len(self.in_flight)

        await self.cancellations.start()
        try:
            async for msgs in pulled(sub, room, stop):
                for msg in msgs:
                    if len(self.in_flight) >= limit:
                        # A fetch hands over what arrived for earlier fetches too (nats-py): more than
                        # there was room for. The item waits for a slot, kept with this worker.
                        async with still_working(msg, s.ack_wait_seconds):
                            await room()
                    task = asyncio.create_task(self.handle(msg))
                    self.in_flight.add(task)
                    task.add_done_callback(self.in_flight.discard)
        finally:
            await self.cancellations.close()

    async def drain(self, timeout: float) -> None:
        if self.in_flight:
            await asyncio.wait(self.in_flight, timeout=timeout)

    async def _expired(self, msg, item: PersonaPromptRequested, delivered: int) -> None:
        await self._fail(item, LLMError("expired", EXPIRED_PERSONA_ERROR), delivered)
        await acknowledged(msg)

    async def _fail(self, item: PersonaPromptRequested, err: LLMError, delivered: int) -> None:
        """Store the persona's failure, unless its job's cancel or end is stored first, and count it."""
        if (stored := await self._store(failed(item, err, delivered))) == "stored":
            self.metrics.persona_finished("failed", err.code)
        else:
            self.metrics.persona_finished(stored)

    async def _store(self, outcome: PersonaCompleted | PersonaFailed) -> Stored:
        """:func:`store_outcome`, with where the job's request is remembered per job."""
        request = self.requests.pop(outcome.job_id, None)
        if request is None:
            request = await request_seq(self.log, outcome.job_id)
        self.requests[outcome.job_id] = request
        while len(self.requests) > self.cancellations.max_jobs:
            self.requests.popitem(last=False)
        return await store_outcome(self.log, outcome, request)

    async def _ended_meanwhile(self, item: PersonaPromptRequested, taken: datetime) -> bool:
        """Whether another delivery of the item stored the persona's outcome while this one's call
        was out, long enough ago that the log would not take this outcome for its duplicate.

        A persona's outcomes share one ``Nats-Msg-Id``: one stored within the log's duplicate
        window of another is taken for it. Another delivery can only have stored its outcome after
        this one took the item, so while less than half the window has passed since (the other
        half left for the store), the log still knows that outcome's id; after it, the log is
        asked first (a call that long is rare: retries, a slow model)."""
        if (self.clock() - taken).total_seconds() < self.settings.duplicate_window_seconds / 2:
            return False
        return await persona_ended(self.log, item.job_id, item.persona_id, leader=True)

    async def _cancelled(self, job_id: str) -> bool:
        return await self.cancellations.is_cancelled(job_id)

    async def reapply(self, record: ParkedEvent) -> None:
        stored = await _parked_event(self.log, record)
        if not isinstance(stored.event, PersonaPromptRequested):
            raise ValueError(f"event {record.seq} is not a work item")
        with structlog.contextvars.bound_contextvars(job_id=stored.event.job_id, persona_id=stored.event.persona_id), \
                tracing.consuming("generate persona", stored.headers, stored.event,
                                  **{"promptgen.seq": stored.seq, "promptgen.reapplied": True}):
            await self._handle(_Detached(), stored.event, 1, again=True)

    async def handle(self, msg) -> None:
        stored = stored_message(msg)
        item = stored.event
        if not isinstance(item, PersonaPromptRequested):
            with contextlib.suppress(Exception):  # parking failed: the item comes back later
                # parked two deliveries before the last: a newer generator that takes it late keeps three tries
                await set_aside(msg, stored, WORKERS, self.parked,
                                deliveries=min(NEWER_DELIVERIES, max(1, self.settings.max_deliveries - 2)))
            return
        delivered = msg.metadata.num_delivered
        if delivered > 1:
            self.metrics.work_items_redelivered.inc()
        # A child of the publish that fanned the job out: the outcome events, published inside
        # this span, carry the job's trace on to the projector and the gateway.
        with structlog.contextvars.bound_contextvars(job_id=item.job_id, persona_id=item.persona_id), \
                tracing.consuming("generate persona", stored.headers, item,
                                  **{"promptgen.seq": stored.seq, "promptgen.delivery": delivered}) as span:
            try:
                await self._handle(msg, item, delivered)
            except Exception as exc:  # noqa: BLE001 - decide between redelivery and a visible failure
                tracing.fail(span, exc)
                if delivered >= self.settings.max_deliveries:
                    log.error("work_item_exhausted", error=str(exc), deliveries=delivered)
                    ended = False
                    with contextlib.suppress(Exception):  # another delivery's outcome, stored long ago
                        ended = await persona_ended(self.log, item.job_id, item.persona_id, leader=True)
                    if ended:
                        log.info("work_item_already_done", deliveries=delivered)
                        await acknowledged(msg)
                        return
                    # The client reads this: the error's kind only; its text (a URL, a path) stays in the log.
                    err = LLMError("internal_error", f"generation failed after {delivered} deliveries with an "
                                                     f"internal error ({type(exc).__name__}); the generator's log "
                                                     "has it (work_item_exhausted)")
                    with contextlib.suppress(Exception):
                        await self._fail(item, err, delivered)
                        await msg.ack()
                    return
                log.warning("work_item_retry", error=str(exc), deliveries=delivered)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=min(30, 2**delivered))

    async def _handle(self, msg, item: PersonaPromptRequested, delivered: int, *, again: bool = False) -> None:
        # Only a redelivery, or an item applied again by hand (``again``), can find its persona
        # already ended (a worker died after publishing; the job went on without the parked item).
        if (delivered > 1 or again) and await persona_ended(self.log, item.job_id, item.persona_id):
            log.info("work_item_already_done", deliveries=delivered)
            await acknowledged(msg)
            return
        taken = self.clock()
        if await self._cancelled(item.job_id):
            log.info("work_item_skipped_cancelled")
            await acknowledged(msg)
            return
        if item.deadline <= self.clock():
            await self._expired(msg, item, delivered)
            return
        progress = asyncio.create_task(self.log.publish(
            PersonaProgress(**caused_by(item), job_id=item.job_id, persona_id=item.persona_id,
                            persona_name=item.persona.name, mode=item.mode, attempt=delivered)
        ))
        call = asyncio.create_task(generate_persona_prompt(
            item,
            provider=self.provider,
            max_attempts=self.settings.llm_max_attempts,
            limiter=self.limiter,
            expected_completion_tokens=self.settings.llm_expected_completion_tokens,
            metrics=self.metrics,
        ))
        try:
            # The progress event is stored while the LLM works: it is not on the critical path,
            # and it is always stored before the outcome.
            async with still_working(msg, self.settings.ack_wait_seconds):  # until the outcome is stored
                # The job's deadline ends the call: the job manager ends the job expired then, and
                # this persona with it (nothing of the call is stored).
                deadline = asyncio.timeout((item.deadline - self.clock()).total_seconds())
                try:
                    async with deadline:
                        with self.cancellations.calling(item.job_id, call):
                            try:
                                outcome, _ = await asyncio.gather(call, progress)
                            except asyncio.CancelledError:
                                if not call.cancelled() or _being_cancelled():
                                    raise  # this worker is stopping (or the deadline came): see below
                except TimeoutError:
                    if not deadline.expired():
                        raise
                    log.info("work_item_dropped_expired")
                    self.metrics.persona_finished("expired")
                    await acknowledged(msg)
                    return
                dropped = "cancelled" if call.cancelled() or await self._cancelled(item.job_id) else None
                if dropped is None and await self._ended_meanwhile(item, taken):
                    log.info("work_item_already_done", deliveries=delivered, answered=True)
                    await acknowledged(msg)
                    return
                if dropped is None and (stored := await self._store(outcome)) != "stored":
                    dropped = stored
                if dropped is not None:
                    # The job ended cancelled or expired while its call was out (the job manager
                    # has counted the persona so): nothing of the call is stored.
                    log.info("work_item_dropped", because=dropped, answered=not call.cancelled())
                    self.metrics.persona_finished(dropped)
                    await acknowledged(msg)
                    return
        finally:
            progress.cancel()
            call.cancel()
        error_code = getattr(outcome, "error_code", None)
        self.metrics.persona_finished("completed" if outcome.type == "persona.completed" else "failed", error_code)
        tracing.note(**{"promptgen.outcome": outcome.type, "promptgen.error_code": error_code})
        # The outcome is durable: a lost ack only means a redelivery, which finds it and skips.
        await acknowledged(msg)
        log.info("persona_generated" if outcome.type == "persona.completed" else "persona_failed",
                 outcome=outcome.type, error_code=error_code)
