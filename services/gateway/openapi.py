"""The gateway's OpenAPI document, true to what the gateway does.

Routes state their error statuses themselves (``errors.responses``); here, the
parts no route can: limits that are settings (how many personas a job takes),
FastAPI's own 422 schema, which is not the body the gateway answers, and the
messages of an SSE stream (sse-starlette's response documents none).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import TypeAdapter

from contracts.sse import SseMessage
from services.gateway.auth import auth_must_be_on
from services.runtime.settings import Settings

_REF = "#/components/schemas/"


def install_openapi(app: FastAPI, settings: Settings) -> None:
    generate = app.openapi  # FastAPI's own, which caches its document in app.openapi_schema

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            _errors_are_error_bodies(doc)
            _auth_errors(doc, enforced=_enforced(app, settings))
            _browser_refusals(doc)
            _job_size(doc, settings.max_personas_per_job)
            _sse_messages(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _errors_are_error_bodies(doc: dict[str, Any]) -> None:
    """A route that did not state its 422 gets ours, never FastAPI's ``HTTPValidationError``."""
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            content = operation.get("responses", {}).get("422", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema", {})
            if schema.get("$ref") == f"{_REF}HTTPValidationError":
                schema["$ref"] = f"{_REF}ErrorBody"
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _job_size(doc: dict[str, Any], max_personas: int) -> None:
    """``PROMPTGEN_MAX_PERSONAS_PER_JOB``, as the request's schema."""
    request = doc["components"]["schemas"]["GenerateFinalPromptsRequest"]["properties"]
    request["persona_ids"]["maxItems"] = max_personas
    request["mode_mapping"]["maxProperties"] = max_personas


def _sse_messages(doc: dict[str, Any]) -> None:
    """Each ``text/event-stream`` response describes one message as OpenAPI 3.2 does (``itemSchema``,
    the SSE fields, ``data`` as JSON text with its ``contentSchema``), as FastAPI's own SSE routes
    do; the three messages of ``contracts.sse`` join the document's schemas."""
    content_schema = TypeAdapter(SseMessage).json_schema(mode="serialization", ref_template=_REF + "{model}")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in content_schema.pop("$defs", {}).items():
        schemas.setdefault(name, schema)
    for target in content_schema["discriminator"]["mapping"].values():
        message = schemas[target.removeprefix(_REF)]
        if "type" not in message["required"]:  # a default in Python, yet on every message sent
            message["required"].insert(0, "type")
    item_schema = {
        "type": "object",
        "required": ["data", "id"],
        "properties": {
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": content_schema,
                     "description": "One JSON object, a `status_update`, `persona_progress` or `results` message"},
            "id": {"type": "string", "description": "The JetStream sequence of the event behind the message; "
                   "an event that is several messages (a job's end) numbers all but its last `<seq>-0`, "
                   "`<seq>-1`, ...: send it back as `Last-Event-ID` (or `?last_event_id=`) to resume after it"},
            "event": {"const": "message", "description": "Never sent: messages are unnamed, so a browser's "
                      "`onmessage` receives them all"},
            "retry": {"type": "integer", "minimum": 0, "description": "Sent once, first, on its own"},
        },
    }
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            for response in operation.get("responses", {}).values():
                stream = response.get("content", {}).get("text/event-stream")
                if stream is not None:
                    stream["itemSchema"] = item_schema


_AUTH_ERRORS = {
    "401": "No API key, or an unknown or revoked one (for SSE: an expired stream token, or another job's)",
    "403": "The API key lacks the scope this route needs (`field` names it)",
}


def _enforced(app: FastAPI, settings: Settings) -> bool:
    """Whether this gateway refuses requests without a key: decided at its start (keys may exist);
    before that (a document built without running the app), from its settings alone."""
    gateway = getattr(app.state, "gateway", None)
    return gateway.guard.enforced if gateway is not None else auth_must_be_on(settings)


def _auth_errors(doc: dict[str, Any], *, enforced: bool) -> None:
    """Every guarded route (its ``security`` comes from ``auth.require``) can answer 401 and 403.
    With auth off, the key is optional (a request without one is served): the document says so."""
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            if operation.get("security"):
                if not enforced and {} not in operation["security"]:
                    operation["security"].append({})
                for status, description in _AUTH_ERRORS.items():
                    operation["responses"].setdefault(status, {
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": f"{_REF}ErrorBody"}}},
                    })


_ERROR_BODY = {"application/json": {"schema": {"$ref": f"{_REF}ErrorBody"}}}
_PROBES = ("/livez", "/readyz")


def _browser_refusals(doc: dict[str, Any]) -> None:
    """What any route answers a request it must not serve a browser (README, Security): a Host
    this gateway is not known by; on a state-changing route, a request from another site, or a body
    declared as anything but JSON (a form's)."""
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if path not in _PROBES:
                responses.setdefault("400", {
                    "description": "The Host header is not a name this gateway answers for (`host_not_allowed`)",
                    "content": _ERROR_BODY,
                })
            if method.upper() not in ("POST", "PUT", "PATCH", "DELETE"):
                continue
            refused = ("A browser request from another site (`cross_site_request`; `field`: `Origin` or "
                       "`Sec-Fetch-Site`)")
            if "403" in responses:
                responses["403"]["description"] += f"; or: {refused[0].lower()}{refused[1:]}"
            else:
                responses["403"] = {"description": refused, "content": _ERROR_BODY}
            responses.setdefault("415", {
                "description": "The body is declared as something other than JSON (`unsupported_media_type`)",
                "content": _ERROR_BODY,
            })
