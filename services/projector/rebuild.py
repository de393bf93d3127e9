"""Rebuild every read model from the log into fresh collections, then switch to them.

A running projector does it itself when asked on ``CONTROL_SUBJECT`` (so no two
writers race); with no projector running, ``promptgen rebuild`` does it alone.
The answer, progress (for the caller's progress bar) and the end go to the
request's reply inbox, one after the other.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Protocol

import structlog

from contracts import subjects
from contracts.events import UnknownEvent
from services.adapters.event_log import StoredEvent
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.adapters.read_models import STATE, DocumentsRefused, ReadModels
from services.projector.memory_fold import BatchFold
from services.projector.projections import READ_MODELS, Change, coalesce, writes_for
from services.runtime.failures import Unstorable, durably

log = structlog.get_logger()

# Outside the `promptgen.>` stream on purpose: control messages are not events.
CONTROL_SUBJECT = "promptgen_control.projector.rebuild"
INBOX_PREFIX = "_INBOX."  # where NATS clients take their reply subjects (nc.new_inbox())
SUFFIX = "__rebuild"

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
        await target.collection(name).drop()
    await target.ensure_indexes()
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
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(read_and_fold())
        while (folded := await queue.get()) is not None:
            fold, position = folded
            await writer.write(fold)
            await progress(position, max(total, position))
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


async def switch_to(source: ReadModels, live: ReadModels) -> None:
    """Replace the live collections by the rebuilt ones."""
    existing = set(await source.db.list_collection_names())
    for name in (*READ_MODELS, STATE):
        src = source.collection(name)
        if src.name in existing:
            await src.rename(live.collection(name).name, dropTarget=True)
        else:
            await live.collection(name).drop()


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
