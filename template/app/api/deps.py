"""FastAPI dependencies: the unit of work, settings, services' tools and the current user.

Each is a dependency of its own, so that `app.dependency_overrides` can replace any of
them (tests do). They are `async def` even when they do not await: FastAPI runs a plain
`def` dependency in its thread pool, a thread hop per dependency per request.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from app.core.client import ClientAddresses
from app.core.config import Settings
from app.core.db import Database, UnitOfWork
from app.core.roles import ADMIN_ROLE, Role
from app.core.security import PasswordHasher, TokenService
from app.models.user import Principal
from app.services.account_mail import AccountMail
from app.services.auth import Authenticator
from app.services.errors import PermissionDenied
from app.services.throttle import RecentRefusals

LOGIN_PATH = "/api/v1/auth/login"


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_unit_of_work(database: Annotated[Database, Depends(get_database)]) -> UnitOfWork:
    """The request's unit of work. It holds a connection only inside the transaction
    blocks of the services, so it needs no teardown (a dependency with `yield` costs
    every request that uses it)."""
    return UnitOfWork(database)


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_password_hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.password_hasher
    return hasher


async def get_token_service(request: Request) -> TokenService:
    tokens: TokenService = request.app.state.token_service
    return tokens


async def get_recent_refusals(request: Request) -> RecentRefusals:
    refusals: RecentRefusals = request.app.state.recent_refusals
    return refusals


async def get_account_mail(request: Request) -> AccountMail:
    mail: AccountMail = request.app.state.account_mail
    return mail


async def get_client_address(request: Request) -> str:
    """The client's address: the peer, or whom a trusted proxy forwarded for."""
    addresses: ClientAddresses = request.app.state.client_addresses
    peer = request.client.host if request.client else None
    return addresses.resolve(peer, request.headers.getlist("x-forwarded-for"))


DatabaseDep = Annotated[Database, Depends(get_database)]
UnitOfWorkDep = Annotated[UnitOfWork, Depends(get_unit_of_work)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
HasherDep = Annotated[PasswordHasher, Depends(get_password_hasher)]
TokenServiceDep = Annotated[TokenService, Depends(get_token_service)]
RecentRefusalsDep = Annotated[RecentRefusals, Depends(get_recent_refusals)]
AccountMailDep = Annotated[AccountMail, Depends(get_account_mail)]
ClientAddress = Annotated[str, Depends(get_client_address)]

# auto_error=False: a missing token is reported by get_current_user, in the same
# shape as an invalid one.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl=LOGIN_PATH, auto_error=False)


async def get_current_user(
    request: Request,
    token: Annotated[str | None, Depends(oauth2_scheme)],
    tokens: TokenServiceDep,
    database: DatabaseDep,
) -> Principal:
    """The user the bearer token names; 401 for a missing, invalid or expired token, or
    an unknown or inactive user.

    Every request runs this; it reads through a unit of work of its own, on the fast
    path. The request log names the caller by this id (app/core/middleware.py).
    """
    user = await Authenticator(UnitOfWork(database), tokens).caller(token)
    request.state.user_id = user.id
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


_require_admin = require_role(ADMIN_ROLE)
AdminUser = Annotated[Principal, Depends(_require_admin)]
# For routes that need the caller to be the administrator but not the caller itself:
# `dependencies=[RequireAdmin]`. The same dependency as AdminUser's, so FastAPI runs it
# once per request whichever a route uses.
RequireAdmin = Depends(_require_admin)
