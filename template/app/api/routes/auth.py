"""Registration and login."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Header, Response, status

from app.api.deps import (
    ClientAddress,
    CurrentUser,
    HasherDep,
    RecentRefusalsDep,
    SettingsDep,
    TokenServiceDep,
    UnitOfWorkDep,
)
from app.schemas.common import error
from app.schemas.user import LoginForm, RefreshRequest, Token, UserCreate, UserPublic
from app.services.auth import AuthService
from app.services.session import Client, TokenPair

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
    form: Annotated[LoginForm, Form()],
    service: AuthServiceDep,
    address: ClientAddress,
    response: Response,
    user_agent: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Token:
    """Exchange email (as `username`) and password for a bearer token and a refresh
    token: a new session."""
    pair = await service.login(form.username, form.password, Client.of(user_agent, address))
    return _token(pair, response)


@router.post("/refresh", responses={401: error("Invalid, expired, spent or revoked token")})
async def refresh(body: RefreshRequest, service: AuthServiceDep, response: Response) -> Token:
    """Spend a refresh token for a new pair. A refresh token works once: presenting a
    spent one again ends its session, for whoever holds its tokens."""
    return _token(await service.refresh(body.refresh_token), response)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={401: error("Missing, invalid or expired token")},
)
async def logout(user: CurrentUser, service: AuthServiceDep) -> Response:
    """End this token's session: its access and refresh tokens stop working."""
    await service.logout(user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _token(pair: TokenPair, response: Response) -> Token:
    response.headers["Cache-Control"] = "no-store"  # tokens are never cached (RFC 6749)
    return Token(
        access_token=pair.access.token,
        expires_in=pair.access.expires_in,
        refresh_token=pair.refresh_token,
        refresh_expires_in=pair.refresh_expires_in,
    )
