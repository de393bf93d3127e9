"""Request bodies are UTF-8 JSON, or a 422 that says why.

FastAPI turns only ``json.JSONDecodeError`` into a validation error; anything
else the parser raises (bytes that are not UTF-8, nesting deeper than Python
recurses, an integer of more than 4,300 digits) becomes a bare 400. Here each is
a ``JSONDecodeError`` with its reason, so the client gets our 422 like for any
other malformed JSON. And the body is decoded as UTF-8 only (RFC 8259), never
guessed as UTF-16 or UTF-32 as ``json.loads`` on bytes would.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"not UTF-8 ({exc.reason} at byte {exc.start})", "", exc.start) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except ValueError as exc:  # e.g. an integer too long to convert
        raise json.JSONDecodeError(str(exc), "", 0) from None


class JSONBodyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JSONBodyRoute(APIRoute):
    """A route whose request parses its body with :func:`parse_json`."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(JSONBodyRequest(request.scope, request.receive))

        return route
