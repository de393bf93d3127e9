"""Documents: the event log's AsyncAPI description, and the API's Swagger UI and ReDoc pages.

The two pages are FastAPI's own, served with Swagger UI's and ReDoc's code from this gateway
(the files fastapi-offline packages, under ``/docs/assets/``): they work with no internet, and
their Content-Security-Policy names no other host for code, styles, fonts or connections (ReDoc
shows its logo from cdn.redoc.ly; without internet the logo is missing, nothing else). They start
with an inline script, which the web UI's policy would stop: theirs allows exactly the inline
scripts each page holds (by hash, computed from the page as sent), nothing else inline; no other
site may frame them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.metadata import version
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from contracts import asyncapi
from services.gateway.errors import not_found

router = APIRouter(tags=["operations"])

_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
# Swagger UI's and ReDoc's code, as fastapi-offline packages it: these names and no others.
_ASSETS = files("fastapi_offline") / "static"
ASSETS = {name: _ASSETS / name for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js",
                                            "favicon.png")}


@cache
def _document() -> dict[str, Any]:
    return asyncapi.document(version("promptgen"))


@router.get("/asyncapi.json", summary="The event log's AsyncAPI 3 document")
async def asyncapi_document() -> dict[str, Any]:
    """Channels (subjects), messages (events with their JSON Schemas), and how the log is kept:
    what a service in any language needs to follow prompt events."""
    return _document()


def docs_policy(page: bytes) -> str:
    """The policy for a docs page: this origin, and the page's own inline scripts by hash."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
                      for script in _INLINE_SCRIPT.findall(page))
    return "; ".join([
        "default-src 'self'",
        f"script-src 'self' {hashes}".rstrip(),
        "style-src 'self' 'unsafe-inline'",  # both style their elements inline
        "font-src 'self'",
        "img-src 'self' data: https://cdn.redoc.ly",  # ReDoc's own logo in its footer, its one outside file
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


def _asset(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '').rstrip('/')}/docs/assets/{name}"


@router.get("/docs/assets/{name}", include_in_schema=False)
async def docs_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise not_found("docs_asset", name[:64])
    # the same files until fastapi-offline is upgraded: a day in a cache is plenty
    return FileResponse(str(ASSETS[name]), headers={"cache-control": "public, max-age=86400"})


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    page = get_swagger_ui_html(openapi_url=_openapi_url(request), title=f"{request.app.title} - Swagger UI",
                               oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
                               swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
                               swagger_css_url=_asset(request, "swagger-ui.css"),
                               swagger_favicon_url=_asset(request, "favicon.png"))
    return _with_policy(page)


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return _with_policy(get_swagger_ui_oauth2_redirect_html())


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    return _with_policy(get_redoc_html(openapi_url=_openapi_url(request), title=f"{request.app.title} - ReDoc",
                                       redoc_js_url=_asset(request, "redoc.standalone.js"),
                                       redoc_favicon_url=_asset(request, "favicon.png"), with_google_fonts=False))
