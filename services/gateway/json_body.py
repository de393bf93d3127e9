"""Request bodies are UTF-8 JSON, or a 422 that says why.

FastAPI turns only ``json.JSONDecodeError`` into a validation error; anything
else the parser raises (bytes that are not UTF-8, nesting deeper than Python
recurses, an integer of more than 4,300 digits) becomes a bare 400. Here each is
a ``JSONDecodeError`` with its reason, so the client gets our 422 like for any
other malformed JSON. And the body is decoded as UTF-8 only (RFC 8259), never
guessed as UTF-16 or UTF-32 as ``json.loads`` on bytes would; a body that says it is in
another charset is refused with 415, naming it.

A request that would change something and declares a body of another type (a form's
``application/x-www-form-urlencoded``, ``multipart/form-data`` or ``text/plain``, which a
page on any site can post without asking) is refused with 415 before the route runs. One
exception: ``text/plain`` from this gateway's own pages (``Sec-Fetch-Site: same-origin``, which
only the browser sets and no page can forge) is read as JSON, because that is what a ``fetch``
with a string body and no headers sends, as the specification's own frontend code does.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from contracts.limits import printable
from services.gateway.auth import admit_first, required_scope
from services.gateway.body_limit import declared_length
from services.gateway.cross_site import STATE_CHANGING
from services.gateway.errors import ApiError


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


UTF8_COMPATIBLE = ("utf-8", "utf8", "us-ascii", "ascii")  # ASCII is UTF-8 too


def _charset(content_type: str) -> str | None:
    """The ``charset`` a Content-Type names (lower case, unquoted), or None."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _json_from_this_origin(scope: dict) -> dict:
    """``scope`` with a same-origin ``text/plain`` body declared as JSON (see the module's docstring)."""
    headers = dict(scope["headers"])
    declared = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if declared != b"text/plain" or headers.get(b"sec-fetch-site") != b"same-origin":
        return scope
    rewritten = [(k, b"application/json") if k == b"content-type" else (k, v) for k, v in scope["headers"]]
    return {**scope, "headers": rewritten}


def refuse_other_bodies(request: Request, *, takes_body: bool = True) -> None:
    """415 for a state-changing request that says its body is anything but JSON, or, to a route
    that reads one (``takes_body``), sends one and says nothing of its type (it would be read as
    no JSON at all: a 422 for the whole body)."""
    if request.method not in STATE_CHANGING:
        return
    declared = request.headers.get("content-type")
    if declared is not None and not is_json(declared):
        raise ApiError(415, "unsupported_media_type",
                       f"The request body must be JSON (Content-Type: application/json), not "
                       f"'{printable(declared, 100)}'", field="Content-Type")
    if declared is not None and (charset := _charset(declared)) not in (None, *UTF8_COMPATIBLE):
        raise ApiError(415, "unsupported_media_type",
                       f"The request body must be UTF-8 JSON (RFC 8259); charset '{printable(charset, 40)}' "
                       "is not read: send it as UTF-8", field="Content-Type")
    sent = (declared_length(request.headers.get("content-length")) or 0) > 0 or "transfer-encoding" in request.headers
    if takes_body and declared is None and sent:
        raise ApiError(415, "unsupported_media_type",
                       "The request body must be JSON, and say so: Content-Type: application/json",
                       field="Content-Type")


def _each_key_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: of ``{"mode": "x", "mode": "y"}`` a proxy or a
    firewall may read the first and we the last, so neither is taken."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise json.JSONDecodeError(f"the key '{printable(twice, 100)}' is given twice", "", 0)
    return obj


def parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"not UTF-8 ({exc.reason} at byte {exc.start})", "", exc.start) from None
    try:
        return json.loads(text, object_pairs_hook=_each_key_once)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except ValueError as exc:  # e.g. an integer too long to convert
        raise json.JSONDecodeError(str(exc), "", 0) from None


class JSONBodyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JSONBodyRoute(APIRoute):
    """A route whose request parses its body with :func:`parse_json`, once its caller is admitted
    (the key, its scope, the tenant's requests per minute: :func:`.auth.admit_first`)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        scope = required_scope(self.dependant)

        async def route(request: Request) -> Response:
            request = JSONBodyRequest(_json_from_this_origin(request.scope), request.receive)
            if scope is not None:
                await admit_first(request, scope)
            refuse_other_bodies(request, takes_body=self.body_field is not None)
            return await handler(request)

        return route
