"""FastAPI dependencies: the session, settings, services and the current user."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.client import ClientAddresses
from app.core.config import Settings
from app.core.db import Database
from app.core.roles import ADMIN_ROLE, Role
from app.core.security import InvalidTokenError, PasswordHasher, TokenService
from app.models.user import Principal
from app.repositories.user import read_principal
from app.services.errors import NotAuthenticated, PermissionDenied

LOGIN_PATH = "/api/v1/auth/login"


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A transactional session, for requests that write."""
    async with request.app.state.database.sessionmaker() as session:
        yield session


# Dependencies are `async def` even when they do not await: FastAPI runs a plain `def`
# dependency in its thread pool, a thread hop per dependency per request.


async def get_database(request: Request) -> Database:
    """The database, for work outside the request's session: Database.read, and
    Database.write_one for a change with nothing to load first."""
    database: Database = request.app.state.database
    return database


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_password_hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.password_hasher
    return hasher


async def get_token_service(request: Request) -> TokenService:
    tokens: TokenService = request.app.state.token_service
    return tokens


async def get_client_address(request: Request) -> str:
    """The client's address: the peer, or whom a trusted proxy forwarded for."""
    addresses: ClientAddresses = request.app.state.client_addresses
    peer = request.client.host if request.client else None
    return addresses.resolve(peer, request.headers.getlist("x-forwarded-for"))


SessionDep = Annotated[AsyncSession, Depends(get_session)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
HasherDep = Annotated[PasswordHasher, Depends(get_password_hasher)]
TokenServiceDep = Annotated[TokenService, Depends(get_token_service)]
ClientAddress = Annotated[str, Depends(get_client_address)]

# auto_error=False: a missing token is reported by get_current_user, in the same
# shape as an invalid one.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl=LOGIN_PATH, auto_error=False)


async def get_current_user(
    request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Principal:
    """The user the bearer token names, read from the database on every request.

    The role and active flag come from the database, not from the token, so a demoted,
    deactivated or deleted user loses access at once. The read gives its connection back
    at once, so a request never holds two. (The token service and the database are
    taken from the app directly: every dependency costs time on every request.)
    """
    if not token:
        raise NotAuthenticated()
    tokens: TokenService = request.app.state.token_service
    database: Database = request.app.state.database
    try:
        claims = tokens.read(token)
    except InvalidTokenError:
        raise NotAuthenticated("Invalid or expired token") from None
    user = await database.read(read_principal, claims.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("Invalid or expired token")
    return user


CurrentUser = Annotated[Principal, Depends(get_current_user)]


def require_role(minimum: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits `minimum` and every role above it."""

    async def dependency(user: CurrentUser) -> Principal:
        role = Role.parse(user.role)
        if role is None or not role.includes(minimum):
            raise PermissionDenied()
        return user

    return dependency


AdminUser = Annotated[Principal, Depends(require_role(ADMIN_ROLE))]
