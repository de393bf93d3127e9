"""Assembles the gateway: settings, adapters and routers, created in the lifespan."""

from __future__ import annotations

import asyncio
import socket
import urllib.parse
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from services.adapters.event_log import StoppedBeforeConnected
from services.gateway.access import AccessLog
from services.gateway.allowed_hosts import HostAllowList, host_patterns, require_host_patterns
from services.gateway.auth import AuthNotConfigured
from services.gateway.body_limit import BodySizeLimit
from services.gateway.bootstrap import bootstrap
from services.gateway.cross_site import CrossSiteRefusal
from services.gateway.deps import one_value_per_query_parameter
from services.gateway.errors import ApiError, install_error_handlers, responses
from services.gateway.head import HeadAsGet
from services.gateway.internal_errors import InternalErrors
from services.gateway.openapi import install_openapi
from services.gateway.routes import admin, docs, identity, interactions, jobs, scenario, v1
from services.gateway.security_headers import SecurityHeaders
from services.runtime.lifecycle import announce_ready
from services.runtime.metrics import CONTENT_TYPE
from services.runtime.settings import Settings
from services.runtime.tracing import Tracing, start_tracing

log = structlog.get_logger()
STATIC = Path(__file__).parent / "static"


class GatewayServer(uvicorn.Server):
    """uvicorn's server, saying the gateway is ready (its ``service_ready`` line) once it listens,
    not when its lifespan has connected everything, which comes first: a gateway joining others
    on a shared port (``PROMPTGEN_REUSE_PORT``) takes connections only from then."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        state = getattr(self.config.app, "state", None)
        if self.started and not self.should_exit and state is not None and hasattr(state, "ready"):
            listening = [sock.getsockname()[1] for server in self.servers for sock in server.sockets]
            announce_ready(**{**state.ready, "port": listening[0] if listening else state.ready["port"]})


def create_app(settings: Settings | None = None, **adapters: Any) -> FastAPI:
    """The gateway application; ``adapters`` (``event_log``, ``models``, ``provider``,
    ``clock``) replace the ones :func:`~services.gateway.bootstrap.bootstrap` would build."""
    settings = settings or Settings()
    # Before the app: its HTTP spans come from middleware, built with the app.
    traces = start_tracing("gateway")  # off unless the OTEL_* variables say otherwise

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        require_host_patterns(settings)  # before anything starts: it may refuse
        try:
            gateway = await bootstrap(settings, **adapters)
        except AuthNotConfigured as exc:  # `promptgen gateway` exits 2 with it: a restart would only refuse again
            app.state.refused = str(exc)
            raise
        except StoppedBeforeConnected as exc:  # uvicorn, told to stop already, ends as soon as this returns
            log.info("service_stopped", reason=str(exc))
            yield
            return
        app.state.gateway = gateway
        # said by GatewayServer once it listens
        app.state.ready = {"provider": gateway.provider.name, "mongo_db": settings.mongo_db, "port": settings.port,
                           **({"http_port": gateway.ops_port} if gateway.ops_port is not None else {})}
        try:
            yield
        finally:
            await gateway.aclose()
            await asyncio.to_thread(traces.shutdown)  # flushes every span

    app = FastAPI(
        title="promptgen",
        version=version("promptgen"),
        description="System prompts for avatar conversations, generated asynchronously with live progress.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # routes.docs serves them, with their own Content-Security-Policy
        dependencies=[Depends(one_value_per_query_parameter)],
    )
    install_error_handlers(app)
    # innermost first: each refusal (413, 403, 400) carries the security headers and is logged
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(CrossSiteRefusal)
    app.add_middleware(HostAllowList, patterns=host_patterns(settings) or [])  # none: the lifespan refuses to start
    app.add_middleware(InternalErrors)  # an unhandled exception: a 500 body inside the headers and the log
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HeadAsGet)  # HEAD on every GET route but a stream's (a probe, `curl -I`)
    app.add_middleware(AccessLog)  # outermost of ours: it sees every answer, a 413 included
    instrument(app, traces)
    app.include_router(scenario.router)
    app.include_router(jobs.router)
    app.include_router(v1.router)
    app.include_router(interactions.router)
    app.include_router(admin.router)
    app.include_router(identity.router)
    app.include_router(docs.router)

    @app.get("/livez", tags=["operations"],
             responses=responses(503, described={503: "This gateway's live job feed is not running"}))
    @app.get("/healthz", tags=["operations"], include_in_schema=False)  # the older name of /livez
    async def livez(request: Request) -> dict[str, object]:
        alive, checks = request.app.state.gateway.health.live()
        if not alive:
            raise ApiError(503, "job_feed_down", "This gateway's live job feed is not running")
        return {"status": "ok", "checks": checks}

    @app.get("/readyz", tags=["operations"],
             responses=responses(503, described={503: "NATS, MongoDB or the live job feed is not answering"}))
    async def readyz(request: Request) -> dict[str, object]:
        ok, checks = await request.app.state.gateway.health.ready()
        if not ok:
            failing = ", ".join(name for name, passed in checks.items() if not passed)
            raise ApiError(503, "not_ready", f"Not ready: {failing} not answering")
        return {"status": "ok", "checks": checks}

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.gateway.metrics.exposition(), media_type=CONTENT_TYPE)

    install_openapi(app, settings)

    if (STATIC / "index.html").exists():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(STATIC / "index.html")

    return app


# Probes and scrapes would be most of the spans and tell nothing.
UNTRACED_PATHS = "/livez$,/healthz$,/readyz$,/metrics$,/static/,/favicon.ico$"


def instrument(app: FastAPI, traces: Tracing) -> None:
    """One server span per request (OpenTelemetry's FastAPI instrumentation, outside our own
    middleware, so the access line carries its trace id), continuing a caller's
    ``traceparent``. Not its spans per ASGI send or receive: an SSE stream would make one per
    message (:mod:`services.gateway.sse` traces each delivered event instead)."""
    if not traces.active:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=traces.provider, excluded_urls=UNTRACED_PATHS,
                                       exclude_spans=["receive", "send"], server_request_hook=_without_stream_token)


_URL_ATTRIBUTES = ("http.url", "url.full", "http.target")


def _without_stream_token(span, scope: dict) -> None:
    """A job stream's ``token`` is a credential: its value leaves the span's URL attributes
    (OpenTelemetry redacts a fixed list of query parameters, and not this one)."""
    query = scope.get("query_string") or b""
    if not query or span is None or not span.is_recording():
        return
    pairs = urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    if not any(k == "token" for k, _ in pairs):  # as the route reads it: "%74oken" is a token too
        return
    kept = urllib.parse.urlencode([(k, "REDACTED" if k == "token" else v) for k, v in pairs])
    attributes = getattr(span, "attributes", None) or {}  # the SDK's span shows what it holds
    for key in _URL_ATTRIBUTES:
        if key in attributes:
            span.set_attribute(key, f"{str(attributes[key]).split('?', 1)[0]}?{kept}")
    if "url.query" in attributes:
        span.set_attribute("url.query", kept)
