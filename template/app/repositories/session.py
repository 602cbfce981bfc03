"""Queries on sign-in sessions and refresh tokens."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Table,
    and_,
    bindparam,
    delete,
    insert,
    or_,
    update,
)
from sqlalchemy import select as core_select
from sqlmodel import col, select

from app.core.db import UnitOfWork, as_dicts
from app.models.session import AuthSession, RefreshToken
from app.models.types import read_columns
from app.models.user import User

SESSIONS: Table = AuthSession.__table__  # type: ignore[attr-defined]
TOKENS: Table = RefreshToken.__table__  # type: ignore[attr-defined]
USERS: Table = User.__table__  # type: ignore[attr-defined]

# What the caller may see of their sessions: never token material.
_LISTED_COLUMNS = read_columns(
    SESSIONS.c[name]
    for name in ("id", "created_at", "last_used_at", "user_agent", "client_address")
)
_OPEN_OF_USER = (
    core_select(*_LISTED_COLUMNS)
    .where(
        SESSIONS.c.user_id == bindparam("user_id"),
        SESSIONS.c.revoked_at.is_(None),
        SESSIONS.c.expires_at > bindparam("now"),
    )
    .order_by(SESSIONS.c.created_at.desc(), SESSIONS.c.id.desc())
)

_REFRESH_TARGET = (
    core_select(
        TOKENS.c.expires_at,
        SESSIONS.c.id,
        SESSIONS.c.expires_at,
        SESSIONS.c.revoked_at.is_not(None),
        USERS.c.id,
        USERS.c.role,
        USERS.c.is_active,
    )
    .select_from(
        TOKENS.join(SESSIONS, SESSIONS.c.id == TOKENS.c.session_id).join(
            USERS, USERS.c.id == SESSIONS.c.user_id
        )
    )
    .where(TOKENS.c.token_hash == bindparam("presented"))
)


_SPEND = (
    update(TOKENS)
    .where(TOKENS.c.token_hash == bindparam("presented"), TOKENS.c.spent_at.is_(None))
    .values(spent_at=bindparam("now"))
)
_SESSION_OF_TOKEN = core_select(TOKENS.c.session_id).where(
    TOKENS.c.token_hash == bindparam("presented")
)
_INSERT_TOKEN = insert(TOKENS)
_TOUCH = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("refreshed"))
    .values(last_used_at=bindparam("now"))
)


@dataclass(frozen=True, slots=True)
class RefreshTarget:
    """What a refresh token leads to: its expiry, its session and the session's user."""

    token_expires_at: datetime
    session_id: uuid.UUID
    session_expires_at: datetime
    session_revoked: bool
    user_id: uuid.UUID
    role: str
    user_active: bool


@dataclass(frozen=True, slots=True)
class Rotation:
    """What spending a refresh token did: what it led to and the new token stored, if
    any; or, when it had been spent already, the session it belongs to (`reused`)."""

    target: RefreshTarget | None = None
    successor: RefreshToken | None = None
    reused: uuid.UUID | None = None


def _rotate(
    connection: Connection,
    token_hash: str,
    now: datetime,
    successor: Callable[[RefreshTarget], RefreshToken | None],
) -> Rotation:
    params = {"presented": token_hash, "now": now}
    if connection.execute(_SPEND, params).rowcount != 1:
        return Rotation(reused=connection.execute(_SESSION_OF_TOKEN, params).scalar())
    row = connection.execute(_REFRESH_TARGET, params).first()
    if row is None:
        return Rotation()
    target = RefreshTarget(*row)
    token = successor(target)
    if token is not None:
        connection.execute(_INSERT_TOKEN, token.model_dump())
        connection.execute(_TOUCH, {"refreshed": token.session_id, "now": now})
    return Rotation(target, token)


def _is_open(now: datetime) -> Any:
    return and_(col(AuthSession.revoked_at).is_(None), col(AuthSession.expires_at) > now)


def _open_sessions(
    connection: Connection, user_id: uuid.UUID, now: datetime
) -> list[dict[str, Any]]:
    return as_dicts(connection.execute(_OPEN_OF_USER, {"user_id": user_id, "now": now}))


class SessionRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def add(self, session: AuthSession, token: RefreshToken) -> None:
        """Insert a new session with its first refresh token."""
        self.uow.session.add(session)
        await self.uow.session.flush()  # the session's row first: the token refers to it
        self.uow.session.add(token)
        await self.uow.session.flush()

    async def rotate(
        self,
        token_hash: str,
        now: datetime,
        successor: Callable[[RefreshTarget], RefreshToken | None],
    ) -> Rotation:
        """Spend the token and, if `successor` gives one for what it leads to, store that
        token and record the refresh as the session's last use: one transaction.

        The token is spent by one conditional UPDATE: of two transactions spending it at
        once, the second waits for the first and then finds nothing left to spend.
        """
        return await self.uow.write(_rotate, token_hash, now, successor)

    async def open_sessions(self, user_id: uuid.UUID, now: datetime) -> list[dict[str, Any]]:
        """The user's open sessions, newest first, as dicts of the listed columns."""
        return await self.uow.read(_open_sessions, user_id, now)

    async def revoke(
        self, session_id: uuid.UUID, now: datetime, *, user_id: uuid.UUID | None = None
    ) -> bool:
        """Revoke the session if it is open (and, given `user_id`, that user's); say
        whether it was."""
        statement = update(AuthSession).where(col(AuthSession.id) == session_id, _is_open(now))
        if user_id is not None:
            statement = statement.where(col(AuthSession.user_id) == user_id)
        result = await self.uow.session.exec(statement.values(revoked_at=now))
        return _rowcount(result) == 1

    async def revoke_all(
        self, user_id: uuid.UUID, now: datetime, *, keep: uuid.UUID | None = None
    ) -> None:
        """Revoke every open session of the user, but `keep` if given."""
        statement = update(AuthSession).where(col(AuthSession.user_id) == user_id, _is_open(now))
        if keep is not None:
            statement = statement.where(col(AuthSession.id) != keep)
        await self.uow.session.exec(statement.values(revoked_at=now))

    async def make_room(self, user_id: uuid.UUID, now: datetime, keep: int) -> None:
        """Delete the user's closed sessions, then their oldest open ones until at most
        `keep` remain: a user's rows stay bounded however often they log in."""
        await self.uow.session.exec(
            delete(AuthSession).where(col(AuthSession.user_id) == user_id, ~_is_open(now))
        )
        oldest_first = (
            select(AuthSession.id)
            .where(col(AuthSession.user_id) == user_id)
            .order_by(col(AuthSession.created_at).desc(), col(AuthSession.id).desc())
            .offset(keep)
        )
        surplus = (await self.uow.session.exec(oldest_first)).all()
        if surplus:
            await self.uow.session.exec(delete(AuthSession).where(col(AuthSession.id).in_(surplus)))

    async def prune(self, now: datetime) -> tuple[int, int]:
        """Delete closed sessions and expired refresh tokens; return how many of each."""
        tokens = await self.uow.session.exec(
            delete(RefreshToken).where(
                or_(
                    col(RefreshToken.expires_at) <= now,
                    col(RefreshToken.session_id).in_(select(AuthSession.id).where(~_is_open(now))),
                )
            )
        )
        sessions = await self.uow.session.exec(delete(AuthSession).where(~_is_open(now)))
        return _rowcount(sessions), _rowcount(tokens)


def _rowcount(result: Any) -> int:
    """The rows a DML statement matched (the session hands back its CursorResult)."""
    return cast(CursorResult[Any], result).rowcount
