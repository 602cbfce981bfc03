"""Liveness and readiness probes, 503 answers while the database cannot be reached, and
what start-up does."""

import asyncio
import gc
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy.engine import make_url

from app.main import create_app
from app.runtime.garbage import GC_THRESHOLDS
from tests.conftest import close_app, make_settings


def unreachable_url(database_url: str, tmp_path: Path) -> str:
    """The test database's URL changed so that no connection can be made."""
    url = make_url(database_url)
    if url.host is None:  # a database file: put it in a directory that does not exist
        url = url.set(database=str(tmp_path / "missing-directory" / "app.db"))
    else:  # a server: nothing listens on port 1, so the connection is refused
        url = url.set(port=1)
    return url.render_as_string(hide_password=False)


@pytest.fixture
async def offline_client(test_database_url: str, tmp_path: Path) -> AsyncIterator[AsyncClient]:
    """A client of an app whose database cannot be reached."""
    threads_before = set(threading.enumerate())
    app = create_app(make_settings(unreachable_url(test_database_url, tmp_path)))
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://test") as http:
        yield http
    await close_app(app)
    # A driver may discard a failed connection on a thread of its own, which reports back
    # to the event loop: let it finish while the loop still runs (the timeout is a guard).
    for thread in set(threading.enumerate()) - threads_before:
        await asyncio.to_thread(thread.join, 30)


async def test_liveness_answers_ok(client: AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_answers_ok_when_the_database_is_reachable(client: AsyncClient) -> None:
    response = await client.get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


async def test_liveness_answers_ok_when_the_database_is_unreachable(
    offline_client: AsyncClient,
) -> None:
    response = await offline_client.get("/health")

    assert response.status_code == 200


async def test_readiness_answers_503_when_the_database_is_unreachable(
    offline_client: AsyncClient,
) -> None:
    response = await offline_client.get("/health/ready")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unreachable"}


async def test_database_backed_request_answers_503_when_the_database_is_unreachable(
    offline_client: AsyncClient,
) -> None:
    response = await offline_client.post(
        "/api/v1/auth/login", data={"username": "a@example.com", "password": "long enough"}
    )

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"detail"}
    assert "unavailable" in response.json()["detail"]
    assert "Retry-After" in response.headers
    assert "Traceback" not in response.text


async def test_registration_answers_503_when_the_database_is_unreachable(
    offline_client: AsyncClient,
) -> None:
    response = await offline_client.post(
        "/api/v1/auth/register", json={"email": "a@example.com", "password": "long enough"}
    )

    assert response.status_code == 503
    assert set(response.json()) == {"detail"}


async def test_start_up_freezes_what_it_built_and_collects_less_often(app: FastAPI) -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_threshold() == GC_THRESHOLDS
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
