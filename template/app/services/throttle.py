"""Limits on attempts: failed logins and registrations, counted in the database."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.core.db import UnitOfWork
from app.repositories.throttle import AttemptCounterRepository, Count, CounterKey


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `max_attempts` attempts for `key` in each window of length `window`."""

    key: CounterKey
    max_attempts: int
    window: timedelta


# What a refusal says to wait when the limit is full only of attempts still being checked:
# they settle within a second or so, one way or the other.
IN_FLIGHT_RETRY_SECONDS = 1


class AttemptLimiter:
    """Counts attempts against limits, in the caller's unit of work (its transaction).

    An attempt is counted before the work it limits (a password check), and settled
    after it. The counter rows stay locked until the counting transaction ends, so
    concurrent attempts for one key are counted one after another, and those over a
    limit see that they are: N concurrent guesses check at most the limit's passwords.
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self.counters = AttemptCounterRepository(uow)

    async def count(
        self, limits: Sequence[Limit], now: datetime, *, in_flight: bool = True
    ) -> int | None:
        """Count one attempt against every limit, as still in flight unless told
        otherwise. Returns None when every limit allows it; otherwise the seconds to wait:
        until the window ends where settled failures fill a limit, or a moment where
        attempts still being checked do."""
        # Always in the same order, so that two transactions never wait for each other.
        for limit in limits:
            await self.counters.add(limit.key, now, limit.window, in_flight=in_flight)
        counts = await self.counters.get_many([limit.key for limit in limits])
        waits = [
            self._wait(counts[limit.key], limit, now)
            for limit in limits
            if counts[limit.key].attempts > limit.max_attempts
        ]
        return max(waits) if waits else None

    @staticmethod
    def _wait(count: Count, limit: Limit, now: datetime) -> int:
        # This attempt is one of those in flight, and not among the settled failures.
        if count.attempts - count.in_flight < limit.max_attempts:
            return IN_FLIGHT_RETRY_SECONDS
        window_left = (count.window_started_at + limit.window - now).total_seconds()
        return max(1, math.ceil(window_left))

    async def settle(self, limits: Sequence[Limit], *, failed: bool) -> None:
        """Settle the attempt counted for every limit: it stays counted if it failed."""
        await self.counters.settle([limit.key for limit in limits], failed=failed)

    async def forgive(self, limit: Limit) -> None:
        """Settle the attempt as a success and forget the limit's settled failures."""
        await self.counters.forgive(limit.key)
