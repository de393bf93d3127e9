"""Answer only requests addressed to this gateway by a name it is known by: no DNS rebinding.

A page on another site can point its own name at 127.0.0.1 (or at an internal address) and
then read what a gateway there answers, as if it were same-origin. The browser still sends
that site's name in ``Host``, so a gateway that answers only its own names (the setting
``PROMPTGEN_ALLOWED_HOSTS``) answers such a page with 400 before anything runs.

Bound to loopback, the default names are 127.0.0.1, localhost and [::1] (any port). Bound to
anything else, the names are required (``*`` accepts any ``Host``, for a gateway behind a
proxy that checks it): the gateway refuses to start without them.

Health probes (``/livez``, ``/healthz``, ``/readyz``) are answered whatever the ``Host``: a
load balancer or a kubelet addresses a gateway by its IP, or sends no ``Host`` at all, and
the probes say nothing but up or down.
"""

from __future__ import annotations

import re

import structlog
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from contracts.api import ErrorBody
from contracts.limits import printable
from services.gateway.auth import is_loopback
from services.runtime.settings import Settings

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
PROBES = frozenset({"/livez", "/healthz", "/readyz"})
_HOST_HEADER = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?")
log = structlog.get_logger()


class HostsNotConfigured(RuntimeError):
    """Bound beyond loopback with no allowed hosts: say what to configure."""


def host_patterns(settings: Settings) -> list[str] | None:
    """The names this gateway answers for; None when bound beyond loopback and none are set."""
    if settings.allowed_hosts:
        return settings.allowed_hosts.split(",")
    return list(LOOPBACK_NAMES) if is_loopback(settings.host) else None


def unconfigured(settings: Settings) -> str | None:
    """Why the gateway must not start with these settings, or None."""
    if host_patterns(settings) is not None:
        return None
    return (f"bound to {settings.host}, but PROMPTGEN_ALLOWED_HOSTS is not set: set it to the names clients "
            "reach this gateway by (e.g. promptgen.example.com,*.internal.example), or to '*' to answer any "
            "Host header (only behind a proxy that checks it)")


def require_host_patterns(settings: Settings) -> list[str]:
    """At start: the names, or why the gateway must not start (``*`` is said out loud)."""
    patterns = host_patterns(settings)
    if patterns is None:
        raise HostsNotConfigured(unconfigured(settings))
    if "*" in patterns:
        log.warning("host_check_off", reason="PROMPTGEN_ALLOWED_HOSTS=*: any Host header is answered, so a "
                                             "page on another site can reach this gateway by DNS rebinding")
    return patterns


def host_allowed(header: str | None, patterns: list[str]) -> bool:
    if "*" in patterns:
        return True
    match = _HOST_HEADER.fullmatch(header or "")
    if match is None:
        return False
    host = match["host"].lower()
    return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns)


class HostAllowList:
    def __init__(self, app: ASGIApp, patterns: list[str]) -> None:
        self.app = app
        self.patterns = patterns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PROBES:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host")
        if host_allowed(header, self.patterns):
            await self.app(scope, receive, send)
            return
        shown = printable(header, 100) if header else None
        body = ErrorBody(
            detail=f"This server does not answer for the host '{shown}'" if shown else "The request has no Host header",
            code="host_not_allowed", field="Host",
        )
        await JSONResponse(body.model_dump(exclude_none=True), status_code=400)(scope, receive, send)
