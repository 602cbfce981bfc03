"""Registration and login."""

from typing import Annotated

from fastapi import APIRouter, Depends, status
from fastapi.security import OAuth2PasswordRequestForm

from app.api.deps import HasherDep, SessionDep, SettingsDep, TokenServiceDep
from app.schemas.common import error
from app.schemas.user import Token, UserCreate, UserPublic
from app.services.auth import AuthService

router = APIRouter(prefix="/auth", tags=["auth"])


async def get_auth_service(
    session: SessionDep, hasher: HasherDep, tokens: TokenServiceDep, settings: SettingsDep
) -> AuthService:
    return AuthService(session, hasher, tokens, settings)


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={409: error("The email is already registered")},
)
async def register(data: UserCreate, service: AuthServiceDep) -> UserPublic:
    """Create an account with the least privileged role."""
    return UserPublic.model_validate(await service.register(data))


@router.post(
    "/login",
    responses={
        401: error("Wrong email or password"),
        429: error("Too many failed attempts for this account; see Retry-After"),
    },
)
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], service: AuthServiceDep
) -> Token:
    """Exchange email (as `username`) and password for a bearer token."""
    token = await service.login(form.username, form.password)
    return Token(access_token=token.token, expires_in=token.expires_in)
