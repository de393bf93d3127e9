"""A small SSE reader for tests: reads a stream the way a browser's EventSource does."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class SseMessage:
    id: str | None
    data: dict
    event: str | None = None


@dataclass
class SseStream:
    status: int
    headers: httpx.Headers
    messages: list[SseMessage] = field(default_factory=list)
    comments: int = 0
    retry_ms: int | None = None


async def read_sse(
    client: httpx.AsyncClient,
    path: str,
    *,
    headers: dict | None = None,
    stop_after: int | None = None,
    until: Callable[[list[SseMessage]], bool] | None = None,
) -> SseStream:
    """Read until the server ends the stream, or until ``stop_after`` messages or
    ``until(messages)`` holds (then disconnect, as a closed browser tab does)."""
    async with client.stream("GET", path, headers=headers or {}) as resp:
        out = SseStream(status=resp.status_code, headers=resp.headers)
        if resp.status_code != 200:
            await resp.aread()
            return out
        ident, data, event = None, [], None
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                out.comments += 1
            elif line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("retry:"):
                out.retry_ms = int(line[6:].strip())
            elif line == "" and data:
                out.messages.append(SseMessage(ident, json.loads("\n".join(data)), event))
                ident, data, event = None, [], None
                if stop_after is not None and len(out.messages) >= stop_after:
                    break
                if until is not None and until(out.messages):
                    break
        return out
