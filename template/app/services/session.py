"""Sign-in sessions: refresh with rotation and reuse detection, logout and revocation."""

import hashlib
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from app.core.config import Settings
from app.core.db import UnitOfWork
from app.core.security import AccessToken, TokenService
from app.models.session import USER_AGENT_MAX_LENGTH, AuthSession, RefreshToken
from app.models.types import utcnow
from app.models.user import Principal
from app.repositories.session import RefreshTarget, SessionRepository
from app.services.errors import InvalidRefreshToken, NotAuthenticated, NotFound

logger = logging.getLogger(__name__)

# 32 random bytes, URL-safe base64 without padding: what secrets.token_urlsafe(32) gives.
REFRESH_TOKEN_BYTES = 32
_REFRESH_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
SESSION_NOT_FOUND = "Session not found"


def token_digest(token: str) -> str:
    """What is stored of a refresh token. A fast hash suffices: the token is 256 random
    bits, not a password that could be guessed from its hash."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenPair:
    access: AccessToken
    refresh_token: str
    refresh_expires_in: int


@dataclass(frozen=True, slots=True)
class Client:
    """Who opened a session, as its owner sees it in their list of sessions."""

    user_agent: str
    address: str

    @classmethod
    def of(cls, user_agent: str | None, address: str) -> "Client":
        # Shown back to the user and stored: printable text only, and bounded.
        text = "".join(ch for ch in user_agent or "" if ch.isprintable())
        return cls(text[:USER_AGENT_MAX_LENGTH], address)


class SessionService:
    """Sessions of users. `start` runs inside the caller's transaction block (a login's);
    the other methods are operations of their own."""

    def __init__(self, uow: UnitOfWork, tokens: TokenService, settings: Settings) -> None:
        self.uow = uow
        self.sessions = SessionRepository(uow)
        self.tokens = tokens
        self.refresh_lifetime = timedelta(days=settings.refresh_token_expire_days)
        self.session_lifetime = timedelta(days=settings.session_max_days)
        self.max_per_user = settings.max_sessions_per_user

    async def start(self, user_id: uuid.UUID, role: str, client: Client) -> TokenPair:
        """Open a session for a user who just proved who they are."""
        now = utcnow()
        session = AuthSession(
            user_id=user_id,
            created_at=now,
            last_used_at=now,
            expires_at=now + self.session_lifetime,
            user_agent=client.user_agent,
            client_address=client.address,
        )
        refresh = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
        token = self._token_row(refresh, session.id, session.expires_at, now)
        # The new row first, then the user's closed and oldest sessions go: the insert's
        # lock on the user's row comes before any lock on sessions, in the order an
        # administrator's change of the user takes them.
        await self.sessions.add(session, token)
        await self.sessions.make_room(user_id, now, keep=self.max_per_user)
        return self._pair(user_id, role, session.id, session.expires_at, refresh, token, now)

    async def refresh(self, presented: str) -> TokenPair:
        """Spend `presented` for a new pair. A token spent before is reuse: its whole
        session is revoked. Every refusal is the same InvalidRefreshToken."""
        if not _REFRESH_TOKEN.fullmatch(presented):
            raise InvalidRefreshToken()
        now = utcnow()
        refresh = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)

        def successor(target: RefreshTarget) -> RefreshToken | None:
            """The new refresh token, if the one presented may still be refreshed."""
            if (
                target.token_expires_at <= now
                or target.session_revoked
                or target.session_expires_at <= now
                or not target.user_active
            ):
                return None
            return self._token_row(refresh, target.session_id, target.session_expires_at, now)

        async with self.uow.transaction():
            rotation = await self.sessions.rotate(token_digest(presented), now, successor)
            if rotation.reused is not None:
                # Spent before: by this client or by someone who copied the token. The
                # session cannot tell them apart, so it ends for both.
                await self.sessions.revoke(rotation.reused, now)
                logger.warning("Refresh token reused: session %s revoked", rotation.reused)
        target, token = rotation.target, rotation.successor
        if target is None or token is None:
            raise InvalidRefreshToken()
        return self._pair(
            target.user_id,
            target.role,  # the role as it is now, not as it was at login
            target.session_id,
            target.session_expires_at,
            refresh,
            token,
            now,
        )

    async def end(self, caller: Principal) -> None:
        """Log out: revoke the caller's session."""
        async with self.uow.transaction():
            await self.sessions.revoke(_session_of(caller), utcnow(), user_id=caller.id)

    async def list_open(self, caller: Principal) -> list[dict[str, Any]]:
        """The caller's open sessions, newest first, each marked `current` or not."""
        async with self.uow.transaction():
            found = await self.sessions.open_sessions(caller.id, utcnow())
        return [{**session, "current": session["id"] == caller.session_id} for session in found]

    async def revoke(self, caller: Principal, session_id: uuid.UUID) -> None:
        """Revoke one of the caller's open sessions; someone else's is not found."""
        async with self.uow.transaction():
            revoked = await self.sessions.revoke(session_id, utcnow(), user_id=caller.id)
        if not revoked:
            raise NotFound(SESSION_NOT_FOUND)

    async def revoke_others(self, caller: Principal) -> None:
        """Revoke every open session of the caller but the current one."""
        async with self.uow.transaction():
            await self.sessions.revoke_all(caller.id, utcnow(), keep=_session_of(caller))

    async def prune(self) -> tuple[int, int]:
        """Delete closed sessions and expired refresh tokens: (sessions, tokens)."""
        async with self.uow.transaction():
            return await self.sessions.prune(utcnow())

    def _token_row(
        self, refresh: str, session_id: uuid.UUID, session_expires_at: datetime, now: datetime
    ) -> RefreshToken:
        # A refresh token never outlives its session.
        expires_at = min(now + self.refresh_lifetime, session_expires_at)
        return RefreshToken(
            token_hash=token_digest(refresh), session_id=session_id, expires_at=expires_at
        )

    def _pair(
        self,
        user_id: uuid.UUID,
        role: str,
        session_id: uuid.UUID,
        session_expires_at: datetime,
        refresh: str,
        token: RefreshToken,
        now: datetime,
    ) -> TokenPair:
        access = self.tokens.issue(user_id, role, session_id, not_after=session_expires_at)
        lifetime = int((token.expires_at - now).total_seconds())
        return TokenPair(access=access, refresh_token=refresh, refresh_expires_in=lifetime)


def _session_of(caller: Principal) -> uuid.UUID:
    # Every caller authenticated by an access token has one.
    if caller.session_id is None:
        raise NotAuthenticated()
    return caller.session_id
