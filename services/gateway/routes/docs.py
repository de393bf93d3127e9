"""Documents: the event log's AsyncAPI description, and the API's Swagger UI and ReDoc pages.

The two pages are FastAPI's own, with a Content-Security-Policy of their own: they load
Swagger UI and ReDoc from their CDN and start them with an inline script, which the web UI's
policy would stop. Their policy allows those hosts and exactly the inline scripts each page
holds (by hash, computed from the page as sent), nothing else inline; no other site may frame them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.metadata import version
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

from contracts import asyncapi

router = APIRouter(tags=["operations"])

CDN = "https://cdn.jsdelivr.net"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


@cache
def _document() -> dict[str, Any]:
    return asyncapi.document(version("promptgen"))


@router.get("/asyncapi.json", summary="The event log's AsyncAPI 3 document")
async def asyncapi_document() -> dict[str, Any]:
    """Channels (subjects), messages (events with their JSON Schemas), and how the log is kept:
    what a service in any language needs to follow prompt events."""
    return _document()


def docs_policy(page: bytes) -> str:
    """The policy for a docs page: its CDN, its own inline scripts by hash, this origin's API."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
                      for script in _INLINE_SCRIPT.findall(page))
    return "; ".join([
        "default-src 'self'",
        f"script-src 'self' {CDN} {hashes}".rstrip(),
        f"style-src 'self' {CDN} https://fonts.googleapis.com 'unsafe-inline'",  # both style their elements inline
        "font-src 'self' https://fonts.gstatic.com",
        "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly",
        "worker-src 'self' blob:",  # ReDoc searches in a worker
        "connect-src 'self'",  # /openapi.json
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ])


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["content-security-policy"] = docs_policy(bytes(page.body))
    return page


def _openapi_url(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + (request.app.openapi_url or "/openapi.json")


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    page = get_swagger_ui_html(openapi_url=_openapi_url(request), title=f"{request.app.title} - Swagger UI",
                               oauth2_redirect_url=f"{root}/docs/oauth2-redirect")
    return _with_policy(page)


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return _with_policy(get_swagger_ui_oauth2_redirect_html())


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    return _with_policy(get_redoc_html(openapi_url=_openapi_url(request), title=f"{request.app.title} - ReDoc"))
