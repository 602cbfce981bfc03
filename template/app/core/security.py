"""Password hashing and access tokens."""

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, TypeVar

from passlib.context import CryptContext

from app.core import tokens
from app.core.admission import stepped_out
from app.core.config import Settings

# bcrypt reads at most 72 bytes of a password; longer ones are refused, never truncated.
PASSWORD_MAX_BYTES = 72
PASSWORD_MIN_CHARS = 8


def password_problem(password: str) -> str | None:
    """Why a new password is unacceptable, or None when it is fine."""
    if len(password) < PASSWORD_MIN_CHARS:
        return f"password must be at least {PASSWORD_MIN_CHARS} characters"
    if len(password.encode()) > PASSWORD_MAX_BYTES:
        return (
            f"password must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8 "
            f"(this one is {len(password.encode())} bytes)"
        )
    if "\x00" in password:
        return "password must not contain NUL characters"
    return None


def _hashable(password: str) -> bool:
    return len(password.encode()) <= PASSWORD_MAX_BYTES and "\x00" not in password


T = TypeVar("T")
# Hashing threads yield the CPU to the event loop thread, so that cheap requests keep a
# short latency while logins use every core. (A lower priority needs no privilege.)
HASHING_NICENESS = 10


def _lower_thread_priority() -> None:
    # Where not permitted (or not on Linux), hashing simply runs at normal priority.
    if hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


class PasswordHasher:
    """bcrypt through passlib, on threads of its own so the event loop stays free.

    One thread per core: more would only queue inside the kernel, and fewer would leave
    cores idle while logins wait.
    """

    def __init__(self, rounds: int) -> None:
        self._context = CryptContext(schemes=["bcrypt"], bcrypt__rounds=rounds)
        self._executor = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 1,
            thread_name_prefix="password-hashing",
            initializer=_lower_thread_priority,
        )

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        # The request gives its place in the application to another while it hashes.
        async with stepped_out():
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

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


# Tokens remembered after their signature and claims were checked, so a client's token
# is verified once, not on every request (decoding costs about as much as the database
# read of the current user).
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

    def issue(self, user_id: uuid.UUID, role: str) -> AccessToken:
        now = datetime.now(UTC)
        payload: dict[str, Any] = {
            "sub": str(user_id),
            "role": role,
            "iat": int(now.timestamp()),
            "exp": int((now + self._lifetime).timestamp()),
        }
        token = tokens.encode(payload, self._secret, self._algorithm)
        return AccessToken(token=token, expires_in=int(self._lifetime.total_seconds()))

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
        return TokenClaims(user_id=user_id, role=role), float(payload["exp"])
