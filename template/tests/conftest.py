"""Fixtures: a migrated test database, an app per test, clients, signed-in users, and a
real SMTP server."""

import asyncio
import base64
import json
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage, MIMEPart
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, AsyncHTTPTransport
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlmodel import SQLModel

from app.api.deps import get_password_hasher
from app.core.config import Settings
from app.core.roles import ADMIN_ROLE, DEFAULT_ROLE, Role
from app.core.security import PasswordHasher
from app.main import create_app
from app.models.user import User
from app.runtime.admission import AdmissionMiddleware

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A guard against hanging, not a measurement: every step normally takes milliseconds.
GUARD_SECONDS = 30
PASSWORD = "correct horse battery"
TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


class TestEnvironment(BaseSettings):
    """Where the tests run: TEST_DATABASE_URL from the environment or `.env`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    test_database_url: str = Field(min_length=1)
    # A pooler between the tests and the database (DB_POOLER of the service), if any.
    db_pooler: str = "none"


def read_test_environment() -> TestEnvironment:
    try:
        return TestEnvironment()
    except ValueError:
        pytest.exit("Set TEST_DATABASE_URL (see .env.example); its tables are emptied by the tests")


@pytest.fixture(scope="session")
def test_database_url() -> str:
    return read_test_environment().test_database_url


async def wait_until(condition: Callable[[], object], what: str) -> None:
    """Turn the event loop until `condition()` is true; fail, naming `what`, if it never is."""
    for _ in range(10_000):  # a few turns of the event loop are enough
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail(f"{what} never happened")


def gate_of(app: FastAPI) -> AdmissionMiddleware:
    """The app's AdmissionMiddleware instance (the stack is built on the first request)."""
    node: Any = app.middleware_stack
    while node is not None:
        if isinstance(node, AdmissionMiddleware):
            return node
        node = getattr(node, "app", None)
    raise AssertionError("AdmissionMiddleware is not in the middleware stack")


def as_json(body: object) -> bytes:
    """`body` as JSON with every non-ASCII character escaped, so that a lone surrogate
    travels as the escape a client would send (httpx's own encoder refuses it)."""
    return json.dumps(body).encode()


JSON_HEADERS = {"Content-Type": "application/json"}


def session_of(access_token: str) -> str:
    """The session id (`sid`) an access token carries."""
    payload = access_token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sid"])


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "database_url": database_url,
        "jwt_secret": TEST_SECRET,
        "bcrypt_rounds": 4,  # the minimum: the tests hash hundreds of passwords
        "log_level": "WARNING",
        # Every test client comes from one address: the limits per address and per
        # account are tested on their own, with their own values (tests/test_throttling.py).
        "login_max_failures_per_address": 10_000,
        "login_max_failures_per_account": 10_000,
        "register_max_per_address_per_hour": 10_000,
        # Refusals are answered at once, so that tests of limits do not wait for them
        # (tests/test_admission.py tests the pause).
        "refusal_pause_seconds": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["db_pooler"] = read_test_environment().db_pooler
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


async def close_app(app: FastAPI) -> None:
    """Give back what create_app() opened: the email jobs, pooled connections and the
    hashing threads."""
    await app.state.account_mail.close()  # first: its jobs use the database
    await app.state.database.dispose()
    app.state.password_hasher.close()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    yield application
    await application.state.account_mail.close()  # its jobs use the tables emptied below
    # Each test starts from empty tables.
    async with application.state.database.engine.begin() as connection:
        for table in reversed(SQLModel.metadata.sorted_tables):
            await connection.execute(table.delete())
    await close_app(application)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """`app` served by uvicorn on a real loopback socket, as in production (no proxy
    headers: the app decides whom to trust); yields the base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="off", proxy_headers=False, log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(GUARD_SECONDS):
            while not server.started and not task.done():  # noqa: ASYNC110  # uvicorn has no event
                await asyncio.sleep(0.01)
        assert server.started, task
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, GUARD_SECONDS)


def client_from(address: str, base_url: str) -> AsyncClient:
    """A client whose connections leave from `address` (any of 127.0.0.0/8)."""
    transport = AsyncHTTPTransport(local_address=address)
    return AsyncClient(transport=transport, base_url=base_url)


class BlockedHashing:
    """Stands in for passlib's context: every password check waits until `release` is
    set (bounded by GUARD_SECONDS, so that a regression fails instead of hanging)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.release = threading.Event()
        self.waited_in_vain = False

    def _wait(self) -> None:
        self.started.set()
        if not self.release.wait(GUARD_SECONDS):
            self.waited_in_vain = True

    def verify_and_update(self, password: str, hashed: str) -> Any:
        self._wait()
        return self.inner.verify_and_update(password, hashed)

    def verify(self, password: str, hashed: str) -> Any:
        self._wait()
        return self.inner.verify(password, hashed)

    def hash(self, password: str) -> Any:
        return self.inner.hash(password)


@pytest.fixture
def use_hasher(app: FastAPI) -> Iterator[Callable[[PasswordHasher], PasswordHasher]]:
    """Have the app's requests use another hasher; each is closed after the test."""
    used: list[PasswordHasher] = []

    def use(hasher: PasswordHasher) -> PasswordHasher:
        used.append(hasher)
        app.dependency_overrides[get_password_hasher] = lambda: hasher
        return hasher

    yield use
    for hasher in used:
        hasher.close()


UseHasher = Callable[[PasswordHasher], PasswordHasher]


@dataclass
class SignedIn:
    id: str
    email: str
    role: str
    headers: dict[str, str]
    session_id: str
    refresh_token: str


MakeUser = Callable[..., Awaitable[SignedIn]]


@pytest.fixture
def make_user(app: FastAPI, client: AsyncClient) -> MakeUser:
    """Create a user with any role directly in the database, then log in over HTTP."""
    counter = 0

    async def make(
        role: Role = DEFAULT_ROLE,
        *,
        email: str | None = None,
        password: str = PASSWORD,
        verified: bool = False,
    ) -> SignedIn:
        nonlocal counter
        counter += 1
        email = email or f"{role.value}{counter}@example.com"
        hasher: PasswordHasher = app.state.password_hasher
        async with app.state.database.sessionmaker() as session:
            hashed = await hasher.hash(password)
            user = User(email=email, hashed_password=hashed, role=role, email_verified=verified)
            session.add(user)
            await session.commit()
        response = await client.post(
            "/api/v1/auth/login", data={"username": email, "password": password}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        token = body["access_token"]
        return SignedIn(
            str(user.id),
            email,
            role.value,
            {"Authorization": f"Bearer {token}"},
            session_of(token),
            body["refresh_token"],
        )

    return make


@pytest.fixture
async def user(make_user: MakeUser) -> SignedIn:
    return await make_user(DEFAULT_ROLE)


@pytest.fixture
async def admin(make_user: MakeUser) -> SignedIn:
    return await make_user(ADMIN_ROLE)


@pytest.fixture
def blocked_hashing(app: FastAPI, user: SignedIn) -> Iterator[BlockedHashing]:
    """The app's own password checks, blocked until the test sets `release`. The
    signed-in `user` is made first, since signing in checks a password."""
    hasher: PasswordHasher = app.state.password_hasher
    original = hasher._context
    blocked = BlockedHashing(original)
    hasher._context = blocked
    yield blocked
    blocked.release.set()
    hasher._context = original
    assert not blocked.waited_in_vain, "a password check waited for release in vain"


SMTP_USERNAME = "test-mailer"
SMTP_PASSWORD = "smtp password of the tests"
# The base of the links in the emails of the tests.
FRONTEND_URL = "https://app.example.test"


@dataclass
class Delivered:
    """A message the test SMTP server accepted."""

    sender: str | None
    recipients: list[str]
    message: EmailMessage

    def part(self, subtype: str) -> str:
        body = self.message.get_body((subtype,))
        assert isinstance(body, MIMEPart), f"no text/{subtype} part"
        return str(body.get_content())

    def token(self, page: str) -> str:
        """The token of the link to FRONTEND_URL/`page` in the message, which both the
        plain-text and the HTML part must carry."""
        pattern = re.escape(f"{FRONTEND_URL}/{page}?token=") + "([A-Za-z0-9_-]+)"
        found = re.search(pattern, self.part("plain"))
        assert found, f"no link to {page} in:\n{self.part('plain')}"
        assert found.group(0) in self.part("html"), "the HTML part lacks the link"
        return found.group(1)


@dataclass
class MailHandler:
    """What the test SMTP server does with a message: keeps it; or, while `refusing`,
    refuses it; or, while `held` is an unset event, waits for it first."""

    delivered: list[Delivered] = field(default_factory=list)
    refusing: bool = False
    held: asyncio.Event | None = None
    waiting: int = 0
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(  # noqa: N802  # the name aiosmtpd calls
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.held is not None:
            self.waiting += 1
            await asyncio.wait_for(self.held.wait(), GUARD_SECONDS)
        if self.refusing:
            return "554 5.7.1 Refused by the test server"
        message = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.delivered.append(Delivered(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 2.0.0 Accepted"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        valid = (
            isinstance(data, LoginPassword)
            and data.login == SMTP_USERNAME.encode()
            and data.password == SMTP_PASSWORD.encode()
        )
        if valid:
            self.logins.append(mechanism)
        return AuthResult(success=valid)


@dataclass
class MailServer:
    handler: MailHandler
    port: int

    @property
    def delivered(self) -> list[Delivered]:
        return self.handler.delivered

    def to(self, address: str) -> list[Delivered]:
        return [message for message in self.delivered if message.recipients == [address]]

    def settings(self) -> dict[str, object]:
        """Settings that send the app's email to this server, retrying at once."""
        return {
            "email_delivery": "smtp",
            "smtp_host": "127.0.0.1",
            "smtp_port": self.port,
            "smtp_tls": "none",
            "smtp_username": SMTP_USERNAME,
            "smtp_password": SMTP_PASSWORD,
            "email_from": "accounts@example.test",
            "email_retry_seconds": 0.01,
            "frontend_url": FRONTEND_URL,
        }


@pytest.fixture
async def mail_server() -> AsyncIterator[MailServer]:
    """A real SMTP server (aiosmtpd) on a free loopback port, in the test's event loop,
    that accepts the login of MailServer.settings() and no other."""
    handler = MailHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="mail.example.test",  # not the machine's name: no DNS lookup
            # Offers AUTH without TLS (loopback only; the tests have no certificate). The
            # tests check that the app logged in (MailHandler.logins).
            auth_require_tls=False,
            authenticator=handler.authenticate,
        ),
        "127.0.0.1",
        0,
    )
    try:
        yield MailServer(handler, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
