"""Typed API errors: a status code, a stable code, and a message a client can act on.

Every error the gateway answers is an ``ErrorBody`` (FastAPI's and Starlette's own
included), and every status a route can answer is in its OpenAPI document with
that body (:func:`responses`). An error echoes at most a short piece of the input.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import ConnectionFailure, PyMongoError
from starlette.exceptions import HTTPException

from contracts.api import ErrorBody, FieldError
from contracts.limits import BLANK_MEANS, NOT_BLANK, NotStorable, field_path, printable
from contracts.subjects import TOKEN_PATTERN
from services.adapters.event_log import UNAVAILABLE, EventTooLarge
from services.runtime.failures import brief, kind_of

log = structlog.get_logger()
UNAVAILABLE_RETRY_SECONDS = 5

ECHO_CHARS = 200  # of a value quoted back in a message
MESSAGE_CHARS = 500  # of one validation message
FIELD_PART_CHARS = 64  # of one part of a field path (a dict key can be anything)
MAX_LISTED_ERRORS = 20


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        ids: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.headers = headers
        self.body = ErrorBody(detail=detail, code=code, field=field, ids=ids)


def not_found(what: str, ident: str, *, field: str | None = None) -> ApiError:
    return ApiError(404, f"{what}_not_found", f"{what.replace('_', ' ').capitalize()} '{ident}' was not found",
                    field=field, ids=[ident])


def job_not_found(job_id: str) -> ApiError:
    """The one 404 for a job: it may have existed and aged out of the log."""
    return ApiError(404, "job_not_found",
                    f"Job '{job_id}' was not found: it never existed, belongs to another tenant (what was made "
                    "while auth was off belongs to 'default'), or its events aged out of the log",
                    ids=[job_id])


def listed(items: list[str], at_most: int = 10) -> str:
    """``items`` for a message: the first few, and how many more."""
    shown = ", ".join(items[:at_most])
    return shown if len(items) <= at_most else f"{shown} and {len(items) - at_most} more"


# What each kind of event holds, for a client told it is too large.
_EVENT_CONTENTS = {
    "template.created": ("the template (the scenario document and its analysis)", "scenario_document"),
    "persona.created": ("a persona", None),
    "job.requested": ("the job (its template and every persona with its details)", "persona_ids"),
    "interaction.created": ("the avatar interaction", "body"),
}


def _field(loc: tuple, extra: str | None = None) -> str:
    """A field as the client names it: ``count``, ``job_id``, ``avatars.0.name`` (no "body", "path"...)."""
    if loc and loc[0] in ("body", "path", "query", "header", "cookie"):
        loc = loc[1:]
    path = field_path(loc, FIELD_PART_CHARS)
    if extra:
        path = f"{path}.{extra}" if path and not extra.startswith("[") else f"{path}{extra}"
    return path or "body"


def _where(error: dict[str, Any]) -> str:
    """The error's field; for a free-form value, down to the place inside it."""
    if error.get("type") == "json_invalid":
        return "body"
    cause = (error.get("ctx") or {}).get("error")
    return _field(tuple(error.get("loc", ())), cause.where if isinstance(cause, NotStorable) else None)


# Pydantic's message for a pattern says the pattern; for ours, say what it means.
_PATTERN_MEANS = {
    NOT_BLANK: BLANK_MEANS,
    TOKEN_PATTERN: "must be an id: 1 to 128 letters, digits, '-' or '_'",
}


def _message(error: dict[str, Any]) -> str:
    """The error's message, short (a message may list what it refuses)."""
    if error.get("type") == "string_pattern_mismatch":
        if meaning := _PATTERN_MEANS.get((error.get("ctx") or {}).get("pattern")):
            return meaning
    return printable(str(error.get("msg", "invalid value")).removeprefix("Value error, "), MESSAGE_CHARS)


def _validation_detail(error: dict[str, Any], field: str) -> str:
    msg = _message(error)
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error") or msg
        return f"Request body is not valid JSON: {reason}"
    detail = f"Invalid '{field}': {msg}"
    given = error.get("input")
    # Quote only a short scalar: a structure may be megabytes, and says less than the field.
    if isinstance(given, str | int | float) and not isinstance(given, bool) and error.get("type") != "missing":
        detail += f" (got {printable(repr(given), ECHO_CHARS)})"
    return detail


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body.model_dump(exclude_none=True), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors() or [{"loc": ("body",), "msg": "invalid request"}]
        first = errors[0]
        field = _where(first)
        body = ErrorBody(
            detail=_validation_detail(first, field), code="invalid_request", field=field,
            errors=[FieldError(field=_where(e), message=_message(e)) for e in errors[:MAX_LISTED_ERRORS]],
        )
        return JSONResponse(body.model_dump(exclude_none=True), status_code=422)

    @app.exception_handler(EventTooLarge)
    async def _too_large(_: Request, exc: EventTooLarge) -> JSONResponse:
        what, field = _EVENT_CONTENTS.get(exc.event_type, (f"the {exc.event_type} event", None))
        body = ErrorBody(
            detail=f"{what[0].upper()}{what[1:]} would be {exc.size} bytes in the event log, which takes at most "
                   f"{exc.limit} bytes per event",
            code="event_too_large", field=field,
        )
        return JSONResponse(body.model_dump(exclude_none=True), status_code=413)

    @app.exception_handler(ConnectionFailure)
    async def _read_models_unavailable(request: Request, exc: ConnectionFailure) -> JSONResponse:
        return unavailable(request, exc, "read_models_unavailable", "MongoDB (the read models) did not answer")

    @app.exception_handler(PyMongoError)
    async def _read_models_not_now(request: Request, exc: PyMongoError) -> JSONResponse:
        """A failure MongoDB says is for now (a primary stepping down, a time limit, an
        interrupted operation: DESIGN.md §7's transient) is a 503; any other is ours, a 500."""
        if kind_of(exc) != "transient":
            raise exc
        return unavailable(request, exc, "read_models_unavailable", "MongoDB (the read models) could not answer now")

    async def _event_log_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return unavailable(request, exc, "event_log_unavailable", "NATS (the event log) did not answer")

    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, _event_log_unavailable)

    @app.exception_handler(TimeoutError)
    async def _timed_out(request: Request, exc: TimeoutError) -> JSONResponse:
        """A wait of ours on NATS or MongoDB that ran out (theirs have types of their own)."""
        return unavailable(request, exc, "dependency_timeout", "NATS or MongoDB did not answer in time")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's and FastAPI's own errors (unknown path, method not allowed, an unreadable body)."""
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = ErrorBody(detail=str(exc.detail), code=code)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=exc.status_code, headers=exc.headers)


def unavailable(request: Request, exc: Exception, code: str, what: str) -> JSONResponse:
    """A 503 for a dependency that is down or not answering: the client may try again soon."""
    log.warning("dependency_unavailable", code=code, method=request.method, path=request.url.path, error=brief(exc))
    body = ErrorBody(detail=f"{what}: try again in {UNAVAILABLE_RETRY_SECONDS} s", code=code)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503,
                        headers={"Retry-After": str(UNAVAILABLE_RETRY_SECONDS)})


# --- OpenAPI: the error statuses each route can answer ---------------------------------------

_ERROR_DOCS: dict[int, str] = {
    404: "An id names nothing (the ids at fault are in `ids`)",
    409: "The job is in a state that does not allow this",
    413: "The request body, or the event it would make, is larger than the server takes",
    422: "The request is invalid; `field` names where, `errors` lists the invalid fields (at most 20)",
    429: "Past one of the tenant's limits (`field` names it: requests_per_minute, jobs_in_flight, "
         "personas_per_day, or gateway_share: its share of what this gateway holds open); nothing was done. "
         "Try again after `Retry-After` seconds",
    502: "The language model failed (`code` is the LLM error code)",
    503: "Not now: try again after `Retry-After` seconds (the LLM is rate limited, this gateway is busy, or "
         "NATS or MongoDB is not answering)",
    504: "The language model, or the job, did not finish in time",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}


def responses(*statuses: int, described: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each error status it can answer, with ``ErrorBody``
    (``described`` says what a status means on this route, where it differs)."""
    docs: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        docs[status] = {"model": ErrorBody, "description": (described or {}).get(status, _ERROR_DOCS[status])}
        if status in (429, 503):
            docs[status]["headers"] = _RETRY_AFTER
    return docs
