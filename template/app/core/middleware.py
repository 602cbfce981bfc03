"""ASGI middleware: request ids and access logging, security headers, body size limit.

Written as plain ASGI callables rather than BaseHTTPMiddleware, which costs a task and
a stream copy per request.
"""

import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logging import JsonLineHandler
from app.core.logging import request_id as current_request_id

logger = logging.getLogger("app.access")
# What a 503 tells the client to wait before trying again.
RETRY_AFTER_SECONDS = 5
BUSY_DETAIL = "The service is busy; try again shortly"
REQUEST_ID_HEADER = "X-Request-ID"
# Accept a caller's request id only if it is short and harmless in logs and headers.
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestLogMiddleware:
    """Gives each request an id (the caller's X-Request-ID or a new one), which every line
    logged while answering it carries, and logs the request once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        context = current_request_id.set(request_id)
        started = time.perf_counter()
        status_code = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(context)
            if logger.isEnabledFor(logging.INFO):
                _log_request(scope, status_code, started, request_id, state)


def _log_request(
    scope: Scope, status: int, started: float, request_id: str, state: dict[str, Any]
) -> None:
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    method = scope["method"]
    path = scope["path"]
    user_id = state.get("user_id")
    message = f"{method} {path} {status} {duration_ms:.2f}ms"
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        # The template (`/api/v1/items/{item_id}`); None for no route.
        "route": route_template(scope),
        "status": status,
        "duration_ms": duration_ms,
        # Set by get_current_user (app/api/deps.py) for a signed-in caller.
        "user_id": None if user_id is None else str(user_id),
    }
    # In production, with logging as configure_logging() left it, the service's own
    # handler writes the line itself: the same bytes, at a quarter of the cost of a
    # record. With anything else attached (a team's handler, a filter, pytest's caplog,
    # tracing's ids), the line goes through logging as every other.
    handlers = logging.root.handlers
    direct = handlers[0] if len(handlers) == 1 else None
    if isinstance(direct, JsonLineHandler) and direct.write_fields(logger, message, fields):
        return
    # What Logger.info does, less the search for its caller (which no line shows) and
    # the check that no `extra` field overwrites one of the record's own.
    record = logger.makeRecord(
        logger.name, logging.INFO, "(unknown file)", 0, message, (), None, "(unknown function)"
    )
    record.__dict__.update(fields)
    logger.handle(record)


# Endpoint function -> the template of its route's path, learnt from the application.
_route_templates: dict[Any, str] = {}


def route_template(scope: Scope) -> str | None:
    """The template of the path of the route that answered (`/api/v1/users/{user_id}`),
    or None when no route matched. Read after the application has answered."""
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return None
    template = _route_templates.get(endpoint)
    if template is None:
        # Included routers keep their routes' paths relative to their prefix: the
        # application's route contexts hold the full ones.
        for route in iter_route_contexts(scope["app"].routes):
            if route.endpoint is not None and route.path_format is not None:
                _route_templates.setdefault(route.endpoint, route.path_format)
        # Never the path itself: that would make a series per id.
        template = _route_templates.setdefault(
            endpoint, getattr(scope.get("route"), "path_format", "")
        )
    return template or None


def busy_response() -> JSONResponse:
    """The 503 of a service too busy to take the request now."""
    return JSONResponse(
        {"detail": BUSY_DETAIL},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def send_json(
    send: Send, status: int, body: bytes, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """Answer with a ready-made JSON `body`, from middleware that runs outside FastAPI."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header; `name` in lower case, as ASGI gives it."""
    return next((value for key, value in scope["headers"] if key == name), None)


def _incoming_request_id(scope: Scope) -> str | None:
    value = _header(scope, b"x-request-id")
    if value is None:
        return None
    candidate = value.decode("latin-1")
    return candidate if _REQUEST_ID_PATTERN.match(candidate) else None


class UnhandledErrorMiddleware:
    """The last line of defence: an exception nothing else handled is logged with its
    traceback and answered with a bare 500, so no client ever sees a stack trace.

    It sits inside the CORS and header middleware, so the 500 carries their headers too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            request_id = scope.get("state", {}).get("request_id")
            logger.exception("unhandled error", extra={"request_id": request_id})
            if response_started:
                raise
            # The request id lets whoever reports the error point at its log record.
            body = {"detail": "Internal server error", "request_id": request_id}
            await send_json(send, 500, json.dumps(body).encode())


class SecurityHeadersMiddleware:
    """Headers a JSON API should send; API responses are never cached or framed."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.common = [
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
            ("Cross-Origin-Opener-Policy", "same-origin"),
        ]
        if hsts:
            self.common.append(("Strict-Transport-Security", "max-age=63072000; includeSubDomains"))
        self.api = [
            ("Cache-Control", "no-store"),
            ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The Swagger UI at /docs loads scripts, so the strict policy is for the API only.
        extra = self.api if scope["path"].startswith("/api/") else []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in (*self.common, *extra):
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodySizeLimitMiddleware:
    """Answers 413 to a request body over `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(send)
            return
        received = 0
        rejected = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not response_started:
                    # Answer now; to the application the client has gone away.
                    rejected = True
                    await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if rejected:
                return  # the 413 has been sent; drop whatever the application answers
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not rejected:
                raise

    async def _reject(self, send: Send) -> None:
        body = json.dumps(
            {"detail": f"Request body is larger than {self.max_bytes} bytes"}
        ).encode()
        await send_json(send, 413, body, ((b"connection", b"close"),))


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None
