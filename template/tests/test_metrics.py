"""Prometheus metrics: on their own port, by route template, and what each one counts."""

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import Settings
from app.core.dialect import DIALECT_NAME
from app.core.security import PasswordHasher
from app.main import create_app
from app.runtime import metrics
from tests.conftest import (
    PASSWORD,
    BlockedHashing,
    SignedIn,
    gate_of,
    make_settings,
    wait_until,
)

LOGIN = "/api/v1/auth/login"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def settings(migrated_database: str) -> Settings:
    return make_settings(
        migrated_database, metrics_host="127.0.0.1", metrics_port=free_port(), login_max_failures=2
    )


@pytest.fixture
async def running(app: FastAPI) -> AsyncIterator[str]:
    """The app's lifespan running, and with it the metrics endpoint; yields its URL."""
    async with app.router.lifespan_context(app):
        yield f"http://127.0.0.1:{app.state.settings.metrics_port}/metrics"


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_the_public_port_has_no_metrics(client: AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 404


async def test_requests_are_counted_by_route_template_and_status_class(
    client: AsyncClient, admin: SignedIn, running: str
) -> None:
    route = {"method": "GET", "route": "/api/v1/users/{user_id}"}
    before = await scrape(running)

    for _ in range(2):  # two ids, one series
        response = await client.get(f"/api/v1/users/{uuid.uuid4()}", headers=admin.headers)
        assert response.status_code == 404
    assert (await client.get(f"/api/v1/users/{admin.id}", headers=admin.headers)).is_success
    assert (await client.get("/no/such/path")).status_code == 404
    after = await scrape(running)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("http_requests_total", **route, status="4xx") == 2
    assert delta("http_requests_total", **route, status="2xx") == 1
    assert delta("http_request_duration_seconds_count", **route, status="4xx") == 2
    assert delta("http_request_duration_seconds_bucket", **route, status="4xx", le="+Inf") == 2
    assert delta("http_requests_total", method="GET", route="unmatched", status="4xx") == 1
    paths = {dict(labels).get("route", "") for _, labels in after}
    assert not [path for path in paths if admin.id in path or "no/such" in path]


async def test_build_pool_and_in_progress_are_reported(
    client: AsyncClient, running: str, settings: Settings
) -> None:
    assert (await client.get("/health")).status_code == 200
    samples = await scrape(running)

    [build] = [labels for name, labels in samples if name == "app_build_info"]
    assert dict(build)["database"] == DIALECT_NAME
    assert dict(build)["jwt_library"]
    limit = settings.db_pool_size + settings.db_max_overflow
    assert value(samples, "db_pool_connections_limit") == limit
    assert value(samples, "db_pool_connections_in_use") == 0
    assert value(samples, "http_requests_in_progress") == 0


async def test_logins_are_counted_by_outcome_and_lockouts_once(
    client: AsyncClient, user: SignedIn, running: str
) -> None:
    before = await scrape(running)
    wrong = {"username": user.email, "password": "wrong password"}
    statuses = [(await client.post(LOGIN, data=wrong)).status_code for _ in range(4)]
    right = {"username": user.email, "password": PASSWORD}
    assert statuses == [401, 401, 429, 429]
    assert (await client.post(LOGIN, data=right)).status_code == 429
    after = await scrape(running)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("login_attempts_total", outcome="failure") == 2
    assert delta("login_attempts_total", outcome="locked") == 3
    assert delta("login_lockouts_total", limit="login") == 1  # the account from this address
    assert delta("login_lockouts_total", limit="login-address") == 0


async def test_the_hashing_queue_and_the_admission_queue_are_reported(
    migrated_database: str,
) -> None:
    settings = make_settings(
        migrated_database, metrics_host="127.0.0.1", metrics_port=free_port(), db_pool_size=1
    )
    app = create_app(settings)
    hasher: PasswordHasher = app.state.password_hasher
    blocked = BlockedHashing(hasher._context)
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            AsyncClient(transport=transport, base_url="http://test") as http,
        ):
            await http.post(
                "/api/v1/auth/register", json={"email": "queued@example.com", "password": PASSWORD}
            )
            hasher._context = blocked
            login = asyncio.create_task(
                http.post(LOGIN, data={"username": "queued@example.com", "password": PASSWORD})
            )
            await asyncio.to_thread(blocked.started.wait, 10)
            # The login gave its place back while it waits for its hash; a request that
            # holds the only place makes the next one wait at the door.
            gate = gate_of(app)
            await gate._slots.acquire()
            waiting = asyncio.create_task(http.get("/api/v1/users/me"))
            await wait_until(lambda: gate.waiting == 1, "a request waiting at the door")
            during = await scrape(url)
            gate._slots.release()
            await waiting
            blocked.release.set()
            assert (await login).status_code == 200
            after = await scrape(url)
    finally:
        blocked.release.set()
        await app.state.database.dispose()

    assert value(during, "password_hashes_pending") == 1
    assert value(during, "admission_queue_length") == 1
    assert value(after, "password_hashes_pending") == 0
    assert value(after, "admission_queue_length") == 0
    admitted = value(after, "admission_wait_seconds_count", outcome="admitted")
    assert admitted - value(during, "admission_wait_seconds_count", outcome="admitted") == 1


async def test_only_metrics_is_served_on_the_metrics_port(running: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(running.removesuffix("metrics") + "docs")
    assert response.status_code == 404


def test_port_zero_turns_metrics_off(migrated_database: str) -> None:
    on = create_app(make_settings(migrated_database))
    off = create_app(make_settings(migrated_database, metrics_port=0))

    def middleware(app: FastAPI) -> list[object]:
        return [entry.cls for entry in app.user_middleware]

    assert metrics.RequestMetricsMiddleware in middleware(on)
    assert metrics.RequestMetricsMiddleware not in middleware(off)
