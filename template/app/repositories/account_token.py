"""Queries on the tokens sent by email."""

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, update
from sqlmodel import col, select

from app.core.db import UnitOfWork
from app.models.account_token import AccountToken, TokenPurpose


def _usable(token_hash: str, purpose: TokenPurpose, now: datetime) -> list[ColumnElement[bool]]:
    return [
        col(AccountToken.token_hash) == token_hash,
        col(AccountToken.purpose) == purpose.value,
        col(AccountToken.used_at).is_(None),
        col(AccountToken.expires_at) > now,
    ]


class AccountTokenRepository:
    """Tokens change in the unit of work's session, inside the caller's transaction."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def replace(self, token: AccountToken) -> None:
        """Store `token`, deleting the user's other tokens of its purpose: the newest
        link is the only one that works."""
        await self.void(token.user_id, TokenPurpose(token.purpose))
        self.uow.session.add(token)
        await self.uow.session.flush()

    async def find_usable(
        self, token_hash: str, purpose: TokenPurpose, now: datetime
    ) -> AccountToken | None:
        """The token, if it is for `purpose`, unused and unexpired at `now`."""
        statement = select(AccountToken).where(*_usable(token_hash, purpose, now))
        return (await self.uow.session.exec(statement)).first()

    async def spend(self, token_hash: str, purpose: TokenPurpose, now: datetime) -> bool:
        """Mark the token used; False when it is not usable (any more).

        One conditional UPDATE: of two transactions spending the same token at once, the
        second waits for the first and then finds nothing left to spend.
        """
        statement = (
            update(AccountToken).where(*_usable(token_hash, purpose, now)).values(used_at=now)
        )
        result = cast(CursorResult[Any], await self.uow.session.exec(statement))
        return result.rowcount == 1

    async def void(self, user_id: uuid.UUID, purpose: TokenPurpose) -> None:
        """Delete every token of `purpose` the user holds."""
        await self.uow.session.exec(
            delete(AccountToken).where(
                col(AccountToken.user_id) == user_id, col(AccountToken.purpose) == purpose.value
            )
        )
