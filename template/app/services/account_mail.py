"""Emails about accounts, each prepared and sent in the background after the answer:
whether the account exists and a limit allows one more, then the token, then the message.

Doing the lookup there, not in the request, is what makes a password reset answer alike
and as fast for an address that has an account and for one that has not.
"""

import hashlib
import logging
import secrets
import uuid
from datetime import timedelta
from functools import partial

from app.core import project
from app.core.background import BackgroundWork
from app.core.config import Settings
from app.core.db import Database, UnitOfWork
from app.core.mail import Mailer, recipient_domain
from app.models.account_token import AccountToken, TokenPurpose
from app.models.types import utcnow
from app.models.user import User
from app.repositories.account_token import AccountTokenRepository
from app.repositories.throttle import CounterKey
from app.repositories.user import UserRepository
from app.services.session import token_digest
from app.services.throttle import AttemptLimiter, Limit

logger = logging.getLogger(__name__)

# Scopes of the attempt counters (app/models/throttle.py) that limit emails per address.
RESET_EMAILS = "password-reset"
VERIFY_EMAILS = "verify-email"
EMAIL_WINDOW = timedelta(hours=1)
# 32 random bytes, URL-safe base64 without padding: 43 characters.
LINK_TOKEN_BYTES = 32


def password_stamp(hashed_password: str) -> str:
    """What a reset token remembers of the password it may replace. Every new password
    gets a new hash (a new salt), so any change of password voids the token."""
    return hashlib.sha256(hashed_password.encode()).hexdigest()


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    if minutes % 60:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = minutes // 60
    return f"{hours} hour{'s' if hours != 1 else ''}"


class AccountMail:
    """Queues the emails of the account flows. Each job runs on a unit of work of its
    own, so it outlives the request that asked for it."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        mailer: Mailer | None = None,
        background: BackgroundWork | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.mailer = mailer or Mailer(settings)
        self.background = background or BackgroundWork()
        self.reset_lifetime = timedelta(minutes=settings.password_reset_expire_minutes)
        self.verify_lifetime = timedelta(hours=settings.email_verify_expire_hours)

    def password_reset(self, email: str) -> None:
        """A reset link to `email`, if it is an active account's address."""
        self.background.submit(partial(self._password_reset, email), "password reset email")

    def verification(self, user_id: uuid.UUID) -> None:
        """A verification link to the user's address, unless it is verified already."""
        self.background.submit(partial(self._verification, user_id), "verification email")

    def email_changed(self, user_id: uuid.UUID, old_email: str, new_email: str) -> None:
        """A verification link to the new address, and a notice to the old one."""
        self.verification(user_id)
        self.background.submit(
            partial(self._email_changed, old_email, new_email), "email change notice"
        )

    async def join(self) -> None:
        """Wait until every email queued so far is sent or given up on."""
        await self.background.join()

    async def close(self) -> None:
        await self.background.close()

    async def _password_reset(self, email: str) -> None:
        uow = UnitOfWork(self.database)
        async with uow.transaction():
            user = await UserRepository(uow).load_by_email(email, for_update=True)
            if user is None or not user.is_active:
                return
            limit = self.settings.password_reset_max_per_hour
            if not await self._allowed(uow, RESET_EMAILS, email, limit):
                return
            stamp = password_stamp(user.hashed_password)
            token = await self._issue(
                uow, user, TokenPurpose.PASSWORD_RESET, self.reset_lifetime, stamp
            )
        message = self.mailer.templates.render(
            "password_reset",
            to=email,
            subject=f"Reset your {project.NAME} password",
            link=self._link("reset-password", token),
            expires=_duration(self.reset_lifetime),
        )
        await self.mailer.deliver(message)

    async def _verification(self, user_id: uuid.UUID) -> None:
        uow = UnitOfWork(self.database)
        async with uow.transaction():
            user = await UserRepository(uow).load(user_id, for_update=True)
            if user is None or not user.is_active or user.email_verified:
                return
            email = user.email
            if not await self._allowed(
                uow, VERIFY_EMAILS, email, self.settings.email_verify_max_per_hour
            ):
                return
            token = await self._issue(uow, user, TokenPurpose.VERIFY_EMAIL, self.verify_lifetime)
        message = self.mailer.templates.render(
            "verify_email",
            to=email,
            subject=f"Confirm your email address for {project.NAME}",
            email=email,
            link=self._link("verify-email", token),
            expires=_duration(self.verify_lifetime),
        )
        await self.mailer.deliver(message)

    async def _email_changed(self, old_email: str, new_email: str) -> None:
        message = self.mailer.templates.render(
            "email_changed",
            to=old_email,
            subject=f"The email address of your {project.NAME} account changed",
            old_email=old_email,
            new_email=new_email,
        )
        await self.mailer.deliver(message)

    async def _allowed(self, uow: UnitOfWork, scope: str, email: str, most: int) -> bool:
        """Count one email to `email` against `most` per hour; False when over it."""
        limit = Limit(CounterKey(scope, email=email), most, EMAIL_WINDOW)
        refusal = await AttemptLimiter(uow).count([limit], utcnow(), in_flight=False)
        if refusal is not None:
            logger.info(
                "%s email to someone at %s not sent: hourly limit", scope, recipient_domain(email)
            )
        return refusal is None

    async def _issue(
        self,
        uow: UnitOfWork,
        user: User,
        purpose: TokenPurpose,
        lifetime: timedelta,
        stamp: str = "",
    ) -> str:
        """A new token of `purpose` for the user's address, replacing their older ones."""
        token = secrets.token_urlsafe(LINK_TOKEN_BYTES)
        now = utcnow()
        row = AccountToken(
            token_hash=token_digest(token),
            user_id=user.id,
            purpose=purpose.value,
            email=user.email,
            password_stamp=stamp,
            created_at=now,
            expires_at=now + lifetime,
        )
        await AccountTokenRepository(uow).replace(row)
        return token

    def _link(self, page: str, token: str) -> str:
        # The token is URL-safe base64: it needs no escaping in a query string.
        return f"{self.settings.frontend_url}/{page}?token={token}"
