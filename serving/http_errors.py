"""How requests are read and how errors leave the server.

Reading: every body is read whole before anything parses it, bounded in size (``max_body_bytes``, 413)
and in time (``body_timeout_s``, 408), and read as JSON whatever its Content-Type says (curl's ``-d``
sends ``application/x-www-form-urlencoded``; the server takes no other body format).

Errors: every error is a JSON body (``{"error": {"code", "message"}}`` on the native API,
``{"error": message}`` on the Open Inference Protocol) with a 4xx/5xx status, counted in
``aa_errors_total`` by code.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import PayloadTooLarge, ServingError
from .oip_codec import OIP_PREFIX

log = logging.getLogger("aa_deploy.serving")

JSON_MEDIA_TYPE = b"application/json"
ErrorHandler = Callable[[Request, Any], Awaitable[JSONResponse]]
_BODY_METHODS = ("POST", "PUT", "PATCH")


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == JSON_MEDIA_TYPE or (media.startswith(b"application/") and media.endswith(b"+json"))


class JsonBodyMiddleware:
    """Request bodies are JSON whatever the Content-Type header says: the header is set to
    ``application/json`` before routing, so FastAPI parses the body instead of refusing a form (the
    OIP binary extension reads the raw body itself and does not look at the header)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") in _BODY_METHODS:
            headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
            original = [v for k, v in scope.get("headers") or [] if k == b"content-type"]
            if not (len(original) == 1 and _is_json(original[0])):
                scope = {**scope, "headers": [*headers, (b"content-type", JSON_MEDIA_TYPE)]}
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Read the whole body before anything parses it: over ``limit`` bytes is refused with 413, a body
    not complete ``timeout_s`` after the request started (a stalled or trickling client) with 408."""

    def __init__(self, app: Any, limit: int, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"body_timeout_s must be > 0, got {timeout_s}")
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                await self._refuse_too_large(scope, send)
                return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        chunks, size = [], 0
        more = True
        while more:
            try:
                message = await _within(receive(), deadline)
            except asyncio.TimeoutError:
                message = f"request body not received within {self.timeout_s:g} s: send the whole body at once"
                await _send_error(scope, send, 408, "request_timeout", message)
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse_too_large(scope, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        await self.app(scope, replay_body(b"".join(chunks), receive), send)

    async def _refuse_too_large(self, scope: dict, send: Any) -> None:
        message = f"request body over {self.limit} bytes: send fewer or shorter texts"
        await _send_error(scope, send, 413, PayloadTooLarge.code, message)


def replay_body(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands out the already read ``body`` whole, then defers to the original (which
    reports the disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _within(awaitable: Any, deadline: float) -> Any:
    """``await awaitable``, or TimeoutError at loop time ``deadline``. On Python 3.11+ through
    ``asyncio.timeout``, which runs it in the calling task: ``wait_for`` wraps it in a new task, a cost
    paid on every request here."""
    timeout_at = getattr(asyncio, "timeout_at", None)
    if timeout_at is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, max(0.0, deadline - asyncio.get_running_loop().time()))
    async with timeout_at(deadline):
        return await awaitable


async def _send_error(scope: dict, send: Any, status: int, code: str, message: str) -> None:
    """An error answered below FastAPI (no Request yet), in the body shape of the request's protocol;
    the connection is closed, since the rest of the body is left unread."""
    if scope.get("path", "").startswith(OIP_PREFIX):
        body = json.dumps({"error": message}).encode()
    else:
        body = json.dumps(ServingError(message, status=status, code=code).to_dict()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON_MEDIA_TYPE),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    if request.url.path.startswith(OIP_PREFIX):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed_json", "the request body is not valid JSON"
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "invalid_request", "; ".join(parts) + more


def _count(request: Request, code: str) -> None:
    request.app.state.service.metrics.errors.labels(code).inc()


async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    _count(request, exc.code)
    return _error_response(request, exc.status, exc.code, exc.message, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    status, code, message = _validation_message(exc)
    _count(request, code)
    return _error_response(request, status, code, message)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 400 and "parsing the body" in message:
        # FastAPI's answer to a body json.loads refuses beyond a syntax error: not UTF-8, nested past
        # Python's recursion limit, or an integer over Python's digit limit.
        code, message = (
            "malformed_json",
            "the request body is not valid JSON (UTF-8, nested at most a few hundred deep)",
        )
    _count(request, code)
    return _error_response(request, exc.status_code, code, message, getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    _count(request, "internal_error")
    return _error_response(request, 500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")


# The exception types a route may raise and their answers; anything else is ``_unexpected`` (500).
_ROUTE_ERROR_HANDLERS: dict[type[Exception], ErrorHandler] = {
    ServingError: _serving_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
}


def route_error_handler(exc: Exception) -> ErrorHandler | None:
    """The handler the app answers ``exc`` with (looked up along its class hierarchy, as Starlette does),
    or None for an unexpected error, which the server-error middleware answers with 500."""
    for cls in type(exc).__mro__:
        handler = _ROUTE_ERROR_HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Turn every exception into the JSON error body, counted by code in the service's metrics."""
    for cls, handler in _ROUTE_ERROR_HANDLERS.items():
        app.add_exception_handler(cls, handler)
    app.add_exception_handler(Exception, _unexpected)
