"""ASGI middleware: request ids with one JSON log line per request, and the request-body size limit.

Both are plain ASGI (no ``BaseHTTPMiddleware``): they add well under a
millisecond to a request and never buffer responses.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clvtier.serve.logs import LOGGER

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(scope: Scope) -> str:
    """The id of the request being served ('-' outside a request)."""
    return str(scope.get("state", {}).get("request_id", "-"))


class RequestContextMiddleware:
    """Give every request an id (the caller's ``X-Request-ID`` when it is safe), echo it, log the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger(LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500  # unless a response starts: an unhandled error answered outside this middleware

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.log.info("request", extra={
                "request_id": rid, "method": scope["method"], "path": scope["path"], "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            })


class BodyTooLarge(Exception):
    """The request body grew past the limit while the application read it (answered with 413)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.max_bytes = max_bytes


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413: by Content-Length, and as they stream in.

    A declared Content-Length over the limit is refused before the application runs. The
    body itself is counted as the application reads it, which it does only after checking
    the API key: a client without the key is refused without its body being read, and a
    client that lies about (or omits) Content-Length cannot push more than the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await too_large_response(scope, self.max_bytes)(scope, receive, send)


def too_large_response(scope: Scope, max_bytes: int) -> JSONResponse:
    """413 for a body over ``max_bytes``; the connection is closed (the rest of the body is not read)."""
    return JSONResponse(
        {"detail": f"the request body is larger than {max_bytes:,} bytes.",
         "fix": "Send fewer customers per request.", "request_id": request_id(scope)},
        status_code=413, headers={"Connection": "close"},
    )
