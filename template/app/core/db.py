"""The database: the async engine, a unit of work per request, and fast reads."""

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, CursorResult, Select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

# The one use of SQLAlchemy's internals in this service, isolated here: greenlet_spawn runs
# a sync function in a greenlet of its own, as AsyncConnection.run_sync does, but with the
# checkout and checkin inside that one greenlet instead of three. On the reads that every
# request makes this saves about a tenth of the request's CPU (docs/performance.md); the
# fast writes use it too. tests/test_database.py fails at once if SQLAlchemy moves or
# changes it.
from sqlalchemy.util import greenlet_spawn
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import Settings
from app.core.dialect import configure_engine, engine_options, execution_options

P = ParamSpec("P")
T = TypeVar("T")


class Database:
    """One engine and what runs on it, created per application instance.

    `sessionmaker` opens the sessions that units of work change data in. `read`,
    `write_one` and `write` are the repositories' fast paths: a function of a sync
    Connection runs on a pooled connection, checkout to checkin in one greenlet.
    """

    def __init__(self, settings: Settings) -> None:
        options: dict[str, Any] = {
            # A connection the server dropped is replaced instead of failing a request
            # (unless the dialect has a cheaper way, see engine_options()).
            "pool_pre_ping": True,
            "pool_size": settings.db_pool_size,
            "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout_seconds,
            # Errors and logs never show a statement's values (password hashes among them).
            "hide_parameters": True,
            **engine_options(settings.db_pooler),
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
            settings.database_url,
            poolclass=NullPool,
            hide_parameters=True,
            **engine_options(settings.db_pooler),
        )
        # What the fast paths may skip depends on the pooler (execution_options()).
        read_only, single_statement = execution_options(settings.db_pooler)
        self._read_engine = self.engine.execution_options(**read_only).sync_engine
        self._single_statement_engine = (
            None
            if single_statement is None
            else self.engine.execution_options(**single_statement).sync_engine
        )

    async def read(
        self, query: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `query(connection, *args, **kwargs)`, which only reads, on a pooled
        connection set up for reading (READ_ONLY_OPTIONS in app/core/dialect.py)."""
        return await greenlet_spawn(self._read, lambda conn: query(conn, *args, **kwargs))

    async def write_one(
        self, change: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `change(connection, *args, **kwargs)`, which executes exactly one statement
        (an insert), as a transaction of its own.

        One statement is atomic by itself, so where the database allows it cheaply it runs
        in autocommit: one round trip instead of BEGIN, the statement and COMMIT
        (SINGLE_STATEMENT_OPTIONS in app/core/dialect.py).
        """
        return await greenlet_spawn(self._write_one, lambda conn: change(conn, *args, **kwargs))

    async def write(
        self, change: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `change(connection, *args, **kwargs)`, several statements, as one transaction
        of its own: committed when it returns, rolled back if it raises."""
        return await greenlet_spawn(self._write, lambda conn: change(conn, *args, **kwargs))

    def _read(self, query: Callable[[Connection], T]) -> T:
        with self._read_engine.connect() as connection:
            return query(connection)

    def _write_one(self, change: Callable[[Connection], T]) -> T:
        if self._single_statement_engine is None:
            return self._write(change)
        with self._single_statement_engine.connect() as connection:
            return change(connection)

    def _write(self, change: Callable[[Connection], T]) -> T:
        with self.engine.sync_engine.begin() as connection:
            return change(connection)

    async def ping(self, timeout_seconds: float) -> None:
        """Run SELECT 1 on a connection of its own; raise if that takes longer than
        `timeout_seconds` or fails."""
        async with asyncio.timeout(timeout_seconds), self._probe_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self._probe_engine.dispose()


class UnitOfWork:
    """One request's (or one command's) access to the database.

    A service runs each of its operations in `async with uow.transaction():`, and its
    repositories read and write through the unit of work inside that block. Only they
    know how: on the block's ORM session (`session`, opened on first use, committed when
    the block ends, rolled back when it raises, its connection back in the pool either
    way), or on the fast path (`read`, `write_one`, `write`), which opens no session. So a
    unit of work holds nothing between blocks and needs no closing.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self._in_transaction = False
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        """The session of the transaction in progress."""
        if not self._in_transaction:
            raise RuntimeError("no transaction: wrap the work in `async with uow.transaction():`")
        if self._session is None:
            self._session = self.database.sessionmaker()
        return self._session

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """One transaction for the block, committed when it ends and rolled back if it
        raises. Costs nothing when the block never uses the session."""
        return Transaction(self)

    async def read(
        self, query: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """See Database.read: on a connection of its own, so it does not see what the
        block's session has not committed."""
        return await self.database.read(query, *args, **kwargs)

    async def write_one(
        self, change: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """See Database.write_one: committed at once, on its own, whatever the block does."""
        return await self.database.write_one(change, *args, **kwargs)

    async def write(
        self, change: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """See Database.write: a transaction of its own, whatever the block does."""
        return await self.database.write(change, *args, **kwargs)


class Transaction:
    """`async with uow.transaction():`. A plain class rather than a generator-based context
    manager: every request enters one, and this costs a fraction as much."""

    __slots__ = ("uow",)

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def __aenter__(self) -> None:
        if self.uow._in_transaction:
            raise RuntimeError("a transaction is already in progress: they do not nest")
        self.uow._in_transaction = True

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        uow = self.uow
        session, uow._session = uow._session, None
        try:
            if session is not None:
                try:
                    if kind is None:
                        await session.commit()
                finally:
                    await session.close()  # rolls back what was not committed
        finally:
            uow._in_transaction = False


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
