"""The current user's account, and user administration."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from app.api.deps import AccountMailDep, CurrentUser, HasherDep, RequireAdmin, UnitOfWorkDep
from app.api.routes import sessions
from app.schemas.common import Page, PageParams, Responses, error
from app.schemas.user import PasswordChange, UserAdminUpdate, UserPublic, UserSelfUpdate
from app.services.user import UserService

router = APIRouter(
    prefix="/users", tags=["users"], responses={401: error("Missing, invalid or expired token")}
)
UserPage = Page[UserPublic]
ADMIN_ONLY: Responses = {403: error("Only the administrator may do this")}


async def get_user_service(
    uow: UnitOfWorkDep, hasher: HasherDep, mail: AccountMailDep
) -> UserService:
    return UserService(uow, hasher, mail)


UserServiceDep = Annotated[UserService, Depends(get_user_service)]


@router.get("/me")
async def read_me(user: CurrentUser) -> UserPublic:
    return UserPublic.model_validate(user)


@router.patch(
    "/me",
    responses={
        401: error("Missing or invalid token, or a new email without the right current_password"),
        409: error("The email is already registered"),
    },
)
async def update_me(
    changes: UserSelfUpdate, user: CurrentUser, service: UserServiceDep
) -> UserPublic:
    """Change your own email or name. Role and active flag are not yours to change.

    A new email needs `current_password`. It starts unverified: a verification link goes
    to it, and a notice of the change to the old address."""
    return UserPublic.model_validate(await service.update_self(user.id, changes))


@router.post(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={401: error("The current password is wrong")},
)
async def change_password(
    change: PasswordChange, user: CurrentUser, service: UserServiceDep
) -> Response:
    """Change your password. Your other sessions end; this one goes on."""
    await service.change_password(user, change)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("", responses=ADMIN_ONLY, dependencies=[RequireAdmin])
async def list_users(
    service: UserServiceDep, page: Annotated[PageParams, Query()]
) -> Page[UserPublic]:
    users, total = await service.page(page.offset, page.limit)
    # One validation of the whole page, from dicts: far cheaper than one call per row.
    return UserPage.model_validate({"items": users, "total": total})


@router.get(
    "/{user_id:uuid}",
    responses={**ADMIN_ONLY, 404: error("No such user")},
    dependencies=[RequireAdmin],
)
async def read_user(user_id: uuid.UUID, service: UserServiceDep) -> UserPublic:
    return UserPublic.model_validate(await service.get(user_id))


@router.patch(
    "/{user_id:uuid}",
    responses={
        **ADMIN_ONLY,
        404: error("No such user"),
        409: error("It would leave no active administrator"),
    },
    dependencies=[RequireAdmin],
)
async def update_user(
    user_id: uuid.UUID, changes: UserAdminUpdate, service: UserServiceDep
) -> UserPublic:
    return UserPublic.model_validate(await service.administer(user_id, changes))


@router.delete(
    "/{user_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **ADMIN_ONLY,
        404: error("No such user"),
        409: error("It would leave no active administrator"),
    },
    dependencies=[RequireAdmin],
)
async def delete_user(user_id: uuid.UUID, service: UserServiceDep) -> Response:
    await service.delete(user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# The current user's sessions: /users/me/sessions.
router.include_router(sessions.router)
