"""A rebuild's reading and folding of the log, spread over worker processes.

One process reads and folds about 10,000 events a second, most of it in nats-py (some 40 µs a
message, whichever way it is read) and in decoding each event. Batches of the log fold on their
own (a :class:`BatchFold` holds what its events did; the scratch applies the folds in log order),
so each worker process reads one range of sequences (pulled a thousand events at a time, so
little past the range is sent), folds it and hands the fold back, while this process stores the ranges before it, in
log order, as they come. At most ``processes + 1`` ranges are read ahead; with those the
rebuild's queue holds and the one being stored, at most ``processes + 5`` folds are held at
once: memory stays bounded whatever the log's size.

The workers live for one rebuild. They are ``spawn``-ed (fresh interpreters: nothing of this
process's threads, event loop or connections) and each connects to NATS with the projector's
settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta

import structlog

from contracts import subjects
from contracts.events import UnknownEvent
from services.adapters.event_log import (
    EventLog,
    NatsAccess,
    StoredEvent,
    connect_nats,
    stored_event,
    stored_message,
)
from services.projector.memory_fold import BatchFold
from services.projector.projections import writes_for
from services.runtime.lifecycle import die_with_parent
from services.runtime.settings import Settings

log = structlog.get_logger()
_ALONE = "PROMPTGEN_REBUILD_PROCESSES=1 rebuilds in the projector alone"

# An event a rebuild cannot use: what stored_event() takes again, then its kind and why
Undecodable = tuple[int, datetime, str, bytes, dict[str, str], str, str]
Folded = tuple[BatchFold, int]  # one batch of the log folded, and the last sequence in it


def fold_event(fold: BatchFold, stored: StoredEvent, job_retention: timedelta) -> tuple[str, str] | None:
    """Fold ``stored`` into ``fold``; or why it cannot be used, as (kind, error), for the rebuild
    to report and park as the live fold does: one that does not decode ("undecodable"; one of a
    type this code does not know is skipped), one whose writes cannot be made ("unstorable": a
    date past the calendar's end, a time without its zone). One event never fails a rebuild."""
    if stored.event is None:
        return None if isinstance(stored.error, UnknownEvent) else ("undecodable", str(stored.error))
    try:
        writes = writes_for(stored.event, stored.seq, job_retention)
        for collection, change in writes:
            fold.apply(collection, change, stored.seq)
    except Exception as exc:  # noqa: BLE001 - reported with the event; the rest is rebuilt
        return "unstorable", f"{type(exc).__name__}: {exc}"
    return None


class WorkersFailed(RuntimeError):
    """A worker process could not start (NATS unreachable from it), died (killed, out of
    memory), could not read or fold its range, or took longer than a range can take."""


RANGE_DEADLINE_SECONDS = 300  # one range takes about a second: a worker this late is stuck


class FoldWorkers:
    """``processes`` worker processes that read and fold ranges of the log for one rebuild;
    each gives up connecting to NATS after ``connect_timeout`` seconds (this process has just
    reached it), and a range not folded within ``deadline`` seconds fails the rebuild."""

    def __init__(self, settings: Settings, processes: int, *, connect_timeout: float = 10,
                 deadline: float = RANGE_DEADLINE_SECONDS) -> None:
        if processes < 1:
            raise ValueError("a rebuild needs at least one process to read the log")
        self.settings = settings
        self.processes = processes
        self.connect_timeout = connect_timeout
        self.deadline = deadline

    async def folded_batches(self, first: int, last: int, *, job_retention: timedelta, batch_events: int,
                             ) -> AsyncIterator[tuple[BatchFold, int, list[StoredEvent]]]:
        """The events ``first`` to ``last`` folded ``batch_events`` sequences at a time, in log
        order: each fold, the last sequence in it and the events in it that do not decode. A
        range that holds no event (its events deleted) yields nothing."""
        loop = asyncio.get_running_loop()
        starts = iter(range(max(1, first), last + 1, batch_events))
        pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker,
                                   initargs=(self.settings, self.connect_timeout, os.getpid()))
        ahead: deque[tuple[int, int, asyncio.Future[tuple[BatchFold, int, list[Undecodable]]]]] = deque()

        def read_ahead() -> None:
            if (start := next(starts, None)) is not None:
                end = min(start + batch_events - 1, last)
                ahead.append((start, end, loop.run_in_executor(pool, _fold_range, start, end, job_retention)))

        log.info("rebuild_fold_workers", processes=self.processes, first=first, last=last)
        finished = False
        try:
            for _ in range(self.processes + 1):
                read_ahead()
            while ahead:
                start, end, folding = ahead.popleft()
                try:
                    fold, position, undecodable = await asyncio.wait_for(folding, self.deadline)
                except BrokenProcessPool as exc:
                    raise WorkersFailed(f"a rebuild worker process stopped or could not start, the range {start} "
                                        f"to {end} of the log unread ({exc}); its log says why. {_ALONE}") from None
                except TimeoutError:
                    raise WorkersFailed(f"the range {start} to {end} of the log was not folded within "
                                        f"{self.deadline:g} s. {_ALONE}") from None
                except Exception as exc:  # raised in the worker: said with its range
                    raise WorkersFailed(f"reading or folding the range {start} to {end} of the log failed: "
                                        f"{type(exc).__name__}: {exc}") from exc
                read_ahead()
                if position:
                    yield fold, position, [(stored_event(*each[:5]), *each[5:]) for each in undecodable]
            finished = True
        finally:
            for _, _, waiting in ahead:
                waiting.cancel()
            if not finished:  # failed or stopped: what the workers still read is of no use
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)


# -- in a worker process ----------------------------------------------------------------------

_worker: tuple[asyncio.AbstractEventLoop, EventLog] | None = None


def _start_worker(settings: Settings, connect_timeout: float, parent: int) -> None:
    """Connect this worker to NATS, once for all the ranges it reads. It dies with the projector
    (killed, it could not shut its pool down): left behind, it would hold the projector's output."""
    global _worker
    from services.runtime.logs import configure_logging

    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:  # the projector died before that took hold
        os._exit(1)

    configure_logging("projector", settings.log_level)
    loop = asyncio.new_event_loop()
    connecting = connect_nats(settings.nats_url, "promptgen-rebuild-reader", access=NatsAccess.from_settings(settings),
                              connect_timeout=connect_timeout)
    # nats-py itself keeps trying a server that refuses the connection: bounded here
    nc = loop.run_until_complete(asyncio.wait_for(connecting, connect_timeout))
    _worker = loop, EventLog(nc, settings)


def _fold_range(first: int, last: int, job_retention: timedelta) -> tuple[BatchFold, int, list[Undecodable]]:
    if _worker is None:
        raise RuntimeError("the rebuild's worker process did not start")
    loop, event_log = _worker
    return loop.run_until_complete(_read_and_fold(event_log, first, last, job_retention))


async def _read_and_fold(event_log: EventLog, first: int, last: int,
                         job_retention: timedelta) -> tuple[BatchFold, int, list[Undecodable]]:
    """Fold the events ``first`` to ``last``. A pull that ends before ``last`` (the server said
    it had no more) is followed by another from where it ended, until one brings nothing (the
    log ends there, or the rest of the range was deleted) or an event past the range."""
    fold, position, undecodable = BatchFold(), 0, []
    start = first
    while start <= last:
        folded = False
        async with contextlib.aclosing(event_log.pull(subjects.ALL, start, last - start + 1)) as batches:
            async for msgs in batches:
                for msg in msgs:
                    stored = stored_message(msg)
                    if stored.seq > last:  # the rest of the range was deleted: the next range's
                        return fold, position, undecodable
                    if (unused := fold_event(fold, stored, job_retention)) is not None:
                        undecodable.append((stored.seq, stored.time, stored.subject, stored.data,
                                            dict(stored.headers), *unused))
                    position, folded = stored.seq, True
        if not folded:
            break
        start = position + 1
    return fold, position, undecodable
