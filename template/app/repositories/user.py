"""Queries on users."""

import uuid
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func
from sqlalchemy import select as core_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import read_page
from app.models.types import read_columns
from app.models.user import Principal, User
from app.repositories.errors import flush

# Reads run through Database.read on plain SQLAlchemy Core statements, built once:
# authentication runs one on every request, and Core rows skip the ORM's bookkeeping.
USERS: Table = User.__table__  # type: ignore[attr-defined]
_PRINCIPAL_COLUMNS = read_columns(USERS.c[field.name] for field in fields(Principal))
_PRINCIPAL_BY_ID = core_select(*_PRINCIPAL_COLUMNS).where(USERS.c.id == bindparam("user_id"))
_PAGE = (
    core_select(*_PRINCIPAL_COLUMNS)
    .order_by(USERS.c.created_at, USERS.c.id)
    .offset(bindparam("offset"))
    .limit(bindparam("limit"))
)
_COUNT = core_select(func.count()).select_from(USERS)


def read_principal(connection: Connection, user_id: uuid.UUID) -> Principal | None:
    """The user as a request's caller (or an administrator's view of them): one SELECT
    of the public columns, never the password hash."""
    row = connection.execute(_PRINCIPAL_BY_ID, {"user_id": user_id}).first()
    return None if row is None else Principal(*row)


def read_user_page(
    connection: Connection, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of users, oldest first, as dicts of the public columns, and the total."""
    return read_page(connection, _PAGE, _COUNT, {}, offset, limit)


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
        # Session.get reuses one cached statement: cheaper than building a select.
        return await self.session.get(
            User, user_id, with_for_update=for_update, populate_existing=for_update
        )

    async def get_by_email(self, email: str) -> User | None:
        return (await self.session.exec(select(User).where(User.email == email))).first()

    async def save(self, user: User) -> User:
        """Insert or update a user; raises DuplicateKeyError when the email is taken."""
        self.session.add(user)
        await flush(self.session)
        return user

    async def delete(self, user: User) -> None:
        await self.session.delete(user)
        await flush(self.session)

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
        return (await self.session.exec(statement)).all()
