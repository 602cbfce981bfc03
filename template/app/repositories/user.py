"""Queries on users."""

import uuid
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func
from sqlalchemy import select as core_select
from sqlmodel import col, select

from app.core.db import UnitOfWork, read_page
from app.models.session import AuthSession
from app.models.types import read_columns
from app.models.user import Principal, User
from app.repositories.errors import flush

# Reads that answer requests run on plain SQLAlchemy Core statements, built once, on the
# unit of work's fast path (UnitOfWork.read): authentication runs one on every request,
# and Core rows skip the ORM's bookkeeping. Changes load ORM objects in its session.
USERS: Table = User.__table__  # type: ignore[attr-defined]
SESSIONS: Table = AuthSession.__table__  # type: ignore[attr-defined]
_PRINCIPAL_COLUMNS = read_columns(
    USERS.c[field.name] for field in fields(Principal) if field.name != "session_id"
)
_PRINCIPAL_BY_ID = core_select(*_PRINCIPAL_COLUMNS).where(USERS.c.id == bindparam("user_id"))
# The caller of a request: the user, if the session their token names is still open.
# One SELECT on two primary keys, the check that makes logout and revocation take effect.
_CALLER = (
    core_select(*_PRINCIPAL_COLUMNS, SESSIONS.c.id)
    .select_from(USERS.join(SESSIONS, SESSIONS.c.user_id == USERS.c.id))
    .where(
        SESSIONS.c.id == bindparam("session_id"),
        USERS.c.id == bindparam("user_id"),
        SESSIONS.c.revoked_at.is_(None),
        SESSIONS.c.expires_at > bindparam("now"),
    )
)
_PAGE = (
    core_select(*_PRINCIPAL_COLUMNS)
    .order_by(USERS.c.created_at, USERS.c.id)
    .offset(bindparam("offset"))
    .limit(bindparam("limit"))
)
_COUNT = core_select(func.count()).select_from(USERS)


def _principal(connection: Connection, user_id: uuid.UUID) -> Principal | None:
    row = connection.execute(_PRINCIPAL_BY_ID, {"user_id": user_id}).first()
    return None if row is None else Principal(*row)


def _caller(
    connection: Connection, user_id: uuid.UUID, session_id: uuid.UUID, now: datetime
) -> Principal | None:
    values = {"user_id": user_id, "session_id": session_id, "now": now}
    row = connection.execute(_CALLER, values).first()
    return None if row is None else Principal(*cast(tuple[Any, ...], row))


def _page(connection: Connection, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    return read_page(connection, _PAGE, _COUNT, {}, offset, limit)


class UserRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def get_principal(self, user_id: uuid.UUID) -> Principal | None:
        """The user as an administrator sees them: one SELECT of the public columns,
        never the password hash."""
        return await self.uow.read(_principal, user_id)

    async def get_caller(
        self, user_id: uuid.UUID, session_id: uuid.UUID, now: datetime
    ) -> Principal | None:
        """The user as a request's caller, if `session_id` is one of theirs and open at
        `now`: the same columns, in the same single SELECT."""
        return await self.uow.read(_caller, user_id, session_id, now)

    async def page(self, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """A page of users, oldest first, as dicts of the public columns, and the total."""
        return await self.uow.read(_page, offset, limit)

    async def load(self, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
        """The user to change, in the unit of work's session (locked if `for_update`)."""
        # Session.get reuses one cached statement: cheaper than building a select.
        return await self.uow.session.get(
            User, user_id, with_for_update=for_update, populate_existing=for_update
        )

    async def load_by_email(self, email: str, *, for_update: bool = False) -> User | None:
        statement = select(User).where(User.email == email)
        if for_update:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        return (await self.uow.session.exec(statement)).first()

    async def save(self, user: User) -> User:
        """Insert or update a user; raises DuplicateKeyError when the email is taken."""
        self.uow.session.add(user)
        await flush(self.uow.session)
        return user

    async def delete(self, user: User) -> None:
        await self.uow.session.delete(user)
        await flush(self.uow.session)

    async def lock_active_with_role(self, role: str) -> Sequence[uuid.UUID]:
        """Lock the active users holding `role` until the transaction ends, and list them.

        Rules such as "the last administrator stays" read this set and then change it;
        the lock makes a concurrent transaction wait and then see the change.
        """
        statement = (
            select(User.id)
            .where(User.role == role, col(User.is_active).is_(True))
            .order_by(col(User.id))
            .with_for_update()
        )
        return (await self.uow.session.exec(statement)).all()
