"""Headers that tell a browser how little to trust: on every response the gateway sends.

Every response: ``X-Content-Type-Options: nosniff`` (a JSON body is never run as a script or
shown as a page), ``Referrer-Policy: no-referrer`` (job ids in URLs stay here), and
``X-Frame-Options: DENY`` (no other site frames any of it). An HTML page gets a
Content-Security-Policy too: the web UI's allows scripts, styles and connections from this
origin only, so a script that got into the page (an injection) would not run. A route that
needs another policy (the API docs, :mod:`services.gateway.routes.docs`) sets its own.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",  # no inline script, no eval
    "style-src 'self'",
    "img-src 'self' data:",  # the favicon is a data: URL
    "connect-src 'self'",  # fetch and EventSource: this gateway only
    "object-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
])

EVERY_RESPONSE = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in EVERY_RESPONSE.items():
                    headers.setdefault(name, value)
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("content-security-policy", PAGE_POLICY)
            await send(message)

        await self.app(scope, receive, with_headers)
