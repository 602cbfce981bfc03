"""Limits on attempts: failed logins and registrations, counted in the database."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.core.db import UnitOfWork
from app.repositories.throttle import AttemptCounterRepository, CounterKey


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `max_attempts` attempts for `key` in each window of length `window`."""

    key: CounterKey
    max_attempts: int
    window: timedelta


class AttemptLimiter:
    """Counts attempts against limits, in the caller's unit of work (its transaction).

    Counting comes before the work it limits (a password check): the counter rows stay
    locked until the transaction ends, so concurrent attempts for one key are counted
    one after another, and the attempts over a limit see that they are.
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self.counters = AttemptCounterRepository(uow)

    async def count(self, limits: Sequence[Limit], now: datetime) -> int | None:
        """Count one attempt against every limit. Returns None when all of them allow it;
        otherwise the seconds until every exceeded limit's window has ended."""
        # Always in the same order, so that two transactions never wait for each other.
        for limit in limits:
            await self.counters.add(limit.key, now, limit.window)
        counts = await self.counters.get_many([limit.key for limit in limits])
        waits = [
            (counts[limit.key].window_started_at + limit.window - now).total_seconds()
            for limit in limits
            if counts[limit.key].attempts > limit.max_attempts
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    async def take_back(self, limits: Sequence[Limit]) -> None:
        """Uncount the attempt just counted: it was not what the limits are about."""
        for limit in limits:
            await self.counters.take_back(limit.key)

    async def clear(self, key: CounterKey) -> None:
        await self.counters.clear(key)
