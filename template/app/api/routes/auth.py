"""Registration and login."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, status

from app.api.deps import (
    ClientAddress,
    HasherDep,
    RecentRefusalsDep,
    SettingsDep,
    TokenServiceDep,
    UnitOfWorkDep,
)
from app.schemas.common import error
from app.schemas.user import LoginForm, Token, UserCreate, UserPublic
from app.services.auth import AuthService

router = APIRouter(prefix="/auth", tags=["auth"])


async def get_auth_service(
    uow: UnitOfWorkDep,
    hasher: HasherDep,
    tokens: TokenServiceDep,
    settings: SettingsDep,
    refusals: RecentRefusalsDep,
) -> AuthService:
    return AuthService(uow, hasher, tokens, settings, refusals)


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]
BUSY = error("Too many logins and registrations are waiting for a password check; see Retry-After")


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={
        409: error("The email is already registered"),
        429: error("Too many registrations from this address; see Retry-After"),
        503: BUSY,
    },
)
async def register(data: UserCreate, service: AuthServiceDep, address: ClientAddress) -> UserPublic:
    """Create an account with the least privileged role."""
    return UserPublic.model_validate(await service.register(data, address))


@router.post(
    "/login",
    responses={
        401: error("Wrong email or password"),
        429: error(
            "Too many failed attempts from this address or for this account; see Retry-After"
        ),
        503: BUSY,
    },
)
async def login(
    form: Annotated[LoginForm, Form()], service: AuthServiceDep, address: ClientAddress
) -> Token:
    """Exchange email (as `username`) and password for a bearer token."""
    token = await service.login(form.username, form.password, address)
    return Token(access_token=token.token, expires_in=token.expires_in)
