"""Refuse a request body over the limit before anything reads it all.

A declared ``Content-Length`` over the limit is answered 413 before the app runs,
so no endpoint (one that ignores its body included) acts on the request. A
chunked body is counted as it arrives: once past the limit, reading stops, the
app's own answer is dropped and 413 goes out instead. At most ``max_bytes`` (plus
one chunk) is ever held. (Starlette's ``RequestBodyLimitMiddleware`` checks the
declared length only when the app reads the body, after an endpoint that does
not read it has already acted.)
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.api import ErrorBody


class _BodyTooLarge(Exception):
    """Raised to the app from ``receive``: stop reading."""


def declared_length(value: str | None) -> int | None:
    """A Content-Length header's value, if it is one (ASCII digits: int() takes "²" too)."""
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(Headers(scope=scope).get("content-length"))
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        overflowed = started = False

        async def counted() -> Message:
            nonlocal received, overflowed
            if overflowed:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    overflowed = True
                    raise _BodyTooLarge
            return message

        async def unless_overflowed(message: Message) -> None:
            nonlocal started
            if overflowed:  # whatever the app makes of a body it could not read: ours goes out instead
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, unless_overflowed)
        except _BodyTooLarge:
            pass
        if overflowed and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = ErrorBody(
            detail=f"The request body is larger than this server accepts ({self.max_bytes} bytes)",
            code="body_too_large", field="body",
        )
        # No "Connection: close": the server would close with unread bytes and the kernel answer them
        # with a reset, which can reach the client before this response. Kept open, uvicorn drops
        # the rest of the body as it arrives, without holding it.
        response = JSONResponse(body.model_dump(exclude_none=True), status_code=413)
        await response(scope, receive, send)
