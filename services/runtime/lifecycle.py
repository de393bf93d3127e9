"""Running a service process: stop on SIGTERM / SIGINT, announce readiness."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

Clock = Callable[[], datetime]


class ServiceRefused(Exception):
    """A service that must not run as things stand (a projector runs already): said once, and
    the process exits 2, which its supervisor takes as a refusal and does not restart."""


def utc_now() -> datetime:
    """The production clock (services take a :data:`Clock`, so tests can hold time still)."""
    return datetime.now(UTC)


_STOP_CHECKS: list[Callable[[], bool]] = []  # each says whether this process was told to stop


def stop_requested() -> bool:
    """Whether this process was told to stop: by a signal its stop event heard, or its server."""
    return any(check() for check in _STOP_CHECKS)


def stop_also_when(check: Callable[[], bool]) -> None:
    """Count ``check()`` as this process being told to stop (a server that handles the signals)."""
    if check not in _STOP_CHECKS:
        _STOP_CHECKS.append(check)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so a service can drain and exit cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_also_when(stop.is_set)  # a wait for NATS at start gives up on it (nothing to drain yet)
    return stop


async def cancel_and_wait(task: asyncio.Task, *, every: float = 1.0, attempts: int = 30) -> bool:
    """Cancel ``task`` and wait for it to end, cancelling again while it still runs (on
    Python 3.11 ``asyncio.wait_for``, used throughout nats-py, can swallow a cancellation
    that arrives just as its inner future completes). Returns whether the task ended."""
    for _ in range(attempts):
        if task.done():
            break
        task.cancel()
        await asyncio.wait([task], timeout=every)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: an error on the way out is not worth a warning at exit
    return task.done()


async def keep_going(step: Callable[[], Awaitable[None]], stop: asyncio.Event, *, what: str) -> None:
    """Run ``step`` until ``stop``, again after any failure (a short, growing pause between):
    for a consumer that resumes from its stored position, a failure costs a moment, never a stop."""
    failures = 0
    while not stop.is_set():
        try:
            await step()
            failures = 0
        except Exception as exc:  # noqa: BLE001 - resume from the stored position, never stop
            failures += 1
            structlog.get_logger().warning("resuming", what=what, error=repr(exc)[:300], failures=failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(5.0, 0.1 * 2**failures))


_settle_when_ready = False


def settle_heap_when_ready() -> None:
    """Have :func:`announce_ready` settle the heap (:func:`settle_heap`): set by each service's
    process entry, not by tests that run services inside their own process."""
    global _settle_when_ready
    _settle_when_ready = True


def settle_heap() -> None:
    """Take what start-up built (modules, routes, schemas, clients) out of the cyclic garbage
    collector's sight (``gc.freeze``). A full collection walked all of it with the event loop
    stopped: 100 to 165 ms in a gateway with 1,000 SSE streams, each of them waiting."""
    gc.collect()
    gc.freeze()


def _named_as_ours(_: object, __: str, event: dict) -> dict:
    event.setdefault("logger", "promptgen")
    return event


def announce_ready(**fields: object) -> None:
    """One JSON line saying the service is ready, whatever the log level: the supervisor
    of `promptgen up` (and any orchestrator reading logs) waits for this exact event.
    In a service's own process, start-up is over: its heap is settled first."""
    if _settle_when_ready:
        settle_heap()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(sys.stdout),
        wrapper_class=structlog.BoundLogger,  # not the level-filtering one: this line always goes out
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _named_as_ours,  # every line names its logger (README, Logs)
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    )
    logger.info("service_ready", **fields)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have this process sent ``sig`` when its parent dies (Linux's PR_SET_PDEATHSIG; elsewhere
    nothing). Safe between fork and exec."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)
    except OSError:
        pass
