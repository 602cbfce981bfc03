"""Queries on attempt counters."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Table, and_, case, delete, literal, or_, update
from sqlmodel import select

from app.core.db import UnitOfWork
from app.core.dialect import insert_or_update
from app.models.throttle import AttemptCounter
from app.models.types import UTCDateTime

COUNTERS: Table = AttemptCounter.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class CounterKey:
    """What attempts are counted for; a part that is not in the key is empty."""

    scope: str
    email: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class Count:
    attempts: int
    window_started_at: datetime


def _matches(key: CounterKey) -> ColumnElement[bool]:
    return and_(
        COUNTERS.c.scope == key.scope,
        COUNTERS.c.email == key.email,
        COUNTERS.c.address == key.address,
    )


class AttemptCounterRepository:
    """Counters change in the unit of work's session, so that the caller's transaction
    decides when a count holds."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def add(self, key: CounterKey, now: datetime, window: timedelta) -> None:
        """Count one attempt for `key`, in one statement. A window that has ended starts
        again at `now`; the row stays locked until the transaction ends."""
        expired = COUNTERS.c.window_started_at <= literal(now - window, UTCDateTime)
        statement = insert_or_update(
            COUNTERS,
            {
                "scope": key.scope,
                "email": key.email,
                "address": key.address,
                "attempts": 1,
                "window_started_at": now,
            },
            # `attempts` first: MySQL assigns in order, and it reads the old window start.
            {
                "attempts": case((expired, 1), else_=COUNTERS.c.attempts + 1),
                "window_started_at": case(
                    (expired, literal(now, UTCDateTime)), else_=COUNTERS.c.window_started_at
                ),
            },
        )
        await self.uow.session.exec(statement)

    async def get_many(self, keys: Sequence[CounterKey]) -> dict[CounterKey, Count]:
        statement = select(AttemptCounter).where(or_(*(_matches(key) for key in keys)))
        return {
            CounterKey(row.scope, row.email, row.address): Count(
                row.attempts, row.window_started_at
            )
            for row in (await self.uow.session.exec(statement)).all()
        }

    async def take_back(self, key: CounterKey) -> None:
        """Uncount one attempt (one that turned out not to be a failure)."""
        await self.uow.session.exec(
            update(COUNTERS)
            .where(_matches(key), COUNTERS.c.attempts > 0)
            .values(attempts=COUNTERS.c.attempts - 1)
        )

    async def clear(self, key: CounterKey) -> None:
        await self.uow.session.exec(delete(COUNTERS).where(_matches(key)))
