"""The current user's sign-in sessions."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from app.api.deps import CurrentUser, SettingsDep, TokenServiceDep, UnitOfWorkDep
from app.schemas.common import error
from app.schemas.user import SessionPublic
from app.services.session import SessionService

# Included by the users router (app/api/routes/users.py), under /users.
router = APIRouter(
    prefix="/me/sessions",
    tags=["sessions"],
    responses={401: error("Missing, invalid or expired token")},
)


async def get_session_service(
    uow: UnitOfWorkDep, tokens: TokenServiceDep, settings: SettingsDep
) -> SessionService:
    return SessionService(uow, tokens, settings)


SessionServiceDep = Annotated[SessionService, Depends(get_session_service)]


@router.get("")
async def list_sessions(user: CurrentUser, service: SessionServiceDep) -> list[SessionPublic]:
    """Your open sessions, newest first; `current` marks this request's."""
    return [SessionPublic.model_validate(s) for s in await service.list_open(user)]


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_other_sessions(user: CurrentUser, service: SessionServiceDep) -> Response:
    """Sign out everywhere else: every session but this request's is revoked."""
    await service.revoke_others(user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/{session_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: error("No such open session of yours")},
)
async def revoke_session(
    session_id: uuid.UUID, user: CurrentUser, service: SessionServiceDep
) -> Response:
    """Revoke one of your sessions: its access and refresh tokens stop working."""
    await service.revoke(user, session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
