"""Rebuild every read model from the log into fresh collections, then merge them into the live ones.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

import structlog
from pymongo import ASCENDING

from contracts import subjects
from contracts.events import UnknownEvent
from services.adapters.event_log import StoredEvent
from services.adapters.ports import Collection, EventLogPort, ReadModelsPort
from services.adapters.read_models import STATE, DocumentsRefused, ReadModels
from services.projector.memory_fold import BatchFold
from services.projector.projections import READ_MODELS, Change, coalesce, writes_for
from services.runtime.failures import Unstorable, durably

log = structlog.get_logger()

# Outside the `promptgen.>` stream on purpose: control messages are not events.
CONTROL_SUBJECT = "promptgen_control.projector.rebuild"
INBOX_PREFIX = "_INBOX."  # where NATS clients take their reply subjects (nc.new_inbox())
SUFFIX = "__rebuild"
MERGE_BATCH = 1000  # documents per write of the switch, as the rebuild's inserts

WRITING, SWITCHING = "writing", "switching"  # a rebuild's stages, as its progress reports name them


class Progress(Protocol):
    """Told ``done`` of ``total`` events are stored, and the ``stage`` the rebuild is in."""

    async def __call__(self, done: int, total: int, *, stage: str = WRITING) -> None: ...


async def _no_progress(done: int, total: int, *, stage: str = WRITING) -> None:
    return None


Unusable = Callable[[StoredEvent, str, BaseException | str], Awaitable[None]]


async def _log_unusable(stored: StoredEvent, kind: str, error: BaseException | str) -> None:
    log.error("rebuild_event_unusable", seq=stored.seq, subject=stored.subject, kind=kind, error=str(error))


Folded = tuple[BatchFold, int]  # one batch of the log folded, and the last sequence in it


async def folded_batches(
    event_log: EventLogPort, *, job_retention: timedelta = timedelta(days=7), unusable: Unusable = _log_unusable,
    batch_events: int = 10_000,
) -> AsyncIterator[Folded]:
    """The whole log read and folded in batches of about ``batch_events`` events, each on top of
    the batches before it. An event that does not decode goes to ``unusable`` (one of an
    unknown type is skipped)."""
    fold, count = BatchFold(), 0
    async for batch in event_log.read_batches(subjects.ALL, 1):
        for stored in batch:
            if stored.event is None:
                if not isinstance(stored.error, UnknownEvent):
                    await unusable(stored, "undecodable", str(stored.error))
            else:
                for collection, op in writes_for(stored.event, stored.seq, job_retention):
                    fold.apply(collection, op, stored.seq)
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
) -> int:
    """Fold the whole log into ``target`` (emptied first); returns the last sequence applied,
    stored as the checkpoint with ``log_id`` (the log it belongs to).

    Reading and folding one batch overlaps writing the batch before it (at most two folded
    batches wait, so memory stays bounded whatever the log's size). Each document a batch
    creates is inserted once, with every later change of the batch folded in, in one
    unordered write per collection; changes to documents of earlier batches are sent as they
    are. Progress counts the events whose effects are stored. A document MongoDB cannot store
    goes to ``unusable`` as the event that last wrote it, and the rest are stored."""
    for name in (*READ_MODELS, STATE):
        await discard(target.collection(name))
    # No reader queries rebuilt collections (they are merged into the live ones, which keep their
    # own indexes), and the rebuild's own updates find their documents by _id (no projection
    # updates many documents): so no secondary index, each of which would make every insert and
    # the final drop dearer (bench/results/mongo_ops.txt).
    total = await event_log.last_seq()
    await progress(0, total)
    writer = _BatchWriter(event_log, target, unusable)
    queue: asyncio.Queue[Folded | None] = asyncio.Queue(maxsize=2)

    async def read_and_fold() -> None:
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
                await writer.write(fold)
                await progress(position, max(total, position))
    except ExceptionGroup as failed:  # the caller hears of the failure itself, not of a task group
        if len(failed.exceptions) == 1:
            raise failed.exceptions[0] from None
        raise
    if position:
        await target.save_checkpoint(position, log_id)
    return position


class _BatchWriter:
    """Stores one :class:`BatchFold` in fresh read models, collection by collection: the changes
    to documents of earlier batches first (in log order), then the new documents."""

    def __init__(self, event_log: EventLogPort, target: ReadModelsPort, unusable: Unusable) -> None:
        self.log = event_log
        self.target = target
        self.unusable = unusable

    async def write(self, fold: BatchFold) -> None:
        for name in set(fold.residual) | set(fold.collections):
            await self._apply(name, fold.residual.get(name, []))
            docs = list(fold.collections.get(name, {}).values())
            present = await self._insert(name, docs) if docs else []
            # Created twice in the log (a creation stored again): the copy stored takes this
            # batch's changes of it, the creation among them doing nothing.
            await self._apply(name, fold.replay(name, present))

    async def _apply(self, name: str, changes: list[tuple[int, Change]]) -> None:
        if not changes:
            return
        try:
            await durably(lambda: self.target.apply(name, coalesce([c for _, c in changes])), what="rebuild update")
            return
        except Unstorable:
            pass
        for seq, change in changes:  # one cannot be stored: find which, and store the others
            try:
                await durably(lambda change=change: self.target.apply(name, [change]), what="rebuild update")
            except Unstorable as exc:
                await self._report(seq, exc.cause)

    async def _insert(self, name: str, docs: list[dict]) -> list:
        try:
            return await durably(lambda: self.target.insert_new(name, docs), what="rebuild insert")
        except Unstorable as exc:
            if isinstance(exc.cause, DocumentsRefused):
                for doc, error in exc.cause.refused:
                    await self._report(doc.get("_seq"), error.get("errmsg", str(error)))
                return []
            if len(docs) == 1:
                await self._report(docs[0].get("_seq"), exc.cause)
                return []
        # Refused before it reached the server (a document BSON cannot hold): one by one.
        present: list = []
        for doc in docs:
            present += await self._insert(name, [doc])
        return present

    async def _report(self, seq: int | None, error: BaseException | str) -> None:
        stored = await self.log.at(seq) if seq else None
        if stored is not None:
            await self.unusable(stored, "unstorable", error)
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


async def _by_id(collection: Collection) -> AsyncIterator[dict[str, Any]]:
    """Every document of ``collection`` in ``_id`` order, checked to be the order :func:`_order` says."""
    last: tuple[int, Any] | None = None
    # The hint makes SecantusDB walk its _id index instead of sorting every document in Python
    # (4x faster for 25,000 documents); MongoDB would choose that index anyway.
    async for doc in collection.find({}).sort("_id", ASCENDING).hint([("_id", ASCENDING)]):
        key = _order(doc["_id"])
        if last is not None and key <= last:
            raise ValueError(f"{collection.name}: _id {doc['_id']!r} out of order; the merge would be wrong")
        last = key
        yield doc


async def merge_into(source: ReadModelsPort, live: ReadModelsPort, name: str,
                     walked: Callable[[int], Awaitable[None]], *, batch: int = MERGE_BATCH) -> Counter[str]:
    """Make the live collection ``name`` hold exactly the rebuilt one's documents, walking both in
    ``_id`` order and writing only the differences (insert missing, replace changed, delete extra)
    in unordered writes of up to ``batch``. ``walked`` is told of each ``batch`` of rebuilt
    documents seen. Returns how many documents were inserted, replaced and deleted."""
    rebuilt, current = _by_id(source.collection(name)), _by_id(live.collection(name))
    insert: list[dict[str, Any]] = []
    replace: list[dict[str, Any]] = []
    delete: list[Any] = []
    counts: Counter[str] = Counter()
    seen = 0

    async def flush() -> None:
        nonlocal insert, replace, delete, seen
        if insert or replace or delete:
            await durably(lambda: live.write_differences(name, insert, replace, delete), what="rebuild switch")
            counts.update(inserted=len(insert), replaced=len(replace), deleted=len(delete))
        insert, replace, delete = [], [], []
        await walked(seen)
        seen = 0

    new, old = await anext(rebuilt, None), await anext(current, None)
    while new is not None or old is not None:
        if old is None or (new is not None and _order(new["_id"]) < _order(old["_id"])):
            insert.append(new)
            new, seen = await anext(rebuilt, None), seen + 1
        elif new is None or _order(old["_id"]) < _order(new["_id"]):
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


async def switch_to(source: ReadModelsPort, live: ReadModelsPort, progress: Progress = _no_progress) -> None:
    """Make the live read models equal the rebuilt ones, then drop the rebuilt collections.

    The live collections keep their names, so every reader finds them where it always did; a
    document is replaced whole, so a reader sees either its old or its new version (across
    documents it may see some of each until the switch ends, as while the live fold writes a
    batch). Only the differences are written: a rename would move every document on a server
    that renames by copying (SecantusDB: ``bench/results/mongo_ops.txt``), where reading both
    generations costs a fraction of writing one. The checkpoint comes last, after the read
    models it describes. Progress (stage ``switching``) counts the rebuilt documents merged,
    then those dropped."""
    names = (*READ_MODELS, STATE)
    await live.ensure_indexes()  # a live collection dropped by hand gets its indexes before its documents
    sizes = [await source.collection(name).estimated_document_count() for name in names]  # cheaper than counting
    total, done = 2 * sum(sizes), 0
    await progress(done, total, stage=SWITCHING)

    async def walked(n: int) -> None:
        nonlocal done
        done += n
        await progress(done, total, stage=SWITCHING)

    for name in names:
        counts = await merge_into(source, live, name, walked)
        log.info("rebuild_switched", collection=name, **counts)
    for name, size in zip(names, sizes, strict=True):
        await discard(source.collection(name))
        await walked(size)


async def rebuild_and_switch(
    event_log: EventLogPort, live: ReadModelsPort, progress: Progress = _no_progress, *,
    job_retention: timedelta = timedelta(days=7), unusable: Unusable = _log_unusable, log_id: str | None = None,
    batch_events: int = 10_000,
) -> int:
    """Rebuild every read model into fresh collections beside ``live``, then switch ``live`` to
    them (:func:`switch_to`). A rebuild that fails before the switch leaves the live read models
    as they were, and its collections are dropped. Returns the last sequence applied."""
    target = ReadModels(live.db, suffix=SUFFIX)
    try:
        position = await rebuild_into(event_log, target, progress, job_retention=job_retention,
                                      unusable=unusable, log_id=log_id, batch_events=batch_events)
    except BaseException:
        with contextlib.suppress(Exception):  # the next rebuild drops them first in any case
            for name in (*READ_MODELS, STATE):
                await discard(target.collection(name))
        raise
    await switch_to(target, live, progress)
    return position


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


async def serve_rebuild_requests(event_log: EventLogPort, rebuild: Callable[[Progress], Awaitable[int]]) -> None:
    """Answer rebuild requests: accept at once, then report progress and the end to the
    request's reply inbox."""
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
            await event_log.send(reply_to, json.dumps({"done": done, "total": total, "stage": stage}).encode())

        async with running:
            started = time.monotonic()
            try:
                position = await rebuild(report)
            except Exception as exc:  # noqa: BLE001 - the caller must hear about it
                log.error("rebuild_failed", error=str(exc))
                final = {"finished": True, "error": str(exc)}
            else:
                final = {"finished": True, "position": position, "seconds": round(time.monotonic() - started, 3)}
                log.info("rebuild_finished", **final)
            await event_log.send(reply_to, json.dumps(final).encode())

    async def on_message(msg) -> None:
        # Answer at once and rebuild in the background: the subscription must not block.
        task = asyncio.create_task(on_request(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await event_log.subscribe(CONTROL_SUBJECT, on_message)
