"""Rebuild every read model from the log: fold it into a scratch store on local disk, then
merge that into the live collections.

A running projector does it itself when asked on ``CONTROL_SUBJECT`` (so no two
writers race); with no projector running, ``promptgen rebuild`` does it alone.
The answer, progress (for the caller's progress bar) and the end go to the
request's reply inbox, one after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, Protocol

import structlog
from pymongo import ASCENDING

from contracts import subjects
from services.adapters.event_log import StoredEvent
from services.adapters.ports import Collection, EventLogPort, ReadModelsPort
from services.adapters.read_models import CHECKPOINT_ID, STATE, DocumentsRefused
from services.projector.fold_workers import Folded, FoldWorkers, fold_event
from services.projector.memory_fold import BatchFold
from services.projector.projections import INTERACTIONS, PERSONAS, READ_MODELS, TEMPLATES
from services.projector.scratch import Scratch
from services.runtime.failures import Unstorable, durably
from services.runtime.metrics import Metrics

log = structlog.get_logger()

# What outlives the events that made it: kept by a rebuild of a log whose oldest events aged out.
OUTLIVE_THE_LOG = (TEMPLATES, PERSONAS, INTERACTIONS)

# Outside the `promptgen.>` stream on purpose: control messages are not events.
CONTROL_SUBJECT = "promptgen_control.projector.rebuild"
HEARTBEAT_SECONDS = 5.0  # while a rebuild runs, the caller hears at least this often
SILENCE_SECONDS = 30.0  # a caller that hears nothing this long takes the projector for gone
INBOX_PREFIX = "_INBOX."  # where NATS clients take their reply subjects (nc.new_inbox())
SUFFIX = "__rebuild"  # what earlier versions named the collections they rebuilt into
MERGE_BATCH = 1000  # documents per write of the switch

WRITING, SWITCHING = "writing", "switching"  # a rebuild's stages, as its progress reports name them


class Progress(Protocol):
    """Told ``done`` of ``total`` events are stored, and the ``stage`` the rebuild is in."""

    async def __call__(self, done: int, total: int, *, stage: str = WRITING) -> None: ...


async def _no_progress(done: int, total: int, *, stage: str = WRITING) -> None:
    return None


Unusable = Callable[[StoredEvent, str, BaseException | str], Awaitable[None]]


async def _log_unusable(stored: StoredEvent, kind: str, error: BaseException | str) -> None:
    log.error("rebuild_event_unusable", seq=stored.seq, subject=stored.subject, kind=kind, error=str(error))



async def folded_batches(
    event_log: EventLogPort, *, job_retention: timedelta = timedelta(days=7), unusable: Unusable = _log_unusable,
    batch_events: int = 10_000,
) -> AsyncIterator[Folded]:
    """The whole log read and folded in batches of about ``batch_events`` events, each on top of
    the batches before it. An event that does not decode, or whose writes cannot be made, goes
    to ``unusable`` (one of an unknown type is skipped)."""
    fold, count = BatchFold(), 0
    async for batch in event_log.read_batches(subjects.ALL, 1):
        for stored in batch:
            if (unused := fold_event(fold, stored, job_retention)) is not None:
                await unusable(stored, *unused)
            count += 1
            if count == batch_events:
                yield fold, stored.seq
                fold, count = BatchFold(), 0
        await asyncio.sleep(0)  # decoding is CPU: let the writer hand MongoDB its next batch meanwhile
        position = batch[-1].seq
    if count:
        yield fold, position


async def rebuild_into(
    event_log: EventLogPort,
    target: ReadModelsPort,
    progress: Progress = _no_progress,
    *,
    job_retention: timedelta = timedelta(days=7),
    batch_events: int = 10_000,
    unusable: Unusable = _log_unusable,
    log_id: str | None = None,
    scratch_dir: str | None = None,
    workers: FoldWorkers | None = None,
) -> int:
    """Make the read models ``target`` equal the whole log folded, their checkpoint (with
    ``log_id``, the log it belongs to) last; returns the last sequence applied.

    The log is folded into a :class:`~services.projector.scratch.Scratch` on local disk (in
    ``scratch_dir``, or the system's temporary directory), then merged into ``target``
    (:func:`switch_to`); the scratch is deleted whatever happens. With ``workers`` (of more than
    one process), they read and fold the log (:mod:`~services.projector.fold_workers`); without,
    this process does. A rebuild that fails before
    the switch leaves ``target`` as it was. Progress reports the events folded (stage
    ``writing``), then the documents merged (stage ``switching``). A document that cannot be
    stored goes to ``unusable`` as the event that last wrote it, and the rest are stored."""
    # Collections an earlier version's rebuild wrote beside the live ones, left by a crash.
    for name in await target.db.list_collection_names():
        if name.endswith(SUFFIX):
            await discard(target.db[name])
    # A log whose oldest events aged out (max_age) cannot make again the documents they created:
    # templates, personas and interactions live longer than the log, so those the rebuild lacks
    # are kept, not deleted (a job's views leave long before their events).
    aged = (await event_log.state()).first_seq > 1
    async with Scratch(scratch_dir) as scratch:
        position = await fold_into(event_log, scratch, progress, job_retention=job_retention,
                                   batch_events=batch_events, unusable=unusable, log_id=log_id, workers=workers)
        await switch_to(scratch, target, progress, unusable=unusable, event_log=event_log,
                        keep=OUTLIVE_THE_LOG if aged else ())
    return position


async def fold_into(
    event_log: EventLogPort, scratch: Scratch, progress: Progress = _no_progress, *,
    job_retention: timedelta = timedelta(days=7), batch_events: int = 10_000, unusable: Unusable = _log_unusable,
    log_id: str | None = None, workers: FoldWorkers | None = None,
) -> int:
    """Fold the whole log into ``scratch``, with the checkpoint after it (of the log ``log_id``);
    returns the last sequence folded.

    Reading and folding one batch overlaps storing the batch before it (at most two folded
    batches wait, so memory stays bounded whatever the log's size). Progress counts the events
    whose effects are stored, from the log's first. With ``workers`` of more than one process,
    they read and fold the log as it stands when this begins; this process stores their folds
    in log order."""
    state = await event_log.state()
    total = state.last_seq
    # The bar counts the events of the log as it stands, from its first: a log whose oldest events
    # aged out (max_age) starts at 0, not at where its first sequence is.
    before = max(0, state.first_seq - 1)
    await progress(0, max(0, total - before))
    queue: asyncio.Queue[Folded | None] = asyncio.Queue(maxsize=2)

    async def read_and_fold() -> None:
        if workers is not None and workers.processes > 1:
            folds = workers.folded_batches(state.first_seq, total, job_retention=job_retention,
                                           batch_events=batch_events)
            async with contextlib.aclosing(folds):
                async for fold, last, undecodable in folds:
                    for stored, kind, error in undecodable:
                        await unusable(stored, kind, error)
                    await queue.put((fold, last))
        else:
            async for folded in folded_batches(event_log, job_retention=job_retention, unusable=unusable,
                                               batch_events=batch_events):
                await queue.put(folded)
        await queue.put(None)

    position = 0
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(read_and_fold())
            while (folded := await queue.get()) is not None:
                fold, position = folded
                for seq, error in await scratch.write(fold):
                    await _report(event_log, unusable, seq, error)
                await progress(position - before, max(total, position) - before)
    except ExceptionGroup as failed:  # the caller hears of the failure itself, not of a task group
        if len(failed.exceptions) == 1:
            raise failed.exceptions[0] from None
        raise
    if position:
        await scratch.put(STATE, [{"_id": CHECKPOINT_ID, "seq": position,
                                   **({"log_id": log_id} if log_id is not None else {})}])
    return position


async def _report(event_log: EventLogPort | None, unusable: Unusable, seq: int | None,
                  error: BaseException | str) -> None:
    """Tell ``unusable`` of the event that last wrote a document that cannot be stored."""
    stored = await event_log.at(seq) if seq and event_log is not None else None
    if stored is not None:
        await unusable(stored, "unstorable", error)
    else:
        log.error("rebuild_document_unstorable", seq=seq, error=str(error))


async def discard(collection: Collection) -> None:
    """Drop ``collection``, emptied first: a server that drops row by row in one transaction
    (SecantusDB) deletes in chunks several times faster (bench/results/mongo_ops.txt)."""
    await collection.delete_many({})
    await collection.drop()


def _order(_id: Any) -> tuple[int, Any]:
    """Where MongoDB sorts an ``_id`` (numbers before strings): the read models' are strings."""
    if isinstance(_id, str):
        return 1, _id
    if isinstance(_id, int | float) and not isinstance(_id, bool):
        return 0, _id
    raise ValueError(f"a rebuild cannot merge a document whose _id is not a string or a number: {_id!r}")


async def _in_order(name: str, docs: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """``docs``, checked to come in the ``_id`` order :func:`_order` says."""
    last: tuple[int, Any] | None = None
    async for doc in docs:
        key = _order(doc["_id"])
        if last is not None and key <= last:
            raise ValueError(f"{name}: _id {doc['_id']!r} out of order; the merge would be wrong")
        last = key
        yield doc


def _by_id(collection: Collection) -> AsyncIterator[dict[str, Any]]:
    """Every document of ``collection`` in ``_id`` order."""
    # The hint makes SecantusDB walk its _id index instead of sorting every document in Python
    # (4x faster for 25,000 documents); MongoDB would choose that index anyway.
    return collection.find({}).sort("_id", ASCENDING).hint([("_id", ASCENDING)])


async def merge_into(source: Scratch, live: ReadModelsPort, name: str,
                     walked: Callable[[int], Awaitable[None]], *, batch: int = MERGE_BATCH,
                     refused: Callable[[int | None, str], Awaitable[None]] | None = None,
                     keep: bool = False) -> Counter[str]:
    """Make the live collection ``name`` hold exactly the rebuilt one's documents, walking both in
    ``_id`` order and writing only the differences (insert missing, replace changed, delete extra;
    ``keep``: extra documents are kept) in unordered writes of up to ``batch``. ``walked`` is told
    of each ``batch`` of rebuilt documents seen; ``refused`` of each rebuilt document MongoDB will
    not store (by the sequence that last wrote it), the others being stored. Returns how many
    documents were inserted, replaced and deleted."""
    rebuilt = _in_order(name, source.documents(name))
    current = _in_order(name, _by_id(live.collection(name)))
    insert: list[dict[str, Any]] = []
    replace: list[dict[str, Any]] = []
    delete: list[Any] = []
    counts: Counter[str] = Counter()
    seen = 0

    async def flush() -> None:
        nonlocal insert, replace, delete, seen
        if insert or replace or delete:
            try:
                await durably(lambda: live.write_differences(name, insert, replace, delete), what="rebuild switch")
                lost: list[tuple[dict[str, Any], dict[str, Any]]] = []
            except Unstorable as exc:
                if not isinstance(exc.cause, DocumentsRefused):
                    raise
                lost = exc.cause.refused
            by_doc = {id(doc): error for doc, error in lost}
            counts.update(inserted=sum(id(d) not in by_doc for d in insert), deleted=len(delete), refused=len(lost),
                          replaced=sum(id(d) not in by_doc for d in replace))
            if refused is not None:
                for doc, error in lost:
                    await refused(doc.get("_seq"), error.get("errmsg", str(error)))
        insert, replace, delete = [], [], []
        await walked(seen)
        seen = 0

    new, old = await anext(rebuilt, None), await anext(current, None)
    while new is not None or old is not None:
        if old is None or (new is not None and _order(new["_id"]) < _order(old["_id"])):
            insert.append(new)
            new, seen = await anext(rebuilt, None), seen + 1
        elif new is None or _order(old["_id"]) < _order(new["_id"]):
            if not keep:
                delete.append(old["_id"])
            old = await anext(current, None)
        else:
            if new != old:
                replace.append(new)
            new, old, seen = await anext(rebuilt, None), await anext(current, None), seen + 1
        if seen >= batch or len(insert) + len(replace) + len(delete) >= batch:
            await flush()
    await flush()
    return +counts  # those not zero


async def switch_to(source: Scratch, live: ReadModelsPort, progress: Progress = _no_progress, *,
                    unusable: Unusable = _log_unusable, event_log: EventLogPort | None = None,
                    keep: Iterable[str] = ()) -> None:
    """Make the live read models equal the rebuilt ones.

    The live collections keep their names and indexes, so every reader finds them where it
    always did; a document is replaced whole, so a reader sees either its old or its new version
    (across documents it may see some of each until the switch ends, as while the live fold
    writes a batch). Only the differences are written: a rename would move every document on a
    server that renames by copying (SecantusDB: ``bench/results/mongo_ops.txt``), where reading
    the live generation costs a fraction of writing one. The checkpoint comes last, after the
    read models it describes. Progress (stage ``switching``) counts the rebuilt documents
    merged; a rebuilt document MongoDB refuses goes to ``unusable`` as the event (of
    ``event_log``) that last wrote it. A live document of a collection in ``keep`` that the
    rebuild did not make stays."""
    names, kept = (*READ_MODELS, STATE), set(keep)
    await live.ensure_indexes()  # a live collection dropped by hand gets its indexes before its documents
    sizes = [await source.count(name) for name in names]
    total, done = sum(sizes), 0
    await progress(done, total, stage=SWITCHING)

    async def walked(n: int) -> None:
        nonlocal done
        done += n
        await progress(done, total, stage=SWITCHING)

    async def refused(seq: int | None, error: str) -> None:
        await _report(event_log, unusable, seq, error)

    for name in names:
        counts = await merge_into(source, live, name, walked, refused=refused, keep=name in kept)
        log.info("rebuild_switched", collection=name, **counts)


def _refusal(msg) -> str | None:
    """Why a rebuild request is refused, or None. Progress goes to the request's reply inbox
    and nowhere else: a subject chosen by the caller could be the event log itself."""
    try:
        request = json.loads(msg.data or b"{}")
    except ValueError:
        return "the request is not JSON"
    if isinstance(request, dict) and "progress_subject" in request:
        return "progress goes to the request's reply inbox; 'progress_subject' is not accepted"
    return None


async def serve_rebuild_requests(event_log: EventLogPort, rebuild: Callable[[Progress], Awaitable[int]], *,
                                 metrics: Metrics | None = None) -> Callable[[], Awaitable[None]]:
    """Answer rebuild requests: accept at once, then report progress and the end to the
    request's reply inbox (and to ``metrics``: running, progress by stage, outcome, time).

    Returns what stops a rebuild under way, telling its caller so: to be awaited while the
    connection to NATS is still open (the service's shutdown, before it closes it)."""
    metrics = metrics or Metrics()
    running = asyncio.Lock()
    tasks: set[asyncio.Task] = set()

    async def on_request(msg) -> None:
        reply_to = msg.reply or ""
        if not reply_to.startswith(INBOX_PREFIX):
            # Nobody to report to, or a reply subject that is not an inbox (it could be
            # `promptgen.>`, and what we published there would be stored as an event).
            log.warning("rebuild_request_ignored", reason="reply is not an inbox", reply=reply_to[:200])
            return
        refusal = "a rebuild is already running" if running.locked() else _refusal(msg)
        if refusal:
            await msg.respond(json.dumps({"accepted": False, "error": refusal}).encode())
            return
        await msg.respond(json.dumps({"accepted": True}).encode())

        async def report(done: int, total: int, *, stage: str = WRITING) -> None:
            metrics.rebuild_progress.labels(stage).set(done / total if total else 1.0)
            await event_log.send(reply_to, json.dumps({"done": done, "total": total, "stage": stage}).encode())

        async def beat() -> None:  # the caller knows the projector is there between reports
            while True:
                await asyncio.sleep(HEARTBEAT_SECONDS)
                with contextlib.suppress(Exception):
                    await event_log.send(reply_to, json.dumps({"alive": True}).encode())

        async with running:
            started = time.monotonic()
            metrics.rebuild_running.set(1)
            for stage in (WRITING, SWITCHING):
                metrics.rebuild_progress.labels(stage).set(0)
            beating = asyncio.create_task(beat())
            try:
                position = await rebuild(report)
            except asyncio.CancelledError:  # the projector is stopping: the caller hears that much
                log.warning("rebuild_cancelled")
                metrics.rebuilds.labels("cancelled").inc()
                with contextlib.suppress(Exception):
                    await asyncio.shield(event_log.send(reply_to, json.dumps(
                        {"finished": True, "error": "the projector stopped before the rebuild ended: "
                                                    "ask for it again"}).encode()))
                raise
            except Exception as exc:  # noqa: BLE001 - the caller must hear about it
                why = str(exc) or type(exc).__name__  # some say nothing (a bare TimeoutError)
                log.error("rebuild_failed", error=why)
                final = {"finished": True, "error": why}
                metrics.rebuilds.labels("failed").inc()
            else:
                final = {"finished": True, "position": position, "seconds": round(time.monotonic() - started, 3)}
                log.info("rebuild_finished", **final)
                metrics.rebuilds.labels("completed").inc()
            finally:
                beating.cancel()
                metrics.rebuild_running.set(0)
                metrics.rebuild_duration.observe(time.monotonic() - started)
            await event_log.send(reply_to, json.dumps(final).encode())

    async def on_message(msg) -> None:
        # Answer at once and rebuild in the background: the subscription must not block.
        task = asyncio.create_task(on_request(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await event_log.subscribe(CONTROL_SUBJECT, on_message)

    async def stop() -> None:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return stop
