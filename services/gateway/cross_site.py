"""No state change from another site: a request that would change something (POST, PUT, PATCH,
DELETE) and that a browser says comes from another origin is refused with 403 before it runs.

A browser sends ``Origin`` with every such request a page makes (and ``Sec-Fetch-Site``, where
it knows it); a form on another site posting here, or its script, would otherwise change state
with the visitor's network position (a gateway on loopback, or one inside a company network).
A request with neither header (curl, another service) is not a browser's and goes on. The
gateway sets no CORS headers, so the only origin allowed is its own. Form bodies are refused by
the routes themselves (415, :mod:`services.gateway.json_body`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from contracts.api import ErrorBody
from contracts.limits import printable

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` (``scheme://name[:port]``) names the server the request was sent to
    (``Host``; its port, when absent, is the origin scheme's default)."""
    try:
        sent_from, sent_to = urlsplit(origin), urlsplit(f"//{host or ''}")
        if sent_from.scheme not in _DEFAULT_PORTS or sent_from.path or not sent_from.hostname:
            return False
        default = _DEFAULT_PORTS[sent_from.scheme]
        return (sent_from.hostname == sent_to.hostname
                and (sent_from.port or default) == (sent_to.port or default))
    except ValueError:  # a port that is not a number
        return False


def cross_site(headers: Headers) -> str | None:
    """Why a state-changing request is another site's, or None."""
    if headers.get("sec-fetch-site") == "cross-site":
        return "Sec-Fetch-Site"
    origin = headers.get("origin")
    if origin is not None and not same_origin(origin, headers.get("host")):
        return "Origin"
    return None


class CrossSiteRefusal:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        why = cross_site(headers)
        if why is None:
            await self.app(scope, receive, send)
            return
        said = printable(headers.get(why.lower(), ""), 100)
        body = ErrorBody(detail=f"Refused: a request from another site cannot change anything here ({why}: {said})",
                         code="cross_site_request", field=why)
        await JSONResponse(body.model_dump(exclude_none=True), status_code=403)(scope, receive, send)
