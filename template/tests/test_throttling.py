"""Login throttling and the registration limit: concurrent guesses, keys that cannot be
aimed at a victim, client addresses from real sockets and from a trusted proxy."""

import asyncio
import time
from collections.abc import AsyncIterator
from ipaddress import ip_network

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlmodel import select

from app.core.client import ClientAddresses
from app.core.config import Settings
from app.main import create_app
from app.models.throttle import AttemptCounter
from app.repositories.throttle import CounterKey
from app.services.throttle import REMEMBERED_KEYS, RecentRefusals, Refusal
from tests.conftest import (
    GUARD_SECONDS,
    PASSWORD,
    BlockedHashing,
    client_from,
    close_app,
    make_settings,
    serving,
)

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
WRONG = "wrong password"


async def register(http: AsyncClient, email: str) -> None:
    response = await http.post(REGISTER, json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text


async def login(
    http: AsyncClient, email: str, password: str = PASSWORD, forwarded_for: str | None = None
) -> Response:
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    return await http.post(LOGIN, data={"username": email, "password": password}, headers=headers)


def assert_throttled(response: Response, window_seconds: int) -> None:
    assert response.status_code == 429, response.text
    assert 0 < int(response.headers["retry-after"]) <= window_seconds


@pytest.fixture
async def limited_app(migrated_database: str) -> AsyncIterator[FastAPI]:
    """An app with small limits of every kind, to reach each one in a few requests."""
    settings = make_settings(
        migrated_database,
        login_max_failures=3,
        login_max_failures_per_address=8,
        login_max_failures_per_account=6,
        register_max_per_address_per_hour=4,
        trusted_proxies="127.0.0.9",
    )
    application = create_app(settings)
    yield application
    await close_app(application)


@pytest.fixture
async def base_url(limited_app: FastAPI, app: FastAPI) -> AsyncIterator[str]:
    # `app` is requested for its clean-up: it empties the tables after the test.
    async with serving(limited_app) as url:
        yield url


async def test_concurrent_wrong_passwords_check_at_most_the_limit(
    app: FastAPI, client: AsyncClient
) -> None:
    settings: Settings = app.state.settings
    await register(client, "target@example.com")
    responses = await asyncio.gather(
        *(login(client, "target@example.com", WRONG) for _ in range(60))
    )
    statuses = [response.status_code for response in responses]
    assert statuses.count(401) <= settings.login_max_failures, statuses
    assert statuses.count(401) + statuses.count(429) == 60, statuses
    for response in responses:
        if response.status_code == 429:
            assert_throttled(response, settings.login_lockout_minutes * 60)
    # Still locked, even with the right password.
    assert_throttled(await login(client, "target@example.com"), settings.login_lockout_minutes * 60)


async def test_concurrent_right_passwords_beyond_the_limit_are_told_to_retry_at_once(
    app: FastAPI, client: AsyncClient, blocked_hashing: BlockedHashing
) -> None:
    limit = app.state.settings.login_max_failures
    await register(client, "busy@example.com")
    blocked = blocked_hashing
    logins = [asyncio.create_task(login(client, "busy@example.com")) for _ in range(20)]
    try:
        # A password is known to be right only once checked: at most the limit's
        # checks run at once, and the others are told to come back in a moment.
        refused = []
        async with asyncio.timeout(GUARD_SECONDS):
            for finished in asyncio.as_completed(logins):
                refused.append(await finished)
                if len(refused) == 20 - limit:
                    break
        for response in refused:
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"] == "1"
    finally:
        blocked.release.set()
    statuses = [response.status_code for response in await asyncio.gather(*logins)]
    assert statuses.count(200) == limit, statuses
    # None of it was a failure: after the Retry-After, the account is not locked, and
    # nothing is left in flight.
    await asyncio.sleep(1)
    assert (await login(client, "busy@example.com")).status_code == 200
    async with app.state.database.sessionmaker() as session:
        counters = (await session.exec(select(AttemptCounter))).all()
    logins_counted = [counter for counter in counters if counter.scope.startswith("login")]
    assert all((c.attempts, c.in_flight) == (0, 0) for c in logins_counted), logins_counted


async def test_failed_logins_stay_counted_once_settled(app: FastAPI, client: AsyncClient) -> None:
    await register(client, "settled@example.com")
    for _ in range(2):
        assert (await login(client, "settled@example.com", WRONG)).status_code == 401
    async with app.state.database.sessionmaker() as session:
        counters = (await session.exec(select(AttemptCounter))).all()
    logins = [counter for counter in counters if counter.scope.startswith("login")]
    assert len(logins) == 3  # the pair, the address and the account
    assert all((c.attempts, c.in_flight) == (2, 0) for c in logins), logins


async def test_the_owner_gets_in_from_another_address_while_the_attacker_is_locked(
    base_url: str, limited_app: FastAPI
) -> None:
    window = limited_app.state.settings.login_lockout_minutes * 60
    async with (
        client_from("127.0.0.2", base_url) as attacker,
        client_from("127.0.0.3", base_url) as owner,
    ):
        await register(owner, "admin@example.com")
        for _ in range(3):
            assert (await login(attacker, "admin@example.com", WRONG)).status_code == 401
        assert_throttled(await login(attacker, "admin@example.com"), window)

        assert (await login(owner, "admin@example.com")).status_code == 200
        # The owner's success does not unlock the attacker's address.
        assert_throttled(await login(attacker, "admin@example.com"), window)


async def test_one_address_is_stopped_across_accounts_even_with_a_right_password(
    base_url: str, limited_app: FastAPI
) -> None:
    window = limited_app.state.settings.login_lockout_minutes * 60
    async with (
        client_from("127.0.0.4", base_url) as stuffer,
        client_from("127.0.0.5", base_url) as other,
    ):
        await register(other, "real@example.com")
        # Eight failures over four accounts, unknown emails included, two for each:
        # below the per-account-and-address limit of three every time.
        for number in range(4):
            for _ in range(2):
                response = await login(stuffer, f"guess{number}@example.com", WRONG)
                assert response.status_code == 401
        assert_throttled(await login(stuffer, "real@example.com"), window)
        # Another address is not affected.
        assert (await login(other, "real@example.com")).status_code == 200


async def test_the_account_ceiling_holds_across_addresses_and_spares_other_accounts(
    base_url: str,
) -> None:
    async with client_from("127.0.0.6", base_url) as owner:
        await register(owner, "popular@example.com")
        await register(owner, "quiet@example.com")
    # Six failures for one account from three addresses, two from each.
    for last_byte in (10, 11, 12):
        async with client_from(f"127.0.0.{last_byte}", base_url) as attacker:
            for _ in range(2):
                response = await login(attacker, "popular@example.com", WRONG)
                assert response.status_code == 401
    async with client_from("127.0.0.13", base_url) as fresh:
        assert_throttled(await login(fresh, "popular@example.com"), 3600)
        assert (await login(fresh, "quiet@example.com")).status_code == 200


async def test_a_right_password_takes_back_its_attempt_from_the_address_ceiling(
    base_url: str,
) -> None:
    async with client_from("127.0.0.7", base_url) as office:
        await register(office, "worker@example.com")
        # Twice the per-address limit of successful logins from one address.
        for _ in range(16):
            assert (await login(office, "worker@example.com")).status_code == 200


async def test_forwarded_for_is_believed_only_from_a_trusted_proxy(
    base_url: str, limited_app: FastAPI
) -> None:
    window = limited_app.state.settings.login_lockout_minutes * 60
    async with (
        client_from("127.0.0.9", base_url) as proxy,
        client_from("127.0.0.8", base_url) as spoofer,
    ):
        await register(proxy, "behind@example.com")
        # Through the proxy, the client is the rightmost address the proxy appended.
        for _ in range(3):
            response = await login(
                proxy, "behind@example.com", WRONG, forwarded_for="10.9.9.9, 203.0.113.7"
            )
            assert response.status_code == 401
        locked = await login(proxy, "behind@example.com", forwarded_for="203.0.113.7")
        assert_throttled(locked, window)
        # Another client behind the same proxy still gets in.
        other = await login(proxy, "behind@example.com", forwarded_for="203.0.113.8")
        assert other.status_code == 200

        # From an untrusted peer the header is ignored: a new forged address per request
        # still counts against the peer itself. (Another account, far from its ceiling.)
        await register(spoofer, "spoofed@example.com")
        for number in range(3):
            response = await login(
                spoofer, "spoofed@example.com", WRONG, forwarded_for=f"198.51.100.{number}"
            )
            assert response.status_code == 401
        spoofed = await login(spoofer, "spoofed@example.com", forwarded_for="198.51.100.99")
        assert_throttled(spoofed, window)


async def test_registrations_are_limited_per_address_refused_ones_included(
    base_url: str,
) -> None:
    async with (
        client_from("127.0.0.14", base_url) as http,
        client_from("127.0.0.15", base_url) as neighbour,
    ):
        await register(http, "first@example.com")
        duplicate = await http.post(
            REGISTER, json={"email": "first@example.com", "password": PASSWORD}
        )
        assert duplicate.status_code == 409
        await register(http, "second@example.com")
        await register(http, "third@example.com")
        # Four attempts, one of them refused: the fifth is over the limit.
        over = await http.post(REGISTER, json={"email": "fifth@example.com", "password": PASSWORD})
        assert_throttled(over, 3600)
        assert over.json() == {
            "detail": "Too many registrations from this address; try again later"
        }
        await register(neighbour, "fifth@example.com")


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("198.51.100.1", ["203.0.113.7"], "198.51.100.1"),  # untrusted peer: ignored
        ("10.0.0.2", [], "10.0.0.2"),  # a proxy that forwarded nothing
        ("10.0.0.2", ["203.0.113.7"], "203.0.113.7"),
        ("10.0.0.2", ["1.1.1.1, 203.0.113.7, 10.0.0.3"], "203.0.113.7"),  # two proxies
        ("10.0.0.2", ["1.1.1.1", "203.0.113.7"], "203.0.113.7"),  # two header lines
        ("10.0.0.2", ["10.0.0.5, 10.0.0.3"], "10.0.0.5"),  # only proxies: the first
        ("10.0.0.2", ["not-an-ip, 203.0.113.7"], "203.0.113.7"),
        ("10.0.0.2", ["203.0.113.7, garbage"], "10.0.0.2"),  # the proxy wrote garbage
        ("::ffff:198.51.100.1", [], "198.51.100.1"),  # IPv4-mapped IPv6
        ("2001:db8::1", [], "2001:db8::1"),
        (None, ["203.0.113.7"], "unknown"),
    ],
)
def test_client_address_is_the_rightmost_untrusted_hop(
    peer: str | None, forwarded_for: list[str], expected: str
) -> None:
    addresses = ClientAddresses([ip_network("10.0.0.0/8")])
    assert addresses.resolve(peer, forwarded_for) == expected


def test_without_trusted_proxies_forwarded_for_is_ignored() -> None:
    assert ClientAddresses([]).resolve("127.0.0.1", ["203.0.113.7"]) == "127.0.0.1"


@pytest.mark.parametrize("value", ["10.0.0.0/33", "proxy.example.com", "10.0.0.1,,nonsense"])
def test_trusted_proxies_must_be_addresses_or_networks(migrated_database: str, value: str) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        make_settings(migrated_database, trusted_proxies=value)


@pytest.mark.parametrize(("value", "expected"), [("", None), (" ", None), ("40", 40)])
def test_an_empty_hashing_queue_limit_means_the_default(
    migrated_database: str, value: str, expected: int | None
) -> None:
    assert make_settings(migrated_database, hashing_queue_limit=value).hashing_queue_limit == (
        expected
    )


def test_a_remembered_refusal_is_answered_only_briefly_and_never_past_its_retry_after() -> None:
    pair, other = CounterKey("login", "a@example.com", "10.0.0.1"), CounterKey("login")
    refusals = RecentRefusals(remember_seconds=0.05)
    refusals.remember(Refusal(keys=(pair,), retry_after=900))
    assert refusals.retry_after([other]) is None
    assert refusals.retry_after([other, pair]) == 900
    time.sleep(0.06)
    assert refusals.retry_after([pair]) is None  # the database decides again


def test_a_refusal_of_checks_in_flight_is_remembered_for_a_moment_only() -> None:
    pair = CounterKey("login", "a@example.com", "10.0.0.1")
    refusals = RecentRefusals(remember_seconds=30, in_flight_seconds=0.05)
    refusals.remember(Refusal(keys=(pair,), retry_after=1, in_flight=True))
    assert refusals.retry_after([pair]) == 1
    time.sleep(0.06)
    assert refusals.retry_after([pair]) is None


def test_remembered_refusals_are_bounded_oldest_first() -> None:
    refusals = RecentRefusals()
    keys = [
        CounterKey("login", address=f"10.0.{n // 256}.{n % 256}")
        for n in range(REMEMBERED_KEYS + 1)
    ]
    for key in keys:
        refusals.remember(Refusal(keys=(key,), retry_after=1))
    assert refusals.retry_after([keys[0]]) is None
    assert refusals.retry_after([keys[-1]]) == 1
