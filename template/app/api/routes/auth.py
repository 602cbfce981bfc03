"""Registration, login, sessions' tokens, password resets and email verification."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Header, Response, status

from app.api.deps import (
    AccountMailDep,
    ClientAddress,
    CurrentUser,
    HasherDep,
    RecentRefusalsDep,
    SettingsDep,
    TokenServiceDep,
    UnitOfWorkDep,
)
from app.schemas.common import error
from app.schemas.user import (
    Accepted,
    EmailVerification,
    LoginForm,
    PasswordReset,
    PasswordResetRequest,
    RefreshRequest,
    Token,
    UserCreate,
    UserPublic,
)
from app.services.auth import AuthService
from app.services.recovery import RecoveryService
from app.services.session import Client, TokenPair

router = APIRouter(prefix="/auth", tags=["auth"])


async def get_auth_service(
    uow: UnitOfWorkDep,
    hasher: HasherDep,
    tokens: TokenServiceDep,
    settings: SettingsDep,
    refusals: RecentRefusalsDep,
    mail: AccountMailDep,
) -> AuthService:
    return AuthService(uow, hasher, tokens, settings, refusals, mail)


async def get_recovery_service(
    uow: UnitOfWorkDep, hasher: HasherDep, mail: AccountMailDep, refusals: RecentRefusalsDep
) -> RecoveryService:
    return RecoveryService(uow, hasher, mail, refusals)


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]
RecoveryServiceDep = Annotated[RecoveryService, Depends(get_recovery_service)]
INVALID_LINK = error("Invalid, used or expired token: the same answer for each")
BUSY = error("Too many logins and registrations are waiting for a password check; see Retry-After")
RESET_ACCEPTED = "If the address belongs to an account, a link to reset its password is on its way"
VERIFY_ACCEPTED = "Unless the email is verified already, a link to verify it is on its way"


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
    """Create an account with the least privileged role; a link to verify the email is
    sent to it."""
    return UserPublic.model_validate(await service.register(data, address))


@router.post(
    "/login",
    responses={
        401: error("Wrong email or password"),
        403: error("Right password, but the email is not verified (REQUIRE_VERIFIED_EMAIL)"),
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


@router.post("/password-reset", status_code=status.HTTP_202_ACCEPTED)
async def request_password_reset(
    body: PasswordResetRequest, service: RecoveryServiceDep
) -> Accepted:
    """Email a link to reset the password, if the address is an active account's. The
    answer is the same, and as fast, whether it is or not; at most
    PASSWORD_RESET_MAX_PER_HOUR emails go to one account per hour."""
    service.request_password_reset(body.email)
    return Accepted(detail=RESET_ACCEPTED)


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={400: INVALID_LINK, 503: BUSY},
)
async def reset_password(body: PasswordReset, service: RecoveryServiceDep) -> Response:
    """Set a new password with the token from a reset link. Every session of the account
    ends, and its login lockout is lifted."""
    await service.reset_password(body.token, body.new_password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/verify-email", status_code=status.HTTP_204_NO_CONTENT, responses={400: INVALID_LINK})
async def verify_email(body: EmailVerification, service: RecoveryServiceDep) -> Response:
    """Confirm the account's email with the token from a verification link."""
    await service.verify_email(body.token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/verify-email/resend",
    status_code=status.HTTP_202_ACCEPTED,
    responses={401: error("Missing, invalid or expired token")},
)
async def resend_verification(user: CurrentUser, service: RecoveryServiceDep) -> Accepted:
    """Email a new verification link, unless the email is verified already; at most
    EMAIL_VERIFY_MAX_PER_HOUR per hour."""
    service.resend_verification(user)
    return Accepted(detail=VERIFY_ACCEPTED)


def _token(pair: TokenPair, response: Response) -> Token:
    response.headers["Cache-Control"] = "no-store"  # tokens are never cached (RFC 6749)
    return Token(
        access_token=pair.access.token,
        expires_in=pair.access.expires_in,
        refresh_token=pair.refresh_token,
        refresh_expires_in=pair.refresh_expires_in,
    )
