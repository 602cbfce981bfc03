"""The application: middleware, routers, error handlers and lifespan."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from app.api.router import api_router
from app.api.routes import health
from app.core import project, tracing
from app.core.client import ClientAddresses
from app.core.config import Settings, load_settings
from app.core.db import Database
from app.core.dialect import is_unavailable
from app.core.logging import configure_logging
from app.core.middleware import (
    REQUEST_ID_HEADER,
    RETRY_AFTER_SECONDS,
    BodySizeLimitMiddleware,
    RequestLogMiddleware,
    SecurityHeadersMiddleware,
    UnhandledErrorMiddleware,
    busy_response,
)
from app.core.security import HashingBusy, PasswordHasher, TokenService
from app.runtime import admission, metrics
from app.runtime.garbage import tune_garbage_collection
from app.runtime.threads import lower_thread_priority
from app.services import errors
from app.services.account_mail import AccountMail
from app.services.throttle import RecentRefusals

logger = logging.getLogger(__name__)

# Most specific first: the first matching class decides the status code.
ERROR_STATUS: tuple[tuple[type[errors.DomainError], int], ...] = (
    (errors.InvalidInput, status.HTTP_400_BAD_REQUEST),
    (errors.NotFound, status.HTTP_404_NOT_FOUND),
    (errors.Conflict, status.HTTP_409_CONFLICT),
    (errors.NotAuthenticated, status.HTTP_401_UNAUTHORIZED),
    (errors.PermissionDenied, status.HTTP_403_FORBIDDEN),
    (errors.TooManyAttempts, status.HTTP_429_TOO_MANY_REQUESTS),
)


def create_app(settings: Settings) -> FastAPI:
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tune_garbage_collection()
        yield
        await app.state.account_mail.close()  # the emails still queued go out first
        await app.state.database.dispose()
        app.state.password_hasher.close()

    app = FastAPI(
        title=project.NAME,
        description=project.DESCRIPTION,
        version=project.VERSION,
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    app.state.settings = settings
    app.state.database = Database(settings)
    app.state.password_hasher = PasswordHasher(
        settings.bcrypt_rounds,
        queue_limit=settings.hashing_queue_limit,
        thread_initializer=lower_thread_priority,
    )
    app.state.client_addresses = ClientAddresses(settings.trusted_proxies)
    app.state.recent_refusals = RecentRefusals()
    app.state.token_service = TokenService(settings)
    app.state.account_mail = AccountMail(app.state.database, settings)

    app.include_router(health.router)
    app.include_router(api_router)
    _add_error_handlers(app)

    # Added last runs first. From the outside in: the request metrics and the request log
    # see every response;
    # security and CORS headers go on every response, 503, 413 and 500 included; requests
    # beyond what the connection pool can serve wait at the door.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    admission.install(app, settings)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        # Never credentials with a wildcard (browsers would get every origin reflected);
        # production refuses "*" altogether.
        allow_credentials="*" not in settings.cors_origins,
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
        expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        max_age=600,
    )
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.is_production)
    app.add_middleware(RequestLogMiddleware)
    metrics.install(app, settings)
    tracing.install(app, settings)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.DomainError)  # noqa: S101  # registered for DomainError
        code = next(code for kind, code in ERROR_STATUS if isinstance(exc, kind))
        headers: dict[str, str] = {}
        if code == status.HTTP_401_UNAUTHORIZED:
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, errors.TooManyAttempts):
            headers["Retry-After"] = str(exc.retry_after_seconds)
        return JSONResponse({"detail": exc.message}, status_code=code, headers=headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101
        # Say what is wrong without echoing the submitted values (passwords among them).
        detail = [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)  # noqa: S101
        if exc.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        # Starlette names only the first route matching the path; list every method the
        # path supports, as the OpenAPI document does.
        methods = [
            method
            for method in _HTTP_METHODS
            if any(
                route.matches({**request.scope, "method": method})[0] is Match.FULL
                for route in app.router.routes
            )
        ]
        return JSONResponse(
            {"detail": exc.detail}, exc.status_code, headers={"Allow": ", ".join(methods)}
        )

    async def busy(request: Request, exc: Exception) -> JSONResponse:
        return busy_response()

    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        logger.error("database unavailable: %s: %s", type(exc).__name__, getattr(exc, "orig", exc))
        return JSONResponse(
            {"detail": "The database is unavailable; try again shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        # Only a failure to reach the database is an outage; any other error is a bug,
        # answered with a 500 and logged with its traceback (app/core/middleware.py).
        assert isinstance(exc, DBAPIError)  # noqa: S101  # registered for DBAPIError
        if is_unavailable(exc):
            return await database_unavailable(request, exc)
        raise exc

    app.add_exception_handler(errors.DomainError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, method_not_allowed)
    app.add_exception_handler(HashingBusy, busy)
    app.add_exception_handler(DBAPIError, database_error)
    for kind in _DATABASE_UNREACHABLE:
        app.add_exception_handler(kind, database_unavailable)


_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

# Failures to get a connection at all: none free in the pool in time, or the server
# refused, reset or never answered the connection.
_DATABASE_UNREACHABLE: tuple[type[Exception], ...] = (PoolTimeoutError, ConnectionError)


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` builds the app on first access, so importing this module
    # (in tests, in the CLI) does not require a configured environment.
    if name == "app":
        application = create_app(load_settings())
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
