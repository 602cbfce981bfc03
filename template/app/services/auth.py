"""Registration and login."""

from datetime import timedelta

from prometheus_client import Counter

from app.core.config import Settings
from app.core.db import UnitOfWork
from app.core.roles import DEFAULT_ROLE
from app.core.security import (
    HashingBusy,
    InvalidTokenError,
    PasswordHasher,
    TokenService,
)
from app.models.types import utcnow
from app.models.user import Principal, User
from app.repositories.errors import DuplicateKeyError
from app.repositories.throttle import CounterKey
from app.repositories.user import UserRepository
from app.schemas.user import UserCreate
from app.services.account_mail import AccountMail
from app.services.errors import (
    EmailNotVerified,
    EmailTaken,
    InvalidCredentials,
    NotAuthenticated,
    TooManyAttempts,
    TooManyRegistrations,
)
from app.services.session import Client, SessionService, TokenPair
from app.services.throttle import AttemptLimiter, Limit, RecentRefusals

# Scopes of the attempt counters (app/models/throttle.py).
LOGIN = "login"  # one account from one address
LOGIN_FROM_ADDRESS = "login-address"  # any account from one address
LOGIN_TO_ACCOUNT = "login-account"  # one account from any address
REGISTER_FROM_ADDRESS = "register-address"

ACCOUNT_WINDOW = timedelta(hours=1)
REGISTRATION_WINDOW = timedelta(hours=1)

# For monitoring (app/runtime/metrics.py serves them).
LOGINS = Counter(
    "login_attempts",
    "Logins by outcome: success, failure (wrong email or password), locked (429) or "
    "unverified (the right password, an email not yet verified)",
    ["outcome"],
)
LOCKOUTS = Counter(
    "login_lockouts",
    "Failed logins that filled a limit and so locked it, by the limit's scope",
    ["limit"],
)


class AuthService:
    def __init__(
        self,
        uow: UnitOfWork,
        hasher: PasswordHasher,
        tokens: TokenService,
        settings: Settings,
        refusals: RecentRefusals,
        mail: AccountMail,
    ) -> None:
        self.uow = uow
        self.users = UserRepository(uow)
        self.limiter = AttemptLimiter(uow)
        self.sessions = SessionService(uow, tokens, settings)
        self.refusals = refusals
        self.hasher = hasher
        self.settings = settings
        self.lockout = timedelta(minutes=settings.login_lockout_minutes)
        self.mail = mail

    async def register(self, data: UserCreate, address: str) -> User:
        """Create a user with the least privileged role (the body cannot choose another),
        and email them a link to verify their address."""
        self.hasher.check_capacity()  # refuse a flood before it costs any database work
        limit = Limit(
            CounterKey(REGISTER_FROM_ADDRESS, address=address),
            self.settings.register_max_per_address_per_hour,
            REGISTRATION_WINDOW,
        )
        # Counted as done at once, and committed either way: refused attempts count too.
        async with self.uow.transaction():
            refusal = await self.limiter.count([limit], utcnow(), in_flight=False)
        if refusal is not None:
            raise TooManyRegistrations(refusal.retry_after)
        user = User(
            email=data.email,
            full_name=data.full_name,
            hashed_password=await self.hasher.hash(data.password),
            role=DEFAULT_ROLE,
        )
        try:
            async with self.uow.transaction():
                await self.users.save(user)
        except DuplicateKeyError:
            raise EmailTaken() from None
        self.mail.verification(user.id)
        return user

    def _login_limits(self, email: str, address: str) -> list[Limit]:
        settings = self.settings
        return [
            Limit(CounterKey(LOGIN, email, address), settings.login_max_failures, self.lockout),
            Limit(
                CounterKey(LOGIN_FROM_ADDRESS, address=address),
                settings.login_max_failures_per_address,
                self.lockout,
            ),
            Limit(
                CounterKey(LOGIN_TO_ACCOUNT, email=email),
                settings.login_max_failures_per_account,
                ACCOUNT_WINDOW,
            ),
        ]

    async def login(self, email: str, password: str, client: Client) -> TokenPair:
        """Check the password, at most as often as the limits allow, and open a session.

        Each attempt is counted before its password is checked, and settled after: a
        failure stays counted, a success is uncounted. So concurrent guesses cannot get
        past a limit by all arriving before the first failure is written. An attempt
        refused by a limit is not counted, so hammering a locked key does not prolong
        its lock.

        With REQUIRE_VERIFIED_EMAIL, the right password of an unverified account opens
        no session: the answer says to verify, and a new link is sent (within the hourly
        limit). A wrong password is refused as always, so this reveals nothing more.
        """
        self.hasher.check_capacity()  # refuse a flood before it costs any database work
        email = email.strip().lower()
        limits = self._login_limits(email, client.address)
        remembered = self.refusals.retry_after([limit.key for limit in limits])
        if remembered is not None:
            LOGINS.labels("locked").inc()
            raise TooManyAttempts(remembered)
        async with self.uow.transaction():
            refusal = await self.limiter.count(limits, utcnow())
            if refusal is not None:
                self.refusals.remember(refusal)
                LOGINS.labels("locked").inc()
                raise TooManyAttempts(refusal.retry_after)  # rolls back: not counted
            user = await self.users.load_by_email(email)
        # Hashing takes hundreds of milliseconds: it runs outside any transaction, with no
        # pooled connection held.
        try:
            if user is None:
                await self.hasher.verify_dummy()
                valid, new_hash = False, None
            else:
                valid, new_hash = await self.hasher.verify_and_update(
                    password, user.hashed_password
                )
        except HashingBusy:
            # The queue filled up since the check above: no password was checked.
            async with self.uow.transaction():
                await self.limiter.settle(limits, failed=False)
            raise
        if user is None or not valid or not user.is_active:
            async with self.uow.transaction():
                await self.limiter.settle(limits, failed=True)
                counts = await self.limiter.counters.get_many([limit.key for limit in limits])
            for limit in limits:
                # Settled failures reach the limit once per lock: the attempts it refuses
                # are not counted.
                count = counts.get(limit.key)
                if count is not None and count.attempts - count.in_flight == limit.max_attempts:
                    LOCKOUTS.labels(limit.key.scope).inc()
            LOGINS.labels("failure").inc()
            raise InvalidCredentials()

        verified = user.email_verified or not self.settings.require_verified_email
        async with self.uow.transaction():
            # This pair's failures are forgiven; the others only lose this attempt, so a
            # client cannot wipe the failures it made elsewhere by logging in to its own
            # account.
            await self.limiter.forgive(limits[0])
            await self.limiter.settle(limits[1:], failed=False)
            if new_hash is not None:
                # The configured cost changed since this hash was made: upgrade it now
                # that the password is known.
                user.hashed_password = new_hash
                await self.users.save(user)
            pair = await self.sessions.start(user.id, user.role, client) if verified else None
        if pair is not None:
            LOGINS.labels("success").inc()
            return pair
        LOGINS.labels("unverified").inc()
        self.mail.verification(user.id)
        raise EmailNotVerified()

    async def refresh(self, refresh_token: str) -> TokenPair:
        """See SessionService.refresh."""
        return await self.sessions.refresh(refresh_token)

    async def logout(self, caller: Principal) -> None:
        await self.sessions.end(caller)


class Authenticator:
    """Who a request's bearer token names."""

    def __init__(self, uow: UnitOfWork, tokens: TokenService) -> None:
        self.uow = uow
        self.users = UserRepository(uow)
        self.tokens = tokens

    async def caller(self, token: str | None) -> Principal:
        """The user `token` names, read from the database on every request with its
        session: the role and active flag come from there, not from the token, and the
        session must be open, so a demoted, deactivated, deleted or logged-out user loses
        access at once."""
        if not token:
            raise NotAuthenticated()
        try:
            claims = self.tokens.read(token)
        except InvalidTokenError:
            raise NotAuthenticated("Invalid or expired token") from None
        async with self.uow.transaction():
            user = await self.users.get_caller(claims.user_id, claims.session_id, utcnow())
        if user is None or not user.is_active:
            raise NotAuthenticated("Invalid or expired token")
        return user
