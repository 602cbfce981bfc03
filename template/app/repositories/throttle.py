"""Queries on attempt counters."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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
    in_flight: int
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

    async def add(
        self, key: CounterKey, now: datetime, window: timedelta, *, in_flight: bool
    ) -> None:
        """Count one attempt for `key` (as still being checked if `in_flight`), in one
        statement. A window that has ended starts again at `now`; the row stays locked
        until the transaction ends."""
        expired = COUNTERS.c.window_started_at <= literal(now - window, UTCDateTime)
        flight = int(in_flight)
        statement = insert_or_update(
            COUNTERS,
            {
                "scope": key.scope,
                "email": key.email,
                "address": key.address,
                "attempts": 1,
                "in_flight": flight,
                "window_started_at": now,
            },
            # The window start last: some databases assign in order, and the others read
            # its old value.
            {
                "attempts": case((expired, 1), else_=COUNTERS.c.attempts + 1),
                "in_flight": case((expired, flight), else_=COUNTERS.c.in_flight + flight),
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
                row.attempts, row.in_flight, row.window_started_at
            )
            for row in (await self.uow.session.exec(statement)).all()
        }

    async def settle(self, key: CounterKey, *, failed: bool) -> None:
        """Settle one attempt in flight for `key`: it stays counted if it `failed`, and
        is uncounted if not."""
        values: dict[str, Any] = {"in_flight": _decremented(COUNTERS.c.in_flight)}
        if not failed:
            values["attempts"] = _decremented(COUNTERS.c.attempts)
        await self.uow.session.exec(update(COUNTERS).where(_matches(key)).values(values))

    async def forgive(self, key: CounterKey) -> None:
        """Settle one attempt in flight as a success and forget the key's settled
        failures; attempts of others still in flight stay counted."""
        remaining = _decremented(COUNTERS.c.in_flight)
        await self.uow.session.exec(
            update(COUNTERS).where(_matches(key)).values(attempts=remaining, in_flight=remaining)
        )

    async def clear(self, scopes: Sequence[str], email: str) -> None:
        """Forget every count of `scopes` for the account `email`, from every address."""
        await self.uow.session.exec(
            delete(COUNTERS).where(COUNTERS.c.scope.in_(scopes), COUNTERS.c.email == email)
        )


def _decremented(column: Any) -> Any:
    """`column` - 1, but never below 0 (a window that restarted meanwhile)."""
    return case((column > 0, column - 1), else_=0)
