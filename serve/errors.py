"""How the API says no: one JSON error shape (`ErrorResponse`) for every refusal.

400 bad JSON (or nested deeper than MAX_JSON_DEPTH), 404/405 unknown route or
method, 413 body over `max_request_bytes`, 422 anything invalid (`field` names it),
503 + Retry-After when the family is saturated, 500 a generator failure (with an
`error_id` that is in the server log). `install(api)` wires the handlers and the
body limits into the FastAPI app, so nothing answers in another shape.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serve.schemas import MAX_JSON_DEPTH, ErrorResponse, too_deep

logger = logging.getLogger("ray.serve")


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, message: str, error_id: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.field, self.message, self.error_id = status, field, message, error_id
        self.retry_after_s = retry_after_s


def error_response(status: int, field: str | None, message: str, error_id: str | None = None, errors=(),
                   retry_after_s: int | None = None) -> JSONResponse:
    body = ErrorResponse(error={"status": status, "field": field, "message": message, "error_id": error_id, "errors": list(errors)})
    headers = {"Retry-After": str(int(retry_after_s))} if retry_after_s is not None else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def field_name(loc: tuple) -> str:
    """A pydantic error location -> `boxes[0]`, `image.width`, `work_item.style.contrast`."""
    parts = [p for p in loc if p != "body"] if loc and loc[0] == "body" else list(loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


class BodyLimits:
    """Pure ASGI middleware: refuse bodies over the size limit (413) or nested deeper
    than MAX_JSON_DEPTH (400) before anything parses them. The body is buffered (it is
    small by construction) and replayed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = getattr(scope["app"].state, "max_request_bytes", 64 * 1024)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._refuse(scope, receive, send, limit)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await self._refuse(scope, receive, send, limit)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False
        if too_deep(body.decode("latin-1")):  # bytes 1:1; brackets and quotes are ASCII
            message = f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"
            return await error_response(400, "body", message)(scope, receive, send)

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, receive, send, limit):
        await error_response(413, "body", f"request body larger than {limit} bytes")(scope, receive, send)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": field_name(tuple(e.get("loc", ()))), "message": e.get("msg", ""), "type": e.get("type")} for e in exc.errors()]
    if any(e["type"] == "json_invalid" for e in errors):
        return error_response(400, "body", "the request body is not valid JSON", errors=errors)
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return error_response(422, first["field"], f"{first['field']}: {first['message']}", errors=errors)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.field, exc.message, exc.error_id, retry_after_s=exc.retry_after_s)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own refusals (a body it cannot parse, unknown route, wrong method) in our shape."""
    response = error_response(exc.status_code, "body" if exc.status_code == 400 else None, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug in the ingress: an id in the log, and the error shape rather than plain text."""
    error_id = uuid.uuid4().hex[:12]
    logger.exception("error %s: the ingress failed on %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return error_response(500, None, f"internal error; error id {error_id} is in the server log", error_id)


def install(api: FastAPI) -> None:
    api.add_middleware(BodyLimits)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(Exception, _unexpected)


RESPONSES = {s: {"model": ErrorResponse} for s in (400, 413, 422, 500, 503)}
