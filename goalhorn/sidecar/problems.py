"""Errors as RFC 9457 problem details (``application/problem+json``), one shape for every route.

A 422 lists each invalid field with its path (``body.devices[0].address``, ``path.user_id``,
``query.sport``) and what is wrong with it; nothing else echoes input back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from goalhorn.errors import StoreError

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error answered as problem details: ``status``, a ``detail`` for people, extra members."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **members: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
        self.members = members


class Invalid(Problem):
    """422: fields that do not validate, each ``{"field": path, "detail": why}``."""

    def __init__(self, errors: Sequence[Mapping[str, str]]) -> None:
        shown = "; ".join(f"{e['field']}: {e['detail']}" for e in errors[:3])
        super().__init__(422, shown or "invalid request", errors=list(errors))


class FieldError(BaseModel):
    field: str
    detail: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, as every error of the API is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(default=None, description="422: each invalid field.")
    retry_after_s: float | None = Field(default=None, description="429: seconds until a request is allowed.")


def _problem(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/ProblemDetails"}
    return {"description": description, "content": {PROBLEM_JSON: {"schema": schema}}}


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem("No valid API key"),
    403: _problem("The key lacks the scope"),
    404: _problem("Not found (or another tenant's)"),
    409: _problem("Conflicts with the stored state"),
    413: _problem("Body too large"),
    415: _problem("Unsupported body type"),
    422: _problem("Invalid request; `errors` names each field"),
    429: _problem("Rate limit exceeded; see Retry-After"),
    503: _problem("Switched off, past the request deadline, or storage unavailable; see Retry-After"),
}
"""Every error route answers, documented once for all (``create_app`` adds them to each route)."""


def not_found(what: str) -> Problem:
    return Problem(404, f"{what} not found")


def problem_response(
    status: int, detail: str, *, headers: Mapping[str, str] | None = None, **members: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail, **members}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def field_errors(errors: Sequence[Any], prefix: Sequence[str] = ()) -> list[dict[str, str]]:
    """pydantic's errors as ``{"field", "detail"}``, the input never echoed."""
    out = []
    for error in errors:
        loc = (*prefix, *error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "json_invalid":
            message = "not valid JSON"
        out.append({"field": _path(loc) or "body", "detail": message})
    return out


def invalid(exc: ValidationError, prefix: str = "body") -> Invalid:
    return Invalid(field_errors(exc.errors(include_url=False, include_input=False), (prefix,)))


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem details."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc.status, exc.detail, headers=exc.headers, **exc.members)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(exc.status_code, detail, headers=exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = field_errors(exc.errors())
        return problem_response(422, Invalid(errors).detail, errors=errors)

    async def on_store(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: storage failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return problem_response(503, "storage is unavailable; try again shortly", headers={"Retry-After": "1"})

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return problem_response(500, "internal error")

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StoreError, on_store)
    app.add_exception_handler(RedisError, on_store)
    app.add_exception_handler(Exception, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
