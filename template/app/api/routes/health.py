"""Liveness and readiness probes."""

import logging

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)

# A readiness probe answers within a second (probes commonly time out after one).
READY_TIMEOUT_SECONDS = 0.8


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up. Touches nothing else, so it stays cheap under load."""
    return {"status": "ok"}


@router.get(
    "/health/ready",
    responses={503: {"description": "The database cannot be reached"}},
)
async def ready(request: Request) -> JSONResponse:
    """The service can reach its database, even while every pooled connection is busy."""
    try:
        await request.app.state.database.ping(READY_TIMEOUT_SECONDS)
    except (SQLAlchemyError, OSError) as exc:
        # TimeoutError is an OSError.
        logger.warning("readiness check failed: %s", type(exc).__name__)
        return JSONResponse(
            {"status": "unavailable", "database": "unreachable"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    return JSONResponse({"status": "ok", "database": "ok"})
