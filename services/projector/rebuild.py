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
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog

from contracts import subjects
from contracts.events import UnknownEvent
from services.adapters.event_log import StoredEvent
from services.adapters.ports import EventLogPort
from services.adapters.read_models import STATE, ReadModels
from services.projector.memory_fold import MemoryFold
from services.projector.projections import READ_MODELS, writes_for
from services.runtime.failures import Unstorable, durably

log = structlog.get_logger()

# Outside the `promptgen.>` stream on purpose: control messages are not events.
CONTROL_SUBJECT = "promptgen_control.projector.rebuild"
INBOX_PREFIX = "_INBOX."  # where NATS clients take their reply subjects (nc.new_inbox())
SUFFIX = "__rebuild"

Progress = Callable[[int, int], Awaitable[None]]


async def _no_progress(done: int, total: int) -> None:
    return None


Unusable = Callable[[StoredEvent, str, BaseException | str], Awaitable[None]]


async def _log_unusable(stored: StoredEvent, kind: str, error: BaseException | str) -> None:
    log.error("rebuild_event_unusable", seq=stored.seq, subject=stored.subject, kind=kind, error=str(error))


async def fold_log(
    event_log: EventLogPort, progress: Progress = _no_progress, *, job_retention: timedelta = timedelta(days=7),
    unusable: Unusable = _log_unusable,
) -> tuple[MemoryFold, int]:
    """Fold the whole log in memory (the same projections); returns the fold and its position.
    An event that does not decode goes to ``unusable`` (one of an unknown type is skipped)."""
    fold = MemoryFold()
    total = await event_log.last_seq()
    position = 0
    await progress(0, total)
    async for batch in event_log.read_batches(subjects.ALL, 1):
        for stored in batch:
            if stored.event is None:
                if not isinstance(stored.error, UnknownEvent):
                    await unusable(stored, "undecodable", str(stored.error))
                continue
            for collection, op in writes_for(stored.event, stored.seq, job_retention):
                fold.apply(collection, op)
        position = batch[-1].seq
        await progress(position, max(total, position))
    return fold, position


async def rebuild_into(
    event_log: EventLogPort,
    target: ReadModels,
    progress: Progress = _no_progress,
    *,
    job_retention: timedelta = timedelta(days=7),
    insert_batch: int = 1000,
    unusable: Unusable = _log_unusable,
    log_id: str | None = None,
) -> int:
    """Fold the whole log into ``target`` (emptied first); returns the last sequence applied,
    stored as the checkpoint with ``log_id`` (the log it belongs to).

    The fold runs in memory and each resulting document is inserted once: far
    fewer writes than replaying every update. A document MongoDB cannot store goes to
    ``unusable`` as the event that last wrote it, and the rest are stored."""
    for name in (*READ_MODELS, STATE):
        await target.collection(name).drop()
    await target.ensure_indexes()
    fold, position = await fold_log(event_log, progress, job_retention=job_retention, unusable=unusable)
    for name, docs in fold.collections.items():
        values = list(docs.values())
        for i in range(0, len(values), insert_batch):
            await _insert(event_log, target.collection(name), values[i : i + insert_batch], unusable)
    if position:
        await target.save_checkpoint(position, log_id)
    return position


async def _insert(event_log: EventLogPort, collection, docs: list[dict], unusable: Unusable) -> None:
    try:
        await durably(lambda: collection.insert_many(docs, ordered=False), what="rebuild insert")
        return
    except Unstorable as exc:
        if len(docs) == 1:
            stored = await event_log.at(docs[0]["_seq"])
            if stored is not None:
                await unusable(stored, "unstorable", exc.cause)
            return
    # Some document of the batch cannot be stored: insert one by one (a duplicate key is one
    # already inserted by the batch's unordered attempt) to find which.
    for doc in docs:
        if await collection.count_documents({"_id": doc["_id"]}, limit=1) == 0:
            await _insert(event_log, collection, [doc], unusable)


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

        async def report(done: int, total: int) -> None:
            await event_log.send(reply_to, json.dumps({"done": done, "total": total}).encode())

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
