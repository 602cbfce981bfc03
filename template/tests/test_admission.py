"""Admission control: requests beyond what the pool can serve wait at the door, in order."""

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from starlette.types import Message, Receive, Scope, Send

from app.core.config import Settings
from app.runtime.admission import AdmissionMiddleware
from tests.conftest import (
    GUARD_SECONDS,
    PASSWORD,
    BlockedHashing,
    SignedIn,
    gate_of,
    make_settings,
    wait_until,
)


@pytest.fixture
def settings(migrated_database: str) -> Settings:
    # One connection, so one request at a time inside the application.
    return make_settings(
        migrated_database, db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=5
    )


async def call(app: Any, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """One GET through a bare ASGI app: status, headers and body."""
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    await app(scope, receive, send)
    start, body = messages[0], messages[1]
    return start["status"], dict(start["headers"]), body["body"]


async def test_requests_beyond_the_limit_enter_one_by_one_in_arrival_order() -> None:
    inside: list[str] = []
    entered: list[str] = []
    release = asyncio.Event()

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        inside.append(scope["path"])
        entered.append(scope["path"])
        assert len(inside) == 1, f"{inside} are inside at once"
        await release.wait()
        inside.remove(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = AdmissionMiddleware(application, limit=1, timeout_seconds=GUARD_SECONDS)

    async def scenario() -> list[int]:
        calls = []
        for path in ("/first", "/second", "/third"):
            calls.append(asyncio.create_task(call(gate, path)))
            await wait_until(
                lambda: len(entered) + gate.waiting == len(calls), f"{path} entering or waiting"
            )
        assert entered == ["/first"]
        assert gate.waiting == 2
        release.set()
        return [status for status, _, _ in await asyncio.gather(*calls)]

    assert await asyncio.wait_for(scenario(), GUARD_SECONDS) == [200, 200, 200]
    assert entered == ["/first", "/second", "/third"]


async def test_a_request_not_let_in_in_time_gets_503_with_retry_after() -> None:
    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("a request that was never let in reached the application")

    gate = AdmissionMiddleware(application, limit=1, timeout_seconds=0.05)
    await gate._slots.acquire()  # the only place is taken
    status, headers, body = await asyncio.wait_for(call(gate, "/api/v1/users/me"), GUARD_SECONDS)
    assert status == 503
    assert headers[b"retry-after"] == b"5"
    assert body == b'{"detail": "The service is busy; try again shortly"}'
    assert gate.waiting == 0


async def test_the_app_answers_503_with_its_headers_when_full_and_health_still_answers(
    app: FastAPI, client: AsyncClient, settings: Settings
) -> None:
    assert (await client.get("/health")).status_code == 200  # builds the middleware stack
    gate = gate_of(app)
    assert gate.limit == settings.db_pool_size + settings.db_max_overflow
    gate.timeout_seconds = 0.05
    await gate._slots.acquire()  # every place is taken
    try:
        response = await client.get("/api/v1/users/me")
        assert response.status_code == 503
        assert response.json() == {"detail": "The service is busy; try again shortly"}
        assert response.headers["Retry-After"] == "5"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "X-Request-ID" in response.headers
        # Liveness skips the queue.
        assert (await client.get("/health")).status_code == 200
    finally:
        gate._slots.release()
    assert (await client.get("/api/v1/users/me")).status_code == 401  # let in again


async def test_a_login_gives_its_place_back_while_its_password_is_hashed(
    app: FastAPI,
    client: AsyncClient,
    user: SignedIn,
    blocked_hashing: BlockedHashing,
) -> None:

    async def scenario() -> None:
        login = asyncio.create_task(
            client.post("/api/v1/auth/login", data={"username": user.email, "password": PASSWORD})
        )
        started = await asyncio.to_thread(blocked_hashing.started.wait, GUARD_SECONDS)
        assert started, "the login never started hashing"
        # The only place in the application is free while the login hashes: another
        # request gets in and is answered before the login is.
        me = await client.get("/api/v1/users/me", headers=user.headers)
        assert me.status_code == 200, me.text
        assert not login.done()
        blocked_hashing.release.set()
        response = await login
        assert response.status_code == 200, response.text

    await asyncio.wait_for(scenario(), GUARD_SECONDS)
    assert gate_of(app).waiting == 0


async def test_a_refusal_is_sent_late_and_gives_its_place_back_meanwhile() -> None:
    entered: list[str] = []
    answered: list[str] = []

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        entered.append(scope["path"])
        status = 429 if scope["path"] == "/refused" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        answered.append(scope["path"])

    gate = AdmissionMiddleware(
        application, limit=1, timeout_seconds=GUARD_SECONDS, refusal_pause_seconds=GUARD_SECONDS
    )

    async def scenario() -> tuple[int, int]:
        refused = asyncio.create_task(call(gate, "/refused"))
        await wait_until(
            lambda: entered == ["/refused"] and not gate._slots.locked(), "the refusal's pause"
        )
        # The only place is free during the pause: another request is served at once.
        status, _, _ = await call(gate, "/served")
        assert not refused.done()
        refused.cancel()
        return status, len(answered)

    assert await asyncio.wait_for(scenario(), GUARD_SECONDS) == (200, 1)
