"""Registration and login."""

import math
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import Settings
from app.core.roles import DEFAULT_ROLE
from app.core.security import AccessToken, PasswordHasher, TokenService
from app.models.user import User
from app.repositories.errors import DuplicateKeyError
from app.repositories.user import LoginThrottleRepository, UserRepository
from app.schemas.user import UserCreate
from app.services.errors import EmailTaken, InvalidCredentials, TooManyAttempts


class AuthService:
    def __init__(
        self,
        session: AsyncSession,
        hasher: PasswordHasher,
        tokens: TokenService,
        settings: Settings,
    ) -> None:
        self.session = session
        self.users = UserRepository(session)
        self.throttle = LoginThrottleRepository(session)
        self.hasher = hasher
        self.tokens = tokens
        self.max_failures = settings.login_max_failures
        self.lockout = timedelta(minutes=settings.login_lockout_minutes)

    async def register(self, data: UserCreate) -> User:
        """Create a user with the least privileged role; the body cannot choose another."""
        user = User(
            email=data.email,
            full_name=data.full_name,
            hashed_password=await self.hasher.hash(data.password),
            role=DEFAULT_ROLE,
        )
        try:
            await self.users.save(user)
        except DuplicateKeyError:
            raise EmailTaken() from None
        await self.session.commit()
        return user

    async def login(self, email: str, password: str) -> AccessToken:
        email = email.strip().lower()
        now = datetime.now(UTC)
        locked_until = await self.throttle.locked_until(email)
        if locked_until is not None and locked_until > now:
            raise TooManyAttempts(math.ceil((locked_until - now).total_seconds()))
        user = await self.users.get_by_email(email)
        # Hashing takes hundreds of milliseconds: hold no transaction (and no pooled
        # connection) while it runs.
        await self.session.commit()

        if user is None:
            await self.hasher.verify_dummy()
            await self._fail(email, now)
        valid, new_hash = await self.hasher.verify_and_update(password, user.hashed_password)
        if not valid or not user.is_active:
            await self._fail(email, now)

        await self.throttle.clear(email)
        if new_hash is not None:
            # The configured cost changed since this hash was made: upgrade it now that
            # the password is known.
            user.hashed_password = new_hash
            await self.users.save(user)
        await self.session.commit()
        return self.tokens.issue(user.id, user.role)

    async def _fail(self, email: str, now: datetime) -> NoReturn:
        failures = await self.throttle.record_failure(email, now, self.lockout)
        if failures >= self.max_failures:
            await self.throttle.lock(email, now + self.lockout)
        await self.session.commit()
        raise InvalidCredentials()
