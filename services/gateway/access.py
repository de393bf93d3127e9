"""One access log line and the HTTP series for every request, by route *template*.

The template (``/scenario/v2/job-status/{job_id}``), never the raw path: a label per
job id would grow without end. FastAPI's router puts the matched route in the scope, so
this outermost middleware reads it once the request is answered; a request no route
matched is ``<unmatched>`` (still one series).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.runtime.metrics import Metrics

log = structlog.get_logger("promptgen.access")

UNMATCHED = "<unmatched>"
UNREAD = "<unread>"  # the route (and method) of a request the server refused before its head was read whole
# Set by the server's protocol (services.gateway.http_head) in a request's scope extensions: the
# status it answered with itself (a body that did not come in time), the app's answer dropped.
ANSWERED = "promptgen.answered"


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return str(route.path)
    if scope.get("path", "").startswith("/static/"):
        return "/static/{path}"  # the mounted files: one series for all of them
    return UNMATCHED


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what a request that raised before answering amounts to

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # a 408 the server sent for a body that did not come in time, the app's answer dropped
            status = scope.get("extensions", {}).get(ANSWERED, status)
            self._record(scope, status, time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        record_answer(scope.get("app"), method=scope["method"], route=route_template(scope), path=scope.get("path"),
                      status=status, seconds=seconds, client=scope.get("client"))


def record_answer(app: Any, *, method: str, route: str, path: str | None, status: int, seconds: float | None,
                  client: Any, **fields: Any) -> None:
    """One answer in the HTTP series of ``app``'s gateway (none before it has started) and the
    access log: the app's, or one the server gave itself to a request whose head it refused
    (``route`` ``<unread>``, no duration)."""
    gateway = getattr(getattr(app, "state", None), "gateway", None)
    metrics: Metrics | None = gateway.metrics if gateway is not None else None
    if metrics is not None:
        metrics.http_requests.labels(method=method, route=route, status=str(status)).inc()
        if seconds is not None:
            metrics.http_duration.labels(method=method, route=route).observe(seconds)
    log.info("http_request", method=method, route=route, path=path, status=status,
             duration_ms=round(seconds * 1000, 1) if seconds is not None else None,
             client=f"{client[0]}:{client[1]}" if client else None, **fields)
