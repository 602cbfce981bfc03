"""Password resets and email verification: asking for a link, and spending its token."""

import re

from app.core.db import UnitOfWork
from app.core.security import PasswordHasher
from app.models.account_token import AccountToken, TokenPurpose
from app.models.types import utcnow
from app.models.user import Principal, User
from app.repositories.account_token import AccountTokenRepository
from app.repositories.session import SessionRepository
from app.repositories.user import UserRepository
from app.services.account_mail import AccountMail, password_stamp
from app.services.auth import LOGIN, LOGIN_TO_ACCOUNT
from app.services.errors import InvalidLinkToken
from app.services.session import token_digest
from app.services.throttle import AttemptLimiter, RecentRefusals

# What secrets.token_urlsafe(32) gives; anything else is refused before any query.
_LINK_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
# The login counts a reset forgets: the account's, from every address.
LOCKOUT_SCOPES = (LOGIN, LOGIN_TO_ACCOUNT)


def _digest(token: str) -> str:
    if not _LINK_TOKEN.fullmatch(token):
        raise InvalidLinkToken()
    return token_digest(token)


def _still_for(user: User | None, token: AccountToken) -> bool:
    """Whether the token's account still has the address it was sent to."""
    return user is not None and user.is_active and user.email == token.email


class RecoveryService:
    """Each operation is one or two transactions; every refused token is the same
    InvalidLinkToken. A transaction that spends a token locks the user's row first, as
    the jobs that issue tokens do (app/services/account_mail.py), so they never wait
    for each other in opposite orders."""

    def __init__(
        self,
        uow: UnitOfWork,
        hasher: PasswordHasher,
        mail: AccountMail,
        refusals: RecentRefusals,
    ) -> None:
        self.uow = uow
        self.users = UserRepository(uow)
        self.tokens = AccountTokenRepository(uow)
        self.sessions = SessionRepository(uow)
        self.limiter = AttemptLimiter(uow)
        self.hasher = hasher
        self.mail = mail
        self.refusals = refusals

    def request_password_reset(self, email: str) -> None:
        """Email a reset link if `email` is an active account's: decided in the
        background, so the answer is the same and as fast either way."""
        self.mail.password_reset(email)

    async def reset_password(self, token: str, new_password: str) -> None:
        """Set the password a reset token was issued for. The account's sessions end,
        its login lockout is lifted, and its address counts as verified (the link
        reached it)."""
        digest = _digest(token)
        purpose = TokenPurpose.PASSWORD_RESET
        async with self.uow.transaction():
            found = await self.tokens.find_usable(digest, purpose, utcnow())
        if found is None:
            raise InvalidLinkToken()
        # Hashing takes hundreds of milliseconds: no transaction stays open meanwhile.
        hashed = await self.hasher.hash(new_password)
        now = utcnow()
        async with self.uow.transaction():
            user = await self.users.load(found.user_id, for_update=True)
            if (
                user is None
                or not _still_for(user, found)
                or password_stamp(user.hashed_password) != found.password_stamp
                or not await self.tokens.spend(digest, purpose, now)
            ):
                raise InvalidLinkToken()
            user.hashed_password = hashed
            user.email_verified = True
            user.updated_at = now
            await self.users.save(user)
            await self.tokens.void(user.id, purpose)
            await self.sessions.revoke_all(user.id, now)
            await self.limiter.clear(LOCKOUT_SCOPES, user.email)
        # Other processes remember a refusal for a second at most (RecentRefusals).
        self.refusals.forget_account(user.email)

    async def verify_email(self, token: str) -> None:
        """Mark the address a verification token was sent to as the account's own."""
        digest = _digest(token)
        purpose = TokenPurpose.VERIFY_EMAIL
        now = utcnow()
        async with self.uow.transaction():
            found = await self.tokens.find_usable(digest, purpose, now)
            if found is None:
                raise InvalidLinkToken()
            user = await self.users.load(found.user_id, for_update=True)
            if (
                user is None
                or not _still_for(user, found)
                or not await self.tokens.spend(digest, purpose, now)
            ):
                raise InvalidLinkToken()
            user.email_verified = True
            user.updated_at = now
            await self.users.save(user)

    def resend_verification(self, caller: Principal) -> None:
        """Another verification link, unless the address is verified already."""
        if not caller.email_verified:
            self.mail.verification(caller.id)
