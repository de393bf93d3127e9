"""One JSON object in a key-value bucket, changed by compare-and-set: what several processes
share (the LLM's rate limits, each tenant's cost controls) without two of them ever writing
over each other's change."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from services.adapters.ports import KeyValue

T = TypeVar("T")


async def read_entry(kv: KeyValue, key: str) -> tuple[dict[str, Any], int]:
    """The object at ``key`` and its revision; ``({}, 0)`` while there is none."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return {}, 0
    return json.loads(entry.value or b"{}"), entry.revision or 0


async def change_entry(kv: KeyValue, key: str, change: Callable[[dict[str, Any]], Awaitable[T]]) -> T:
    """Apply ``change`` (it edits the object in place) and store the result if nobody changed the
    entry meanwhile; else read it again and apply ``change`` again. Returns what ``change`` returned.
    A ``change`` that raises writes nothing."""
    while True:
        state, revision = await read_entry(kv, key)
        result = await change(state)
        payload = json.dumps(state).encode()
        try:
            if revision:
                await kv.update(key, payload, last=revision)
            else:
                await kv.create(key, payload)
            return result
        except KeyWrongLastSequenceError:
            continue  # another process won this round
