"""Error responses of the admin API: one JSON shape for every failure.

    {"code": "invalid", "message": "context_path: ...", "field": "context_path",
     "detail": [{"loc": ["body", "context_path"], "msg": "...", "type": "...", "field": "context_path"}]}

`detail` keeps FastAPI's validation-error shape (so the documented 422 schema
holds) and adds `field`, the dotted name a person reads (`policies[0].limit`).
Malformed JSON is a 400 with `field = "body"`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tandem.ams.models import FieldError
from tandem.errors import StoreError
from tandem.model.policies import POLICY_TYPES

log = logging.getLogger("tandem.ams")


class ApiError(Exception):
    """A refusal with an HTTP status, a stable `code` and, for bad input, the field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None, names: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}
        self.names = names  # what a conflict is about (e.g. the deployed projects an import would remove)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.names is not None:
            out["names"] = list(self.names)
            out["field"] = self.field or "body"
            out["detail"] = [{"loc": ["body", *_split(out["field"])], "msg": n, "type": self.code,
                              "field": out["field"]} for n in self.names]
        elif self.field is not None:
            out["field"] = self.field
            out["detail"] = [{"loc": ["body", *_split(self.field)], "msg": self.message, "type": self.code,
                              "field": self.field}]
        return out


def invalid(field: str, reason: str) -> ApiError:
    return ApiError(422, "invalid", f"{field}: {reason}", field)


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    field: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    detail: list[ErrorItem] | None = None
    role: str | None = None  # a 403 `forbidden`: the role the request needs


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed request body"},
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    403: {"model": ErrorBody, "description": "beyond the caller's role (`role` names the one needed), or a "
                                             "gateway token outside the config feed"},
    413: {"model": ErrorBody, "description": "body larger than the admin port's limit (AdminMaxBodyBytes)"},
    503: {"model": ErrorBody, "description": "this server is not serving (its store is closed)"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such resource"}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "conflicts with the current state (exists, deployed, ...)"}}


def _split(field: str) -> list[str | int]:
    parts: list[str | int] = []
    for chunk in field.replace("]", "").split("."):
        name, *idx = chunk.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in idx)
    return parts


def field_name(loc: Sequence[str | int]) -> str:
    """('body', 'policies', 0, 'rate-limit', 'limit') -> 'policies[0].limit'."""
    out = ""
    items = list(loc)
    if items and items[0] in ("body", "query", "path", "header"):
        items = items[1:]
    for i, part in enumerate(items):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in POLICY_TYPES and i > 0 and isinstance(items[i - 1], int):
            continue  # pydantic's discriminator tag, not a field
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def format_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    items = []
    for err in errors:
        loc = list(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        etype = str(err.get("type", "value_error"))
        ctx = err.get("ctx") or {}
        cause = ctx.get("error") if isinstance(ctx, dict) else None
        if isinstance(cause, FieldError):
            loc += list(cause.path)
            msg = str(cause)
        elif etype in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("type")
            tag = ctx.get("tag") if isinstance(ctx, dict) else None
            msg = (f"unknown policy type {tag!r}; expected one of: {', '.join(POLICY_TYPES)}" if tag is not None
                   else f"missing; expected one of: {', '.join(POLICY_TYPES)}")
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        items.append({"loc": loc, "msg": msg, "type": etype, "field": field_name(loc)})
    return items


def validation_response(errors: Sequence[Any], status: int = 422) -> JSONResponse:
    items = format_errors(errors)
    first = items[0] if items else {"field": "body", "msg": "invalid"}
    body = {"code": "invalid", "message": f"{first['field']}: {first['msg']}", "field": first["field"],
            "detail": items}
    return JSONResponse(json.loads(json.dumps(body, default=str)), status_code=status)


def install(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def on_request_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            e = next(e for e in errors if e.get("type") == "json_invalid")
            reason = (e.get("ctx") or {}).get("error", "not valid JSON")
            return JSONResponse({"code": "malformed_json", "message": f"body: malformed JSON: {reason}",
                                 "field": "body",
                                 "detail": [{"loc": ["body"], "msg": f"malformed JSON: {reason}",
                                             "type": "json_invalid", "field": "body"}]}, status_code=400)
        return validation_response(errors)

    async def on_pydantic_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValidationError)
        return validation_response([{**e, "loc": ["body", *e["loc"]]} for e in exc.errors()])

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"code": code, "message": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)

    async def on_store_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s: store error: %s", request.method, request.url.path, exc)
        return JSONResponse({"code": "store_error", "message": f"the store failed: {exc}"}, status_code=503)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"code": "internal", "message": "internal error (logged on the server)"},
                            status_code=500)

    app.add_exception_handler(StoreError, on_store_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(ValidationError, on_pydantic_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
