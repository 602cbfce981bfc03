"""Password hashing and access tokens."""

import asyncio
import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, TypeVar

from passlib.context import CryptContext

from app.core import tokens
from app.core.config import Settings

# bcrypt reads at most 72 bytes of a password; longer ones are refused, never truncated.
PASSWORD_MAX_BYTES = 72
PASSWORD_MIN_CHARS = 8


def _utf8_length(password: str) -> int | None:
    """The password's length in UTF-8, or None if it holds a lone surrogate."""
    try:
        return len(password.encode())
    except UnicodeEncodeError:
        return None


def password_problem(password: str) -> str | None:
    """Why a new password is unacceptable, or None when it is fine."""
    if len(password) < PASSWORD_MIN_CHARS:
        return f"password must be at least {PASSWORD_MIN_CHARS} characters"
    size = _utf8_length(password)
    if size is None:
        return "password must be valid Unicode (it holds a lone surrogate)"
    if size > PASSWORD_MAX_BYTES:
        return f"password must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8 (this one is {size})"
    if "\x00" in password:
        return "password must not contain NUL characters"
    return None


def _hashable(password: str) -> bool:
    size = _utf8_length(password)
    return size is not None and size <= PASSWORD_MAX_BYTES and "\x00" not in password


T = TypeVar("T")


# A hash at bcrypt cost 12 takes about this long on one core of a current server; each
# step of the cost doubles it.
SECONDS_PER_HASH_AT_COST_12 = 0.3
# How much hashing work may wait, by default: beyond it, a new login is refused at once
# (503) rather than queued behind minutes of others.
HASHING_QUEUE_SECONDS = 3.0


def default_queue_limit(rounds: int, cores: int) -> int:
    """About HASHING_QUEUE_SECONDS of hashing on `cores` threads at cost `rounds`."""
    seconds_per_hash = SECONDS_PER_HASH_AT_COST_12 * 2.0 ** (rounds - 12)
    return max(2 * cores, math.ceil(HASHING_QUEUE_SECONDS * cores / seconds_per_hash))


def _ignore(pending: int) -> None:
    pass


class HashingBusy(Exception):
    """More password checks are waiting than the hashing queue admits."""


class PasswordHasher:
    """bcrypt through passlib, on threads of its own so the event loop stays free.

    One thread per core: more would only queue inside the kernel, and fewer would leave
    cores idle while logins wait. At most `queue_limit` hashes are pending (waiting or
    running) at once; beyond that a new one raises HashingBusy at once.

    `waiting` wraps each wait for a hash: admission control (app/runtime/admission.py)
    sets it to give the request's place back meanwhile; the hasher knows nothing of HTTP.
    `pending_changed(pending)` is told each change of the count (app/runtime/metrics.py).
    `thread_initializer` runs in each hashing thread as it starts.
    """

    def __init__(
        self,
        rounds: int,
        *,
        queue_limit: int | None = None,
        thread_initializer: Callable[[], None] | None = None,
    ) -> None:
        self._context = CryptContext(schemes=["bcrypt"], bcrypt__rounds=rounds)
        cores = os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(
            max_workers=cores,
            thread_name_prefix="password-hashing",
            initializer=thread_initializer,
        )
        self.queue_limit = queue_limit or default_queue_limit(rounds, cores)
        self._pending = 0
        self.waiting: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext
        self.pending_changed: Callable[[int], None] = _ignore

    def check_capacity(self) -> None:
        """Raise HashingBusy now if a hash asked for now would be refused."""
        if self._pending >= self.queue_limit:
            raise HashingBusy()

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        self.check_capacity()
        self._pending += 1
        self.pending_changed(self._pending)
        try:
            async with self.waiting():
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, function, *args)
        finally:
            self._pending -= 1
            self.pending_changed(self._pending)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @cached_property
    def _dummy_hash(self) -> str:
        # Verified against when the account does not exist, so that a login costs the
        # same either way and its timing does not reveal which emails are registered.
        return str(self._context.hash("dummy password for timing"))

    async def hash(self, password: str) -> str:
        return str(await self._run(self._context.hash, password))

    async def verify_and_update(self, password: str, hashed: str) -> tuple[bool, str | None]:
        """Check a password; on success also return a new hash when the cost has changed."""
        if not _hashable(password):
            await self.verify_dummy()
            return False, None
        valid, new_hash = await self._run(self._context.verify_and_update, password, hashed)
        return bool(valid), new_hash

    async def verify_dummy(self) -> None:
        # The dummy hash is made on first use, inside the hashing thread too.
        await self._run(lambda: self._context.verify("not the password", self._dummy_hash))


class InvalidTokenError(Exception):
    """The token is missing a claim, malformed, expired or not signed by this service."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: uuid.UUID
    role: str
    session_id: uuid.UUID


# Tokens remembered after their signature and claims were checked, so that a client's
# token is decoded once, not on every request.
VERIFIED_TOKENS_KEPT = 4096


class TokenService:
    """Issues and checks this service's JWT access tokens."""

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.jwt_secret.get_secret_value()
        self._algorithm = settings.jwt_algorithm
        self._lifetime = timedelta(minutes=settings.access_token_expire_minutes)
        # Whole token (signature included) -> its claims and expiry. Only tokens that
        # passed every check get in, and each use checks the expiry again.
        self._verified: dict[str, tuple[TokenClaims, float]] = {}

    def issue(
        self, user_id: uuid.UUID, role: str, session_id: uuid.UUID, not_after: datetime
    ) -> AccessToken:
        """An access token of the session `session_id`, expiring at the configured
        lifetime or at `not_after` (the session's end), whichever comes first."""
        now = datetime.now(UTC)
        expires_at = int(min(now + self._lifetime, not_after).timestamp())
        issued_at = int(now.timestamp())
        payload: dict[str, Any] = {
            "sub": str(user_id),
            "role": role,
            "sid": str(session_id),
            "jti": uuid.uuid4().hex,
            "iat": issued_at,
            "exp": expires_at,
        }
        token = tokens.encode(payload, self._secret, self._algorithm)
        return AccessToken(token=token, expires_in=max(expires_at - issued_at, 0))

    def read(self, token: str) -> TokenClaims:
        remembered = self._verified.get(token)
        if remembered is not None:
            claims, expires_at = remembered
            if time.time() < expires_at:
                return claims
            del self._verified[token]  # expired: the full check below says so
        claims, expires_at = self._verify(token)
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (claims, expires_at)
        return claims

    def _verify(self, token: str) -> tuple[TokenClaims, float]:
        try:
            payload = tokens.decode(token, self._secret, self._algorithm)
        except tokens.TokenDecodeError as exc:
            raise InvalidTokenError(str(exc)) from None
        role = payload.get("role")
        if not isinstance(role, str):
            raise InvalidTokenError("token has no role")
        try:
            user_id = uuid.UUID(str(payload["sub"]))
        except ValueError:
            raise InvalidTokenError("token subject is not a user id") from None
        session = payload.get("sid")
        try:
            # Tokens issued before sessions existed name none: refused.
            session_id = uuid.UUID(session) if isinstance(session, str) else None
        except ValueError:
            session_id = None
        if session_id is None:
            raise InvalidTokenError("token names no session")
        claims = TokenClaims(user_id=user_id, role=role, session_id=session_id)
        return claims, float(payload["exp"])
