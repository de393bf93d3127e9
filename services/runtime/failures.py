"""Is a failure worth retrying? The rule every consumer keeps (DESIGN.md §7).

* **transient**: the server is unreachable, a timeout, a primary stepping down, a write
  the server says to retry. Wait and try again, for as long as it takes.
* **permanent**: the same input will fail the same way again: bytes that do not decode,
  a document MongoDB cannot store (invalid keys, too large, too deep, an integer out of
  range), a write error the server will repeat. Park the event and move on.
* **unknown**: anything else. Tried a few times like a transient failure, then parked,
  so a surprise can neither stop a consumer nor be dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import structlog
from bson.errors import BSONError
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WaitQueueTimeoutError,
    WriteConcernError,
)
from tenacity import AsyncRetrying, RetryCallState, wait_exponential_jitter

log = structlog.get_logger()

Kind = Literal["transient", "permanent", "unknown"]
T = TypeVar("T")

# Server error codes that say "not now" rather than "never": interrupted, stepping down,
# not primary, exceeded a time limit, write conflict, lock timeout; and the server's state rather
# than the write's: unauthorized and authentication failed (a user being made again, credentials
# rotated), out of disk space. Waited out, not parked: a parked write's effect would be missing
# while the checkpoint moved past it.
TRANSIENT_CODES = frozenset({6, 7, 13, 18, 24, 46, 50, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435,
                             13436, 14031})
# Codes a write gets for its content: bad value, failed to parse, type mismatch, overflow,
# $-prefixed or dotted or empty field names, document too large, too deep.
PERMANENT_CODES = frozenset({2, 9, 14, 15, 17, 22, 52, 55, 56, 57, 10334, 15956, 16755, 17280, 17419, 17420})
UNKNOWN_ATTEMPTS = 5


def brief(exc: BaseException, limit: int = 300) -> str:
    """An error as one short line: a failed write's message can quote a whole document."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit] + "…"


def _codes(exc: PyMongoError) -> set[int]:
    if isinstance(exc, BulkWriteError):
        details = exc.details or {}
        codes = {e.get("code") for e in details.get("writeErrors", [])}
        if details.get("writeConcernErrors"):
            codes.add(64)  # write concern failed: the write itself may stand; retry
        return {c for c in codes if isinstance(c, int)}
    code = getattr(exc, "code", None)
    return {code} if isinstance(code, int) else set()


def kind_of(exc: BaseException) -> Kind:
    if isinstance(exc, (ConnectionFailure, WaitQueueTimeoutError, WriteConcernError, ExecutionTimeout)):
        return "transient"
    if isinstance(exc, (DocumentTooLarge, BSONError, OverflowError, RecursionError, MaxPayloadError)):
        return "permanent"
    if isinstance(exc, OperationFailure):
        if exc.has_error_label("RetryableWriteError") or exc.has_error_label("TransientTransactionError"):
            return "transient"
        codes = _codes(exc)
        if codes and codes <= TRANSIENT_CODES | {64}:
            return "transient"
        if codes & PERMANENT_CODES:
            return "permanent"
        return "unknown"
    if isinstance(exc, PyMongoError):
        return "unknown"
    if isinstance(exc, (NatsError, OSError, asyncio.TimeoutError)):
        return "transient"
    if isinstance(exc, (ValueError, TypeError, LookupError)):  # our own code met input it cannot use
        return "permanent"
    return "unknown"


class Unstorable(Exception):
    """A permanent failure (or one that stayed unexplained): the cause is ``__cause__``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(brief(cause))
        self.cause = cause


def _worth_retrying(state: RetryCallState) -> bool:
    if state.outcome is None or not state.outcome.failed:
        return False
    exc = state.outcome.exception()
    if exc is None or isinstance(exc, asyncio.CancelledError):
        return False
    kind = kind_of(exc)
    return kind == "transient" or (kind == "unknown" and state.attempt_number < UNKNOWN_ATTEMPTS)


def _before_sleep(what: str) -> Callable[[RetryCallState], None]:
    def say(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("retrying", what=what, attempt=state.attempt_number,
                    error=brief(exc) if exc else None, kind=kind_of(exc) if exc else None)

    return say


async def durably(call: Callable[[], Awaitable[T]], *, what: str, max_wait: float = 5.0) -> T:
    """``call()``, retried while its failures are transient (forever) or unexplained (a few
    times); a permanent failure raises :class:`Unstorable` at once."""
    retrying = AsyncRetrying(
        retry=_worth_retrying,
        wait=wait_exponential_jitter(multiplier=0.05, max=max_wait, jitter=0.1),
        before_sleep=_before_sleep(what),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await call()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise Unstorable(exc) from exc
    raise AssertionError("unreachable")
