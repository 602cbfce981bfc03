"""The connection pool serves the requests waiting for a connection in arrival order."""

import asyncio
import re

import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.core.config import Settings
from app.core.db import Database, FairAsyncQueuePool
from tests.conftest import GUARD_SECONDS, wait_until


async def test_a_returned_connection_goes_to_the_request_waiting_longest(
    settings: Settings,
) -> None:
    database = Database(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    pool = database.engine.sync_engine.pool
    assert isinstance(pool, FairAsyncQueuePool)
    order: list[str] = []

    async def use(name: str) -> None:
        async with database.engine.connect():
            order.append(name)

    async def scenario() -> None:
        held = await database.engine.connect()  # the only connection
        waiter = asyncio.create_task(use("waiting"))
        await wait_until(lambda: pool.waiting, "the second checkout waiting")
        # Give the connection back and ask for one at once, before the waiter has run:
        # a pool that lets newcomers go first hands it to the newcomer.
        await held.close()
        await use("newcomer")
        await waiter

    try:
        await asyncio.wait_for(scenario(), GUARD_SECONDS)
    finally:
        await database.dispose()
    assert order == ["waiting", "newcomer"]


async def test_a_request_that_waits_too_long_for_a_connection_gets_a_clear_error(
    settings: Settings,
) -> None:
    database = Database(
        settings.model_copy(
            update={"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout_seconds": 0.05}
        )
    )
    try:
        async with database.engine.connect():
            message = re.escape("no database connection free within 0.05 s")
            with pytest.raises(PoolTimeoutError, match=message):
                await asyncio.wait_for(database.engine.connect(), GUARD_SECONDS)
    finally:
        await database.dispose()
