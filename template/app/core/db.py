"""The async engine and sessions."""

import asyncio
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, CursorResult, Select, exc, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, NullPool
from sqlalchemy.util import await_only, greenlet_spawn
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import Settings
from app.core.dialect import (
    READ_ONLY_OPTIONS,
    SINGLE_STATEMENT_OPTIONS,
    configure_engine,
    engine_options,
)


class FairAsyncQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's async pool, with connections handed out in the order they were asked for.

    The stock pool lets a newly arrived request take a connection that was just returned,
    ahead of requests already waiting; under load some requests then wait until
    `pool_timeout` runs out and fail. Here every checkout first takes a permit from a FIFO
    semaphore with one permit per connection the pool may open, so the pool itself never
    has anyone waiting and the semaphore decides, first come first served.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._permits = asyncio.Semaphore(self.size() + max(self._max_overflow, 0))
        self.waiting = 0  # checkouts waiting for a connection now

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            await_only(self._take_permit())
        except TimeoutError:
            raise exc.TimeoutError(
                f"no database connection free within {self._timeout:g} s "
                f"(pool size {self.size()}, overflow {self._max_overflow})"
            ) from None
        try:
            return super()._do_get()
        except BaseException:
            self._permits.release()
            raise

    async def _take_permit(self) -> None:
        # Awaited in the caller's own task (no wait_for task), so a waiter joins the
        # queue at once and nobody can slip in ahead of it.
        if not self._permits.locked():
            await self._permits.acquire()  # free: returns without waiting
            return
        self.waiting += 1
        try:
            async with asyncio.timeout(self._timeout):
                await self._permits.acquire()
        finally:
            self.waiting -= 1

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            self._permits.release()


P = ParamSpec("P")
T = TypeVar("T")


class Database:
    """One engine, its session factory, `read` and `write_one`, created per application instance.

    `sessionmaker` opens transactional sessions, for writes that load ORM objects and
    change them. `read` runs queries that only read (the current user on every request,
    pages, single rows) on the same pool, in the database's cheapest safe way to read: see
    READ_ONLY_OPTIONS in app/core/dialect.py. `write_one` runs a change of one Core
    statement (an insert) as a transaction of its own, in autocommit where that saves
    round trips.
    """

    def __init__(self, settings: Settings) -> None:
        options: dict[str, Any] = {
            # A connection the server dropped is replaced instead of failing a request
            # (unless the dialect has a cheaper way, see engine_options()).
            "pool_pre_ping": True,
            "pool_size": settings.db_pool_size,
            "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout_seconds,
            "poolclass": FairAsyncQueuePool,
            # Errors and logs never show a statement's values (password hashes among them).
            "hide_parameters": True,
            **engine_options(),
        }
        self.engine: AsyncEngine = create_async_engine(settings.database_url, **options)
        configure_engine(self.engine)
        # Objects stay readable after commit: async code cannot lazily reload them.
        self.sessionmaker = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False
        )
        # Readiness probes connect afresh, outside the pool, so that they answer at once
        # even when every pooled connection is busy.
        self._probe_engine = create_async_engine(
            settings.database_url, poolclass=NullPool, hide_parameters=True, **engine_options()
        )
        self._read_engine = self.engine.execution_options(**READ_ONLY_OPTIONS).sync_engine
        self._single_statement_engine = (
            None
            if SINGLE_STATEMENT_OPTIONS is None
            else self.engine.execution_options(**SINGLE_STATEMENT_OPTIONS).sync_engine
        )

    async def read(
        self, query: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `query(connection, *args, **kwargs)` on a pooled connection, for reads only.

        `query` is a plain function of a Connection: checkout, its statements and checkin
        run in one greenlet, as AsyncConnection.run_sync runs its function, instead of one
        greenlet and one ORM session per step. On the hot reads that halves SQLAlchemy's
        cost per request (docs/benchmarks.md).
        """
        return await greenlet_spawn(self._read, lambda conn: query(conn, *args, **kwargs))

    async def write_one(
        self, change: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `change(connection, *args, **kwargs)`, which executes exactly one statement
        (an insert), as a transaction of its own. In one greenlet, as `read`: for a change
        with no ORM object to load first.

        One statement is atomic by itself, so where the database allows it cheaply it runs
        in autocommit: one round trip instead of BEGIN, the statement and COMMIT (see
        SINGLE_STATEMENT_OPTIONS in app/core/dialect.py). Elsewhere it runs in a
        transaction: committed when it returns, rolled back if it raises.
        """
        return await greenlet_spawn(self._write_one, lambda conn: change(conn, *args, **kwargs))

    def _read(self, query: Callable[[Connection], T]) -> T:
        with self._read_engine.connect() as connection:
            return query(connection)

    def _write_one(self, change: Callable[[Connection], T]) -> T:
        if self._single_statement_engine is None:
            with self.engine.sync_engine.begin() as connection:
                return change(connection)
        with self._single_statement_engine.connect() as connection:
            return change(connection)

    async def ping(self, timeout_seconds: float) -> None:
        """Run SELECT 1 on a connection of its own; raise if that takes longer than
        `timeout_seconds` or fails."""
        async with asyncio.timeout(timeout_seconds), self._probe_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self._probe_engine.dispose()


def read_page(
    connection: Connection,
    rows: Select[Any],
    count: Select[Any],
    params: dict[str, Any],
    offset: int,
    limit: int,
) -> tuple[list[dict[str, Any]], int]:
    """One page of `rows` (with `offset` and `limit` bound parameters) as dicts, and the
    total that `count` counts.

    The page is read with one row more than asked for: when that row is missing, this is
    the last page and the total follows from it, so the count runs only for pages that
    have more after them (or are past the end).
    """
    found = as_dicts(connection.execute(rows, {**params, "offset": offset, "limit": limit + 1}))
    if len(found) <= limit and (found or offset == 0):
        return found, offset + len(found)
    return found[:limit], connection.execute(count, params).scalar_one()


def as_dicts(result: CursorResult[Any]) -> list[dict[str, Any]]:
    """The rows of `result` as dicts keyed by column name.

    Pydantic validates a page of dicts several times faster than a page of Row objects
    read attribute by attribute.
    """
    keys = tuple(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.all()]
