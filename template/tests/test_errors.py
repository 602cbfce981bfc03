"""What failures look like to a client: a bug is a 500 with a request id and a logged
traceback, an overloaded service a 503 with Retry-After, and readiness answers in time."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlmodel import select

from app.api.deps import get_current_user, get_unit_of_work
from app.core.config import Settings
from app.core.db import UnitOfWork
from app.core.security import PasswordHasher
from app.models.throttle import AttemptCounter
from app.models.user import Principal
from app.runtime.admission import stepped_out
from tests.conftest import (
    GUARD_SECONDS,
    PASSWORD,
    BlockedHashing,
    MakeUser,
    SignedIn,
    gate_of,
    make_settings,
)

HASH_IN_A_PARAMETER = "$2b$12$abcdefghijklmnopqrstuv0123456789ABCDEFGHIJKLMNOPQRSTU"


@pytest.fixture
def settings(migrated_database: str) -> Settings:
    # One pooled connection, so that one held connection saturates the pool.
    return make_settings(
        migrated_database, db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=10
    )


async def test_a_failing_query_is_a_500_with_its_traceback_logged_and_values_hidden(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_authentication() -> Principal:
        async with app.state.database.sessionmaker() as db_session:
            # Every database refuses this: the table does not exist. (Some report it as
            # an OperationalError, like a lost connection: it must not be a 503.)
            await db_session.exec(
                text("SELECT * FROM no_such_table WHERE hashed_password = :hash"),
                params={"hash": HASH_IN_A_PARAMETER},
            )
        raise AssertionError("the query succeeded")

    app.dependency_overrides[get_current_user] = broken_authentication
    transport = ASGITransport(app=app, raise_app_exceptions=False)
    with caplog.at_level(logging.ERROR):
        async with AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get("/api/v1/users/me", headers={"Authorization": "Bearer x"})

    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    assert response.json() == {"detail": "Internal server error", "request_id": request_id}
    records = [record for record in caplog.records if record.msg == "unhandled error"]
    assert len(records) == 1
    assert getattr(records[0], "request_id", None) == request_id
    assert records[0].exc_info is not None  # the traceback is logged
    assert "no_such_table" in caplog.text
    assert HASH_IN_A_PARAMETER not in caplog.text
    assert HASH_IN_A_PARAMETER not in response.text


async def test_readiness_answers_at_once_while_every_pooled_connection_is_busy(
    app: FastAPI, client: AsyncClient
) -> None:
    async with app.state.database.engine.connect() as held:  # the pool's only connection
        await held.execute(text("SELECT 1"))
        # The pool would make a checkout wait 10 s; a probe must not.
        async with asyncio.timeout(1.0):
            response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


async def test_a_login_beyond_the_hashing_queue_gets_503_at_once_and_is_not_counted(
    app: FastAPI, client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    app.state.password_hasher.close()
    hasher = PasswordHasher(rounds=4, queue_limit=2)
    hasher.waiting = stepped_out
    app.state.password_hasher = hasher
    blocking = BlockedHashing(hasher._context)
    hasher._context = blocking
    form = {"username": user.email, "password": PASSWORD}
    try:
        queued = [
            asyncio.create_task(client.post("/api/v1/auth/login", data=form)) for _ in range(2)
        ]
        assert await asyncio.to_thread(blocking.started.wait, GUARD_SECONDS)
        refused = await client.post(
            "/api/v1/auth/login", data={"username": "other@example.com", "password": "wrong!!!"}
        )
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.json() == {"detail": "The service is busy; try again shortly"}
        blocking.release.set()
        assert [response.status_code for response in await asyncio.gather(*queued)] == [200, 200]
    finally:
        blocking.release.set()
        hasher.close()
    async with app.state.database.sessionmaker() as session:
        counters = (await session.exec(select(AttemptCounter))).all()
    assert all(counter.email != "other@example.com" for counter in counters), counters


async def test_a_request_that_cannot_get_back_in_after_hashing_gets_503(
    app: FastAPI, client: AsyncClient, user: SignedIn, blocked_hashing: BlockedHashing
) -> None:
    blocking = blocked_hashing
    gate = gate_of(app)
    try:
        login = asyncio.create_task(
            client.post("/api/v1/auth/login", data={"username": user.email, "password": PASSWORD})
        )
        assert await asyncio.to_thread(blocking.started.wait, GUARD_SECONDS)
        # While the login hashes, its place is taken and not given back in time.
        gate.timeout_seconds = 0.05
        await gate._slots.acquire()
        blocking.release.set()
        response = await asyncio.wait_for(login, GUARD_SECONDS)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
    finally:
        blocking.release.set()
    gate._slots.release()


async def test_a_syntax_error_on_the_request_session_is_a_500_not_an_outage(
    app: FastAPI,
) -> None:
    class BrokenUnitOfWork(UnitOfWork):
        @asynccontextmanager
        async def transaction(self) -> AsyncIterator[None]:
            async with super().transaction():
                await self.session.execute(text("SELEC 1"))
                yield

    async def broken_unit_of_work() -> UnitOfWork:
        return BrokenUnitOfWork(app.state.database)

    app.dependency_overrides[get_unit_of_work] = broken_unit_of_work
    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post(
            "/api/v1/auth/register", json={"email": "x@example.com", "password": PASSWORD}
        )
    assert response.status_code == 500
    assert "request_id" in response.json()
