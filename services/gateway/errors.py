"""Typed API errors: a status code, a stable code, and a message a client can act on."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from contracts.api import ErrorBody


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


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body.model_dump(exclude_none=True), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _field(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            detail = f"Request body is not valid JSON: {msg}"
            field = "body"
        else:
            detail = f"Invalid '{field}': {msg}"
            given = first.get("input")
            if isinstance(given, str | int | float) and first.get("type") != "missing":
                detail += f" (got {given!r})"
        body = ErrorBody(detail=detail, code="invalid_request", field=field).model_dump(exclude_none=True)
        body["errors"] = [
            {"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))} for e in errors
        ]
        return JSONResponse(body, status_code=422)
