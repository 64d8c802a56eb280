"""Exception handlers: clvtier errors, HTTP errors and bad payloads become JSON with the request id.

Responses never carry stack traces, file paths or the offending input: the
details of a server-side failure go to the log, under the same request id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from clvtier.errors import ClvtierError, InputError
from clvtier.serve.logs import LOGGER
from clvtier.serve.middleware import REQUEST_ID_HEADER, BodyTooLarge, request_id, too_large_response
from clvtier.serve.schemas import error_message

log = logging.getLogger(LOGGER)


def _error(request: Request, status: int, detail: object, fix: str | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    rid = request_id(request.scope)
    body: dict[str, object] = {"detail": detail, "request_id": rid}
    if fix:
        body["fix"] = fix
    return JSONResponse(body, status_code=status, headers={**(headers or {}), REQUEST_ID_HEADER: rid})


async def clvtier_error(request: Request, exc: Exception) -> JSONResponse:
    """Bad input -> 422 with the message and its fix; anything else (a model that cannot score) -> 500."""
    assert isinstance(exc, ClvtierError)
    if isinstance(exc, InputError):
        return _error(request, 422, exc.message, exc.fix)
    log.error("model error: %s", exc, extra={"request_id": request_id(request.scope), "error": type(exc).__name__})
    return _error(request, 500, "the model could not score this request.",
                  "Retry later; if it persists, report the request id to the service's operators.")


class ApiError(HTTPException):
    """An HTTP error of the service's own, with what the client should do about it."""

    def __init__(self, status_code: int, detail: str, fix: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status_code, detail, headers=dict(headers) if headers else None)
        self.fix = fix


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return _error(request, exc.status_code, exc.detail, getattr(exc, "fix", None), headers=exc.headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with the path and message of every problem; the input values are not echoed."""
    assert isinstance(exc, RequestValidationError)
    issues = [
        {"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
         "msg": error_message(e), "type": str(e.get("type", "value_error"))}
        for e in exc.errors()
    ]
    return _error(request, 422, issues)


async def body_too_large(request: Request, exc: Exception) -> JSONResponse:
    """413 for a body that grew past the limit while it was read (see :class:`BodyLimitMiddleware`)."""
    assert isinstance(exc, BodyTooLarge)
    return too_large_response(request.scope, exc.max_bytes)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id(request.scope)})
    return _error(request, 500, "internal error.", "Retry later; if it persists, report the request id.")


def install(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(ClvtierError, clvtier_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(BodyTooLarge, body_too_large)
    app.add_exception_handler(Exception, unexpected_error)
