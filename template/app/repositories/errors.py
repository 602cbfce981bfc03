"""Errors the repositories raise instead of driver-specific ones."""

from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.dialect import is_unique_violation


class DuplicateKeyError(Exception):
    """A row with the same unique key already exists."""


async def flush(session: AsyncSession) -> None:
    """Send pending changes, turning a unique-key violation into DuplicateKeyError."""
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        if is_unique_violation(exc):
            raise DuplicateKeyError(str(exc.orig)) from exc
        raise
