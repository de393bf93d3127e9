"""An exception no route handled becomes a 500 with the gateway's error body.

Starlette's own answer to it (plain text, from its outermost middleware) would bypass the
security headers and the access log; this one is answered inside them. The exception is
logged once, with its traceback and the request's method and path; the client is told only
that it happened (its text may hold anything). A response already under way (an SSE stream)
cannot become a 500: the exception goes on to the server, which closes the connection.
"""

from __future__ import annotations

import structlog
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.api import ErrorBody

log = structlog.get_logger()

INTERNAL_ERROR = ErrorBody(
    code="internal_error",
    detail="The gateway failed on this request and logged why; retry it, and tell the operator if it fails again",
)


class InternalErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if started:
                raise
            log.exception("unhandled_error", method=scope.get("method"), path=scope.get("path"))
            await JSONResponse(INTERNAL_ERROR.model_dump(exclude_none=True), status_code=500)(scope, receive, send)
