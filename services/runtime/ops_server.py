"""The small HTTP port of a worker process (generator, projector; a gateway sharing its port with
others has one too): `/metrics`, `/livez`, `/readyz` and `/healthz` (liveness), for Prometheus
and an orchestrator's probes.

A plain ``asyncio`` server rather than a second uvicorn: uvicorn's server takes over the
process's signal handlers, and these four GETs need no framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import structlog

from services.runtime.health import Health
from services.runtime.metrics import CONTENT_TYPE, Metrics

log = structlog.get_logger()

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class OpsServer:
    def __init__(self, metrics: Metrics, health: Health, *,
                 before_scrape: Callable[[], Awaitable[object]] | None = None) -> None:
        self.metrics = metrics
        self.before_scrape = before_scrape  # refreshes gauges that would otherwise go stale
        self.health = health
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        self.server = await asyncio.start_server(self._serve, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            if self.before_scrape is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.before_scrape(), 2)
            return 200, CONTENT_TYPE, self.metrics.exposition()
        if path in ("/livez", "/healthz"):
            ok, checks = self.health.live()
        elif path == "/readyz":
            ok, checks = await self.health.ready()
        else:
            return 404, "text/plain", b"not found\n"
        body = json.dumps({"status": "ok" if ok else "unavailable", "checks": checks}).encode()
        return (200 if ok else 503), "application/json", body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, ctype, body = await self._answer(method, path)
            head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, OSError):
            pass  # a probe that hung up or sent garbage gets nothing
        finally:
            writer.close()


async def open_ops(stack: AsyncExitStack, metrics: Metrics, health: Health, host: str, port: int, *,
                   before_scrape: Callable[[], Awaitable[object]] | None = None) -> OpsServer:
    """An :class:`OpsServer` listening on ``host:port`` (0: a free one, its ``port``), closed with ``stack``."""
    ops = OpsServer(metrics, health, before_scrape=before_scrape)
    await ops.start(host, port)
    stack.push_async_callback(ops.close)
    return ops
