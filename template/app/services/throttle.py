"""Limits on attempts: failed logins and registrations, counted in the database."""

import math
import time
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


@dataclass(frozen=True, slots=True)
class Refusal:
    """An attempt over one or more limits: which keys, and the seconds to wait.
    `in_flight`: the limits are full only of attempts still being checked."""

    keys: tuple[CounterKey, ...]
    retry_after: int
    in_flight: bool = False


# What a refusal says to wait when the limit is full only of attempts still being checked:
# they settle within a second or so, one way or the other.
IN_FLIGHT_RETRY_SECONDS = 1
# How long this process answers a refused key by itself, without the database: a locked
# key for up to a second, one full of checks in flight for a moment (they settle fast).
REMEMBERED_SECONDS = 1.0
IN_FLIGHT_REMEMBERED_SECONDS = 0.25
REMEMBERED_KEYS = 10_000


class RecentRefusals:
    """Refusals the database decided a moment ago, remembered by this process.

    A client that hammers a refused key (a locked pair, or one whose checks are all in
    flight) is answered for up to REMEMBERED_SECONDS without the database, and never
    past the Retry-After it was given. Without this, every such attempt would queue on
    the key's row lock, holding a place in the worker, and a flood on one account would
    starve every other request. It never admits anything: every attempt it lets through
    is counted by the database, which alone enforces the limits across processes.
    """

    def __init__(
        self,
        remember_seconds: float = REMEMBERED_SECONDS,
        in_flight_seconds: float = IN_FLIGHT_REMEMBERED_SECONDS,
    ) -> None:
        self.remember_seconds = remember_seconds
        self.in_flight_seconds = in_flight_seconds
        # key -> (answered by this process until, the client may retry at); monotonic.
        self._refused: dict[CounterKey, tuple[float, float]] = {}

    def retry_after(self, keys: Sequence[CounterKey]) -> int | None:
        """The seconds to wait if one of `keys` was refused a moment ago, else None."""
        now = time.monotonic()
        for key in keys:
            remembered = self._refused.get(key)
            if remembered is None:
                continue
            until, retry_at = remembered
            if now < until:
                return max(1, math.ceil(retry_at - now))
            del self._refused[key]
        return None

    def forget_account(self, email: str) -> None:
        """Forget the refused keys of the account `email`, whose lockout was lifted."""
        for key in [key for key in self._refused if key.email == email]:
            del self._refused[key]

    def remember(self, refusal: Refusal) -> None:
        now = time.monotonic()
        longest = self.in_flight_seconds if refusal.in_flight else self.remember_seconds
        until = now + min(float(refusal.retry_after), longest)
        for key in refusal.keys:
            if key not in self._refused and len(self._refused) >= REMEMBERED_KEYS:
                del self._refused[next(iter(self._refused))]  # the oldest entry
            self._refused[key] = (until, now + refusal.retry_after)


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
    ) -> Refusal | None:
        """Count one attempt against every limit, as still in flight unless told
        otherwise. Returns None when every limit allows it; otherwise the refusal, whose
        wait is until the window ends where settled failures fill a limit, or a moment
        where attempts still being checked do."""
        # Always in the same order, so that two transactions never wait for each other.
        for limit in limits:
            await self.counters.add(limit.key, now, limit.window, in_flight=in_flight)
        counts = await self.counters.get_many([limit.key for limit in limits])
        exceeded = [limit for limit in limits if counts[limit.key].attempts > limit.max_attempts]
        if not exceeded:
            return None
        waits = [self._wait(counts[limit.key], limit, now) for limit in exceeded]
        return Refusal(
            keys=tuple(limit.key for limit in exceeded),
            retry_after=max(waits),
            in_flight=all(self._full_in_flight(counts[limit.key], limit) for limit in exceeded),
        )

    @staticmethod
    def _full_in_flight(count: Count, limit: Limit) -> bool:
        # This attempt is one of those in flight, and not among the settled failures.
        return count.attempts - count.in_flight < limit.max_attempts

    @classmethod
    def _wait(cls, count: Count, limit: Limit, now: datetime) -> int:
        if cls._full_in_flight(count, limit):
            return IN_FLIGHT_RETRY_SECONDS
        # A concurrent attempt may have opened the window a moment after this one's `now`:
        # never more than one window.
        window_left = (count.window_started_at + limit.window - now).total_seconds()
        return max(1, min(math.ceil(window_left), math.ceil(limit.window.total_seconds())))

    async def settle(self, limits: Sequence[Limit], *, failed: bool) -> None:
        """Settle the attempt counted for every limit: it stays counted if it failed."""
        # One row at a time, in the order count() locked them: two transactions that
        # lock the same rows in different orders could deadlock.
        for limit in limits:
            await self.counters.settle(limit.key, failed=failed)

    async def forgive(self, limit: Limit) -> None:
        """Settle the attempt as a success and forget the limit's settled failures."""
        await self.counters.forgive(limit.key)

    async def clear(self, scopes: Sequence[str], email: str) -> None:
        """Forget the account's counts in `scopes`, whichever addresses made them."""
        await self.counters.clear(scopes, email)
