"""HEAD answered as GET without its body, on every route but a job's SSE stream.

A load balancer's probe, ``curl -I`` or a link checker asks HEAD. FastAPI answers HEAD only where
a route says so, so every other GET route answered 405. Here a HEAD request runs as the GET it
stands for (the same status, headers and ``Content-Length``), and nothing of the body is sent,
whatever server runs the app. A job's SSE stream stays GET only (a 405 to HEAD): it never ends by
itself, and its messages are written past this chain. Not in the OpenAPI document: HEAD is GET
without its body.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

STREAMS = "/scenario/v2/prompt-generation-status/"


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or scope["path"].startswith(STREAMS):
            await self.app(scope, receive, send)
            return
        ended = False

        async def head_only(message: Message) -> None:
            nonlocal ended
            if message["type"] == "http.response.body":
                if ended or message.get("more_body", False):
                    return  # a streamed body's parts: none goes out
                ended = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, head_only)
        finally:
            if "route" in inner:  # what the router matched, for the access line and its series
                scope["route"] = inner["route"]
