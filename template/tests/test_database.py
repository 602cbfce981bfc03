"""The database layer: the fast read path, the unit of work, the pool's timeout, and
dependencies that tests (and teams) can replace."""

import asyncio
import uuid

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import Connection, Integer, bindparam, text

from app.api.deps import get_database, get_token_service
from app.core.config import Settings
from app.core.db import Database, UnitOfWork
from app.core.security import TokenClaims
from app.models.user import User
from tests.conftest import GUARD_SECONDS, MakeUser, SignedIn, make_settings


def test_the_one_sqlalchemy_internal_in_use_still_works() -> None:
    """app/core/db.py runs its fast path with sqlalchemy.util.greenlet_spawn, which is
    not public API. If an upgrade of SQLAlchemy moves or changes it, this fails first:
    then replace Database.read's body with AsyncConnection.run_sync."""
    from sqlalchemy.util import await_only, greenlet_spawn

    async def inner() -> int:
        await asyncio.sleep(0)
        return 41

    async def scenario() -> int:
        return int(await greenlet_spawn(lambda: await_only(inner()) + 1))

    assert asyncio.run(scenario()) == 42


async def test_a_fast_read_runs_a_function_of_a_connection(settings: Settings) -> None:
    database = Database(settings)

    def query(connection: Connection, value: int) -> int:
        statement = text("SELECT :value").bindparams(bindparam("value", type_=Integer))
        return int(connection.execute(statement, {"value": value}).scalar_one())

    try:
        assert await asyncio.wait_for(database.read(query, 7), GUARD_SECONDS) == 7
    finally:
        await database.dispose()


async def test_a_transaction_commits_its_block_and_rolls_back_a_block_that_raises(
    app: FastAPI, make_user: MakeUser
) -> None:
    user = await make_user()
    user_id = uuid.UUID(user.id)
    pool = app.state.database.engine.pool
    uow = UnitOfWork(app.state.database)
    with pytest.raises(RuntimeError, match="no transaction"):
        uow.session  # noqa: B018 - outside a block there is no session to use
    async with uow.transaction():
        assert await uow.read(lambda c: c.execute(text("SELECT 1")).scalar_one()) == 1
        assert pool.checkedout() == 0  # the fast path gave its connection back, no session

    async def change_then_fail() -> None:
        async with uow.transaction():
            row = await uow.session.get(User, user_id)
            assert row is not None
            row.full_name = "Rolled back"
            await uow.session.flush()
            raise LookupError

    with pytest.raises(LookupError):
        await change_then_fail()
    async with uow.transaction():
        row = await uow.session.get(User, user_id)
        assert row is not None
        assert row.full_name is None
        row.full_name = "Committed"
        with pytest.raises(RuntimeError, match="do not nest"):
            async with uow.transaction():
                pass

    another = UnitOfWork(app.state.database)
    async with another.transaction():
        row = await another.session.get(User, user_id)
        assert row is not None
        assert row.full_name == "Committed"
    assert pool.checkedout() == 0  # every block gave its connection back


async def test_a_request_that_waits_too_long_for_a_connection_gets_503(
    migrated_database: str, make_user: MakeUser, app: FastAPI, client: AsyncClient
) -> None:
    user = await make_user()
    settings = make_settings(
        migrated_database, db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.1
    )
    starved = Database(settings)
    app.dependency_overrides[get_database] = lambda: starved
    try:
        async with starved.engine.connect():  # the pool's only connection, held elsewhere
            response = await client.get("/api/v1/users/me", headers=user.headers)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
    finally:
        await starved.dispose()


class ForgedTokens:
    """Stands in for the token service: every token names one user."""

    def __init__(self, user: SignedIn) -> None:
        self.user_id = uuid.UUID(user.id)
        self.session_id = uuid.UUID(user.session_id)

    def read(self, token: str) -> TokenClaims:
        return TokenClaims(user_id=self.user_id, role="unused", session_id=self.session_id)


async def test_the_current_user_comes_from_overridable_dependencies(
    app: FastAPI, client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    app.dependency_overrides[get_token_service] = lambda: ForgedTokens(user)
    response = await client.get(
        "/api/v1/users/me", headers={"Authorization": "Bearer any-token-at-all"}
    )
    assert response.status_code == 200
    assert response.json()["id"] == user.id


@pytest.mark.parametrize("path", ["/api/v1/users", f"/api/v1/users/{uuid.uuid4()}"])
async def test_admin_only_routes_guard_with_a_route_dependency(
    client: AsyncClient, make_user: MakeUser, path: str
) -> None:
    user = await make_user()
    assert (await client.get(path, headers=user.headers)).status_code == 403
    assert (await client.get(path)).status_code == 401
