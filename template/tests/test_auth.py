"""Registration and login over HTTP."""

import asyncio

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlmodel import func, select

from app.core.roles import DEFAULT_ROLE
from app.core.security import PasswordHasher
from app.models.user import User
from tests.conftest import GUARD_SECONDS, PASSWORD, BlockedHashing, UseHasher

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"


async def register(client: AsyncClient, email: str, password: str = PASSWORD) -> None:
    response = await client.post(REGISTER, json={"email": email, "password": password})
    assert response.status_code == 201, response.text


async def login(client: AsyncClient, email: str, password: str = PASSWORD) -> int:
    response = await client.post(LOGIN, data={"username": email, "password": password})
    return response.status_code


async def test_register_creates_user_with_the_first_role(client: AsyncClient) -> None:
    response = await client.post(
        REGISTER, json={"email": "New@Example.com", "password": PASSWORD, "full_name": "Ada"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "new@example.com"
    assert body["role"] == DEFAULT_ROLE.value
    assert body["is_active"] is True
    assert body["full_name"] == "Ada"
    assert "hashed_password" not in body
    assert "password" not in body


@pytest.mark.parametrize("field", [{"role": "admin"}, {"is_active": False}, {"id": "x"}])
async def test_register_rejects_unknown_fields(
    client: AsyncClient, field: dict[str, object]
) -> None:
    payload = {"email": "x@example.com", "password": PASSWORD, **field}
    response = await client.post(REGISTER, json=payload)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "extra_forbidden"


async def test_register_duplicate_email_is_409_whatever_the_case(client: AsyncClient) -> None:
    await register(client, "dup@example.com")
    response = await client.post(REGISTER, json={"email": "DUP@example.com", "password": PASSWORD})
    assert response.status_code == 409
    assert response.json() == {"detail": "A user with this email already exists"}


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short", "at least 8 characters"),
        ("é€" * 25, "at most 72 bytes"),  # 50 characters, 125 bytes
        ("€" * 25, "at most 72 bytes"),  # 25 characters, 75 bytes
        ("a" * 73, "at most 72"),
        ("password\x00x", "NUL"),
    ],
)
async def test_register_rejects_bad_passwords_with_422(
    client: AsyncClient, password: str, message: str
) -> None:
    response = await client.post(REGISTER, json={"email": "p@example.com", "password": password})
    assert response.status_code == 422
    assert message in response.text


async def test_password_of_exactly_72_bytes_is_accepted(client: AsyncClient) -> None:
    password = "€" * 24  # 72 bytes
    await register(client, "max@example.com", password)
    assert await login(client, "max@example.com", password) == 200


@pytest.mark.parametrize("email", ["not-an-email", "", "a@", "@example.com"])
async def test_register_rejects_invalid_email(client: AsyncClient, email: str) -> None:
    response = await client.post(REGISTER, json={"email": email, "password": PASSWORD})
    assert response.status_code == 422


async def test_login_returns_a_bearer_token(client: AsyncClient) -> None:
    await register(client, "in@example.com")
    response = await client.post(LOGIN, data={"username": "IN@example.com", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["email"] == "in@example.com"
    assert response.headers["cache-control"] == "no-store"


async def test_wrong_password_and_unknown_email_get_the_same_401(client: AsyncClient) -> None:
    await register(client, "known@example.com")
    wrong = await client.post(LOGIN, data={"username": "known@example.com", "password": "x" * 9})
    unknown = await client.post(LOGIN, data={"username": "nobody@example.com", "password": "x" * 9})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "Incorrect email or password"}
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("password", ["€" * 30, "a" * 100])
async def test_login_with_an_unhashable_password_is_401_not_500(
    client: AsyncClient, password: str
) -> None:
    await register(client, "long@example.com")
    assert await login(client, "long@example.com", password) == 401


class RecordingHasher(PasswordHasher):
    """Counts the bcrypt verifications a login performs."""

    def __init__(self) -> None:
        super().__init__(rounds=4)
        self.verifications = 0

    async def verify_and_update(self, password: str, hashed: str) -> tuple[bool, str | None]:
        self.verifications += 1
        return await super().verify_and_update(password, hashed)

    async def verify_dummy(self) -> None:
        self.verifications += 1
        await super().verify_dummy()


async def test_login_verifies_a_hash_even_when_the_email_is_unknown(
    client: AsyncClient, use_hasher: UseHasher
) -> None:
    hasher = RecordingHasher()
    use_hasher(hasher)
    await register(client, "exists@example.com")
    assert await login(client, "exists@example.com", "wrong password") == 401
    assert hasher.verifications == 1
    assert await login(client, "missing@example.com", "wrong password") == 401
    assert hasher.verifications == 2


async def test_login_is_throttled_after_repeated_failures(
    app: FastAPI, client: AsyncClient
) -> None:
    max_failures = app.state.settings.login_max_failures
    await register(client, "victim@example.com")
    for _ in range(max_failures):
        assert await login(client, "victim@example.com", "wrong password") == 401
    # Locked now, even with the right password.
    response = await client.post(
        LOGIN, data={"username": "victim@example.com", "password": PASSWORD}
    )
    assert response.status_code == 429
    retry_after = int(response.headers["retry-after"])
    assert 0 < retry_after <= app.state.settings.login_lockout_minutes * 60
    # Other accounts are not affected.
    await register(client, "other@example.com")
    assert await login(client, "other@example.com") == 200


async def test_successful_login_resets_the_failure_count(app: FastAPI, client: AsyncClient) -> None:
    max_failures = app.state.settings.login_max_failures
    await register(client, "forgetful@example.com")
    for _ in range(max_failures - 1):
        assert await login(client, "forgetful@example.com", "wrong password") == 401
    assert await login(client, "forgetful@example.com") == 200
    for _ in range(max_failures - 1):
        assert await login(client, "forgetful@example.com", "wrong password") == 401
    assert await login(client, "forgetful@example.com") == 200


async def test_unknown_emails_are_throttled_too(app: FastAPI, client: AsyncClient) -> None:
    # Otherwise a 429 would reveal which emails have accounts.
    for _ in range(app.state.settings.login_max_failures):
        assert await login(client, "ghost@example.com", "wrong password") == 401
    assert await login(client, "ghost@example.com", "wrong password") == 429


async def test_password_hash_is_upgraded_when_the_cost_changes(
    app: FastAPI, client: AsyncClient, use_hasher: UseHasher
) -> None:
    await register(client, "upgrade@example.com")
    use_hasher(PasswordHasher(rounds=5))
    assert await login(client, "upgrade@example.com") == 200
    async with app.state.database.sessionmaker() as session:
        user = (await session.exec(select(User).where(User.email == "upgrade@example.com"))).one()
    assert user.hashed_password.startswith("$2b$05$")
    assert await login(client, "upgrade@example.com") == 200


async def test_concurrent_registrations_with_one_email_create_one_user(
    app: FastAPI, client: AsyncClient
) -> None:
    responses = await asyncio.gather(
        *(
            client.post(REGISTER, json={"email": "race@example.com", "password": PASSWORD})
            for _ in range(20)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    async with app.state.database.sessionmaker() as session:
        count = await session.exec(
            select(func.count()).select_from(User).where(User.email == "race@example.com")
        )
        assert count.one() == 1


async def test_health_is_answered_while_logins_are_hashing(
    client: AsyncClient, blocked_hashing: BlockedHashing
) -> None:
    await register(client, "slow@example.com")
    blocking = blocked_hashing
    logins = [asyncio.create_task(login(client, "slow@example.com")) for _ in range(3)]
    try:
        # Wait, off the event loop, until a verification is running.
        assert await asyncio.to_thread(blocking.started.wait, GUARD_SECONDS)
        # Were hashing on the event loop, nothing could be answered until it finished.
        health = await client.get("/health")
        assert health.status_code == 200
        assert not any(task.done() for task in logins)
    finally:
        blocking.release.set()
    assert await asyncio.gather(*logins) == [200, 200, 200]
