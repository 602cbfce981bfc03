"""Fixtures: a migrated test database, an app per test, clients and signed-in users."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlmodel import SQLModel

from app.core.config import Settings
from app.core.roles import ADMIN_ROLE, DEFAULT_ROLE, Role
from app.core.security import PasswordHasher
from app.main import create_app
from app.models.user import User

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A guard against hanging, not a measurement: every step normally takes milliseconds.
GUARD_SECONDS = 30
PASSWORD = "correct horse battery"
TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


class TestEnvironment(BaseSettings):
    """Where the tests run: TEST_DATABASE_URL from the environment or `.env`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    test_database_url: str = Field(min_length=1)


@pytest.fixture(scope="session")
def test_database_url() -> str:
    try:
        return TestEnvironment().test_database_url
    except ValueError:
        pytest.exit("Set TEST_DATABASE_URL (see .env.example); its tables are emptied by the tests")


async def wait_until(condition: Callable[[], object], what: str) -> None:
    """Turn the event loop until `condition()` is true; fail, naming `what`, if it never is."""
    for _ in range(10_000):  # a few turns of the event loop are enough
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail(f"{what} never happened")


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "database_url": database_url,
        "jwt_secret": TEST_SECRET,
        "bcrypt_rounds": 4,  # the minimum: the tests hash hundreds of passwords
        "log_level": "WARNING",
        "db_pool_size": 5,
        "db_max_overflow": 30,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


@pytest.fixture(scope="session")
def migrated_database(test_database_url: str) -> str:
    """The test database at the newest revision; Alembic builds it, not create_all()."""
    command.upgrade(alembic_config(test_database_url), "head")
    return test_database_url


@pytest.fixture
def settings(migrated_database: str) -> Settings:
    return make_settings(migrated_database)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    yield application
    # Each test starts from empty tables.
    async with application.state.database.engine.begin() as connection:
        for table in reversed(SQLModel.metadata.sorted_tables):
            await connection.execute(table.delete())
    await application.state.database.dispose()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@dataclass
class SignedIn:
    id: str
    email: str
    role: str
    headers: dict[str, str]


MakeUser = Callable[..., Awaitable[SignedIn]]


@pytest.fixture
def make_user(app: FastAPI, client: AsyncClient) -> MakeUser:
    """Create a user with any role directly in the database, then log in over HTTP."""
    counter = 0

    async def make(
        role: Role = DEFAULT_ROLE, *, email: str | None = None, password: str = PASSWORD
    ) -> SignedIn:
        nonlocal counter
        counter += 1
        email = email or f"{role.value}{counter}@example.com"
        hasher = PasswordHasher(rounds=4)
        async with app.state.database.sessionmaker() as session:
            user = User(email=email, hashed_password=await hasher.hash(password), role=role)
            session.add(user)
            await session.commit()
        response = await client.post(
            "/api/v1/auth/login", data={"username": email, "password": password}
        )
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        return SignedIn(str(user.id), email, role.value, {"Authorization": f"Bearer {token}"})

    return make


@pytest.fixture
async def user(make_user: MakeUser) -> SignedIn:
    return await make_user(DEFAULT_ROLE)


@pytest.fixture
async def admin(make_user: MakeUser) -> SignedIn:
    return await make_user(ADMIN_ROLE)
