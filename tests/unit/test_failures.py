"""Sorting failures into transient (retry) and permanent (park): pure, no servers."""

from __future__ import annotations

import asyncio

import pytest
from bson.errors import InvalidDocument
from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeout
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DocumentTooLarge,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from contracts.events import UndecodableEvent
from services.runtime.failures import Unstorable, brief, durably, kind_of


def _bulk(*codes: int) -> BulkWriteError:
    return BulkWriteError({"writeErrors": [{"index": i, "code": c, "errmsg": "x"} for i, c in enumerate(codes)]})


@pytest.mark.parametrize("exc,kind", [
    (AutoReconnect("gone"), "transient"),
    (NotPrimaryError("stepped down"), "transient"),
    (ServerSelectionTimeoutError("no server"), "transient"),
    (NatsTimeout(), "transient"),
    (OSError("connection refused"), "transient"),
    (OperationFailure("interrupted", code=11600), "transient"),
    # the server's state, not the write's: waited out, never parked with the checkpoint moving on
    (OperationFailure("not authorized on promptgen to execute command", code=13), "transient"),
    (OperationFailure("Authentication failed.", code=18), "transient"),
    (_bulk(13), "transient"),
    (OperationFailure("out of disk space", code=14031), "transient"),
    (_bulk(189), "transient"),
    (InvalidDocument("key contains NUL"), "permanent"),
    (DocumentTooLarge("17 MB"), "permanent"),
    (OverflowError("8-byte ints"), "permanent"),
    (MaxPayloadError(), "permanent"),
    (UndecodableEvent("not JSON"), "permanent"),
    (_bulk(17420), "permanent"),
    (_bulk(52), "permanent"),
    (_bulk(11000), "unknown"),
    (OperationFailure("who knows", code=99999), "unknown"),
    (RuntimeError("surprise"), "unknown"),
])
def test_failures_are_sorted(exc, kind):
    assert kind_of(exc) == kind


def test_brief_is_one_short_line_whatever_the_error_quotes():
    text = brief(ValueError("doc: " + "x" * 10_000 + "\n more"))
    assert len(text) < 320 and "\n" not in text and text.startswith("ValueError: doc")


async def test_durably_retries_transient_failures_until_they_pass():
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise AutoReconnect("not yet")
        return "stored"

    assert await durably(flaky, what="test", max_wait=0.01) == "stored" and calls == 4


async def test_durably_gives_up_at_once_on_a_permanent_failure_and_after_a_few_on_an_unknown_one():
    calls = {"permanent": 0, "unknown": 0}

    async def permanent() -> None:
        calls["permanent"] += 1
        raise InvalidDocument("NUL in a key")

    async def unknown() -> None:
        calls["unknown"] += 1
        raise RuntimeError("surprise")

    with pytest.raises(Unstorable) as exc:
        await durably(permanent, what="test", max_wait=0.01)
    assert isinstance(exc.value.cause, InvalidDocument) and calls["permanent"] == 1
    with pytest.raises(Unstorable):
        await durably(unknown, what="test", max_wait=0.01)
    assert calls["unknown"] == 5


async def test_durably_lets_a_cancellation_through():
    async def forever() -> None:
        raise AutoReconnect("down")

    task = asyncio.create_task(durably(forever, what="test", max_wait=0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
