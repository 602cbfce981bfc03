"""Password reset and email verification, end to end through a real SMTP server: the
tests read the delivered messages, take the token from the link and spend it."""

import asyncio
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response
from pydantic import ValidationError
from sqlalchemy import update
from sqlmodel import col, select

from app.core import project
from app.core.config import Settings
from app.core.db import UnitOfWork
from app.core.mail import Email, LogTransport, Mailer
from app.core.security import PasswordHasher
from app.main import create_app
from app.models.account_token import AccountToken
from app.models.throttle import AttemptCounter
from app.models.types import utcnow
from app.models.user import User
from app.services.user import AdminBootstrap
from tests.conftest import (
    FRONTEND_URL,
    JSON_HEADERS,
    PASSWORD,
    TEST_SECRET,
    MailServer,
    MakeUser,
    SignedIn,
    close_app,
    make_settings,
)

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
ME = "/api/v1/users/me"
RESET = "/api/v1/auth/password-reset"
CONFIRM = "/api/v1/auth/password-reset/confirm"
VERIFY = "/api/v1/auth/verify-email"
RESEND = "/api/v1/auth/verify-email/resend"
NEW_PASSWORD = "a new password for the account"
INVALID_LINK = {"detail": "Invalid or expired link; request a new one"}
RESET_ACCEPTED = {
    "detail": "If the address belongs to an account, a link to reset its password is on its way"
}


@pytest.fixture
def settings(migrated_database: str, mail_server: MailServer) -> Settings:
    return make_settings(migrated_database, **mail_server.settings())


async def sent(app: FastAPI) -> None:
    """Wait until the emails queued so far are delivered or given up on."""
    await asyncio.wait_for(app.state.account_mail.join(), 30)


async def login(client: AsyncClient, email: str, password: str = PASSWORD) -> Response:
    return await client.post(LOGIN, data={"username": email, "password": password})


async def post_json(client: AsyncClient, url: str, body: object, **headers: str) -> Response:
    # Encoded here, ASCII-only, so that even lone surrogates reach the service as sent.
    return await client.post(url, content=json.dumps(body), headers={**JSON_HEADERS, **headers})


async def reset_token(app: FastAPI, client: AsyncClient, mail: MailServer, email: str) -> str:
    """Ask for a reset of `email` and take the token from the email that arrives."""
    before = len(mail.to(email))
    response = await client.post(RESET, json={"email": email})
    assert response.status_code == 202, response.text
    await sent(app)
    messages = mail.to(email)
    assert len(messages) == before + 1, [m.recipients for m in mail.delivered]
    return messages[-1].token("reset-password")


async def confirm(client: AsyncClient, token: object, password: object = NEW_PASSWORD) -> Response:
    return await post_json(client, CONFIRM, {"token": token, "new_password": password})


async def verify(client: AsyncClient, token: object) -> Response:
    return await post_json(client, VERIFY, {"token": token})


def assert_invalid_link(response: Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == INVALID_LINK


async def stored_user(app: FastAPI, email: str) -> User:
    async with app.state.database.sessionmaker() as session:
        found: User = (await session.exec(select(User).where(col(User.email) == email))).one()
        return found


async def test_password_reset_end_to_end(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    token = await reset_token(app, client, mail_server, user.email)
    [message] = mail_server.to(user.email)

    assert message.message["Subject"] == f"Reset your {project.NAME} password"
    assert project.NAME in message.message["From"]
    assert "accounts@example.test" in message.message["From"]
    assert project.NAME in message.part("plain")
    assert project.NAME in message.part("html")
    assert "30 minutes" in message.part("plain")
    assert mail_server.handler.logins, "the server's login was not used"
    response = await confirm(client, token)
    assert response.status_code == 204, response.text
    assert (await login(client, user.email)).status_code == 401
    assert (await login(client, user.email, NEW_PASSWORD)).status_code == 200
    # Every session open before the reset has ended; the link proved the address.
    assert (await client.get(ME, headers=user.headers)).status_code == 401
    assert (await stored_user(app, user.email)).email_verified is True


async def test_reset_answers_alike_for_unknown_inactive_and_active_accounts(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, make_user: MakeUser
) -> None:
    active = await make_user()
    inactive = await make_user()
    async with app.state.database.sessionmaker() as session:
        await session.exec(
            update(User).where(col(User.email) == inactive.email).values(is_active=False)
        )
        await session.commit()

    answers = [
        await client.post(RESET, json={"email": email})
        for email in (active.email, inactive.email, "nobody@example.com")
    ]
    await sent(app)

    assert [(a.status_code, a.json()) for a in answers] == [(202, RESET_ACCEPTED)] * 3
    assert [m.recipients for m in mail_server.delivered] == [[active.email]]


async def test_reset_token_works_once(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    token = await reset_token(app, client, mail_server, user.email)
    assert (await confirm(client, token)).status_code == 204

    assert_invalid_link(await confirm(client, token, "yet another new password"))
    assert (await login(client, user.email, NEW_PASSWORD)).status_code == 200


async def test_bad_tampered_and_expired_tokens_get_the_same_400(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    token = await reset_token(app, client, mail_server, user.email)
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in ("", "not a token", "x" * 43, tampered, token + "A", token.upper()):
        assert_invalid_link(await confirm(client, bad))
    async with app.state.database.sessionmaker() as session:
        past = utcnow() - timedelta(seconds=1)
        await session.exec(update(AccountToken).values(expires_at=past))
        await session.commit()

    assert_invalid_link(await confirm(client, token))
    assert (await login(client, user.email)).status_code == 200


async def test_a_newer_reset_voids_the_older_link(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    older = await reset_token(app, client, mail_server, user.email)
    newer = await reset_token(app, client, mail_server, user.email)

    assert_invalid_link(await confirm(client, older))
    assert (await confirm(client, newer)).status_code == 204


async def test_a_password_change_voids_the_reset_link(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    token = await reset_token(app, client, mail_server, user.email)
    change = {"current_password": PASSWORD, "new_password": "changed by the owner"}
    response = await client.post(f"{ME}/password", json=change, headers=user.headers)
    assert response.status_code == 204

    assert_invalid_link(await confirm(client, token))
    assert (await login(client, user.email, "changed by the owner")).status_code == 200


async def test_at_most_the_hourly_number_of_reset_emails_per_account(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    limit: int = app.state.settings.password_reset_max_per_hour
    answers = [await client.post(RESET, json={"email": user.email}) for _ in range(limit + 2)]
    await sent(app)

    assert {(a.status_code, json.dumps(a.json())) for a in answers} == {
        (202, json.dumps(RESET_ACCEPTED))
    }
    assert len(mail_server.to(user.email)) == limit


async def test_a_weak_new_password_is_refused_as_at_registration(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    token = await reset_token(app, client, mail_server, user.email)
    for weak in ("short", "é" * 37, "with\x00nul"):
        response = await confirm(client, token, weak)
        registration = await post_json(
            client, REGISTER, {"email": "w@example.com", "password": weak}
        )
        assert response.status_code == registration.status_code == 422, response.text
        assert response.json()["detail"][0]["msg"] == registration.json()["detail"][0]["msg"]

    assert (await confirm(client, token)).status_code == 204  # the refusals spent nothing


async def test_a_reset_lifts_the_login_lockout(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    settings: Settings = app.state.settings
    for _ in range(settings.login_max_failures):
        assert (await login(client, user.email, "wrong password")).status_code == 401
    assert (await login(client, user.email)).status_code == 429

    token = await reset_token(app, client, mail_server, user.email)
    assert (await confirm(client, token)).status_code == 204

    async with app.state.database.sessionmaker() as session:
        counters = (await session.exec(select(AttemptCounter))).all()
    assert not [c for c in counters if c.scope.startswith("login") and c.email == user.email]
    assert (await login(client, user.email, NEW_PASSWORD)).status_code == 200


async def test_two_confirms_of_one_token_at_once_succeed_once(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    token = await reset_token(app, client, mail_server, user.email)

    answers = await asyncio.gather(
        confirm(client, token, "first new password"), confirm(client, token, "second new password")
    )

    assert sorted(a.status_code for a in answers) == [204, 400]
    winner = "first new password" if answers[0].status_code == 204 else "second new password"
    assert (await login(client, user.email, winner)).status_code == 200


async def test_registration_sends_a_verification_link_that_works_once(
    app: FastAPI, client: AsyncClient, mail_server: MailServer
) -> None:
    response = await client.post(REGISTER, json={"email": "new@example.com", "password": PASSWORD})
    assert response.status_code == 201
    assert response.json()["email_verified"] is False
    await sent(app)
    [message] = mail_server.to("new@example.com")
    token = message.token("verify-email")
    assert "48 hours" in message.part("plain")

    assert (await verify(client, token)).status_code == 204
    assert_invalid_link(await verify(client, token))
    access = (await login(client, "new@example.com")).json()["access_token"]
    me = await client.get(ME, headers={"Authorization": f"Bearer {access}"})
    assert me.json()["email_verified"] is True


async def test_tokens_work_only_for_their_own_purpose(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    assert (await client.post(RESEND, headers=user.headers)).status_code == 202
    await sent(app)
    verification = mail_server.to(user.email)[-1].token("verify-email")
    reset = await reset_token(app, client, mail_server, user.email)

    assert_invalid_link(await verify(client, reset))
    assert_invalid_link(await confirm(client, verification))
    # Neither was spent by the refusals.
    assert (await verify(client, verification)).status_code == 204
    assert (await confirm(client, reset)).status_code == 204


async def test_resend_sends_a_new_link_within_the_hourly_limit(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    limit: int = app.state.settings.email_verify_max_per_hour
    answers = [await client.post(RESEND, headers=user.headers) for _ in range(limit + 1)]
    await sent(app)

    assert {a.status_code for a in answers} == {202}
    messages = mail_server.to(user.email)
    assert len(messages) == limit
    # Only the newest link works (two deliveries may arrive in either order).
    tokens = [message.token("verify-email") for message in messages]
    statuses = [(await verify(client, token)).status_code for token in tokens]
    assert sorted(statuses) == [204] + [400] * (limit - 1)
    assert (await client.post(RESEND, headers=user.headers)).status_code == 202
    await sent(app)
    assert len(mail_server.to(user.email)) == limit  # verified: nothing more to send


async def test_resend_needs_a_bearer_token(client: AsyncClient) -> None:
    response = await client.post(RESEND)
    assert response.status_code == 401


@pytest.fixture
def verified_only(migrated_database: str, mail_server: MailServer) -> Settings:
    return make_settings(migrated_database, **mail_server.settings(), require_verified_email=True)


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    """Another app instance on the test database, closed after use. (Request the `app`
    fixture too: it empties the tables after the test.)"""
    application = create_app(settings)
    try:
        async with AsyncClient(
            transport=ASGITransport(app=application), base_url="http://test"
        ) as http:
            yield application, http
    finally:
        await close_app(application)


async def test_required_verification_refuses_only_the_right_password_of_unverified_accounts(
    app: FastAPI, make_user: MakeUser, mail_server: MailServer, verified_only: Settings
) -> None:
    unverified = await make_user(email="unverified@example.com")
    verified = await make_user(email="verified@example.com", verified=True)
    async with app_client(verified_only) as (strict, http):
        wrong = await login(http, unverified.email, "wrong password")
        right = await login(http, unverified.email)
        await sent(strict)
        assert (await login(http, verified.email)).status_code == 200

        assert (wrong.status_code, wrong.json()) == (401, {"detail": "Incorrect email or password"})
        assert right.status_code == 403
        assert "verify your email" in right.json()["detail"].lower()
        # The refused login sent a fresh link; following it opens the door.
        token = mail_server.to(unverified.email)[-1].token("verify-email")
        assert (await verify(http, token)).status_code == 204
        assert (await login(http, unverified.email)).status_code == 200


async def test_changing_the_email_needs_the_current_password_and_verifies_the_new_one(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, make_user: MakeUser
) -> None:
    user = await make_user(email="old@example.com", verified=True)
    new = "tom&jerry@example.com"
    for body in ({"email": new}, {"email": new, "current_password": "wrong password"}):
        response = await client.patch(ME, json=body, headers=user.headers)
        assert response.status_code == 401, response.text
    assert (await client.get(ME, headers=user.headers)).json()["email"] == user.email
    # The name alone needs no password.
    response = await client.patch(ME, json={"full_name": "Tom"}, headers=user.headers)
    assert response.status_code == 200

    body = {"email": new, "current_password": PASSWORD}
    response = await client.patch(ME, json=body, headers=user.headers)
    await sent(app)

    assert response.status_code == 200, response.text
    assert (response.json()["email"], response.json()["email_verified"]) == (new, False)
    [notice] = mail_server.to("old@example.com")
    assert new in notice.part("plain")
    assert "tom&amp;jerry@example.com" in notice.part("html")  # escaped in HTML
    [verification] = mail_server.to(new)
    assert (await verify(client, verification.token("verify-email"))).status_code == 204
    assert (await client.get(ME, headers=user.headers)).json()["email_verified"] is True


async def test_a_link_sent_to_an_old_address_stops_working(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    token = await reset_token(app, client, mail_server, user.email)
    body = {"email": "moved@example.com", "current_password": PASSWORD}
    assert (await client.patch(ME, json=body, headers=user.headers)).status_code == 200

    assert_invalid_link(await confirm(client, token))


@pytest.mark.parametrize(
    "token",
    ["\x00", "a\x00" * 21 + "a", "\ud800" * 43, "a" * 1025, "\U0001f600" * 43, 43, None, ["x"]],
    ids=["nul", "nul-43", "surrogates", "over-long", "astral", "number", "null", "list"],
)
async def test_hostile_tokens_get_a_client_error(client: AsyncClient, token: Any) -> None:
    for answer in (await confirm(client, token), await verify(client, token)):
        assert answer.status_code in (400, 422), answer.text


async def test_the_first_administrator_counts_as_verified(
    app: FastAPI, client: AsyncClient
) -> None:
    hasher = PasswordHasher(4)
    try:
        bootstrap = AdminBootstrap(UnitOfWork(app.state.database), hasher)
        await bootstrap.ensure_admin("first.admin@example.com", PASSWORD)
    finally:
        hasher.close()

    assert (await stored_user(app, "first.admin@example.com")).email_verified is True


# Delivery that fails: the answers do not change, nor wait.


async def answers_of_each_flow(client: AsyncClient, user: SignedIn) -> list[tuple[int, Any]]:
    """The answers of every request that sends an email."""
    answers = [
        await client.post(RESET, json={"email": user.email}),
        await client.post(RESET, json={"email": "nobody@example.com"}),
        await client.post(RESEND, headers=user.headers),
        await client.post(
            REGISTER, json={"email": f"{uuid.uuid4()}@example.com", "password": PASSWORD}
        ),
    ]
    return [(a.status_code, a.json().get("detail")) for a in answers]


async def test_a_refusing_mail_server_changes_no_answer(
    app: FastAPI,
    client: AsyncClient,
    mail_server: MailServer,
    make_user: MakeUser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    healthy = await answers_of_each_flow(client, await make_user())
    await sent(app)
    mail_server.handler.refusing = True
    user = await make_user(email="refused@example.com")

    with caplog.at_level(logging.WARNING, logger="app.core.mail"):
        refused = await answers_of_each_flow(client, user)
        assert app.state.account_mail.background.unfinished > 0  # answered before sending
        await sent(app)

    assert refused == healthy
    failures = [r for r in caplog.records if r.name == "app.core.mail"]
    assert failures
    assert any("not sent after 4 attempts" in r.getMessage() for r in failures)
    assert all("example.com" in r.getMessage() for r in failures)
    assert not any("refused@" in r.getMessage() for r in failures)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
async def unreachable(
    settings: Settings, closed_port: int
) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    """An app whose mail server is down. (A fixture: an app made during the test would
    set up logging again, and take the log away from caplog.)"""
    async with app_client(settings.model_copy(update={"smtp_port": closed_port})) as pair:
        yield pair


async def test_a_mail_server_that_is_down_changes_no_answer(
    app: FastAPI,
    client: AsyncClient,
    make_user: MakeUser,
    unreachable: tuple[FastAPI, AsyncClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    healthy = await answers_of_each_flow(client, await make_user())
    down, http = unreachable
    user = await make_user(email="unreachable@example.com")
    with caplog.at_level(logging.WARNING, logger="app.core.mail"):
        answers = await answers_of_each_flow(http, user)
        assert down.state.account_mail.background.unfinished > 0
        await sent(down)

    assert answers == healthy
    failures = [r for r in caplog.records if r.name == "app.core.mail"]
    given_up = [r.getMessage() for r in failures if r.levelno == logging.ERROR]
    assert given_up
    assert all("someone at example.com" in text for text in given_up)
    assert not any("unreachable@" in r.getMessage() for r in failures)


async def test_the_answer_does_not_wait_for_a_slow_mail_server(
    app: FastAPI, client: AsyncClient, mail_server: MailServer, user: SignedIn
) -> None:
    mail_server.handler.held = asyncio.Event()
    response = await client.post(RESET, json={"email": user.email})
    assert response.status_code == 202
    for _ in range(1000):  # the delivery reaches the server, and waits there
        if mail_server.handler.waiting:
            break
        await asyncio.sleep(0.01)
    assert mail_server.handler.waiting == 1
    # Meanwhile every other answer comes as usual.
    assert (await client.get(ME, headers=user.headers)).status_code == 200
    assert (await client.post(RESET, json={"email": user.email})).status_code == 202

    mail_server.handler.held.set()
    await sent(app)
    assert len(mail_server.to(user.email)) == 2


# Delivery to the log, where there is no mail server.


def test_without_smtp_host_local_and_test_log_the_messages(test_database_url: str) -> None:
    for environment in ("local", "test"):
        settings = make_settings(test_database_url, environment=environment)
        assert settings.email_delivery == "log"


async def test_the_log_shows_links_in_test_and_hides_them_in_production(
    test_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "tOkEn" * 8
    email = Email(
        to="someone@example.com",
        subject="A link",
        text=f"{FRONTEND_URL}/reset-password?token={secret}",
        html=f'<a href="{FRONTEND_URL}/reset-password?token={secret}">here</a>',
    )
    settings = make_settings(test_database_url)
    shown = Mailer(settings, LogTransport(show_content=True))
    hidden = Mailer(settings, LogTransport(show_content=False))
    with caplog.at_level(logging.INFO, logger="app.core.mail"):
        assert await shown.deliver(email)
        shown_text = caplog.text
        caplog.clear()
        assert await hidden.deliver(email)

    assert secret in shown_text
    assert secret not in caplog.text
    assert "someone@" not in caplog.text
    assert "example.com" in caplog.text


def production(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "production",
        "jwt_secret": TEST_SECRET,
        "cors_origins": ["https://app.example.com"],
        "smtp_host": "smtp.example.com",
        "email_from": "accounts@example.com",
        "frontend_url": "https://app.example.com",
        **overrides,
    }
    return make_settings(database_url, **values)


def test_production_log_delivery_hides_the_content(test_database_url: str) -> None:
    settings = production(test_database_url, smtp_host=None, email_delivery="log")
    transport = Mailer(settings).transport
    assert isinstance(transport, LogTransport)
    assert not transport.show_content


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"smtp_host": None}, "SMTP_HOST"),
        ({"smtp_host": None, "email_delivery": "smtp"}, "SMTP_HOST"),
        ({"email_from": "no-reply@localhost"}, "EMAIL_FROM"),
        ({"email_from": "not an address"}, "email_from"),
        ({"frontend_url": "http://localhost:5173"}, "FRONTEND_URL"),
        ({"frontend_url": "app.example.com"}, "frontend_url"),
        ({"frontend_url": "https://app.example.com/?next=1"}, "frontend_url"),
        ({"smtp_username": "someone"}, "SMTP_PASSWORD"),
        ({"smtp_tls": "tls"}, "smtp_tls"),
    ],
    ids=[
        "no-smtp-host",
        "smtp-without-host",
        "localhost-sender",
        "bad-sender",
        "localhost-links",
        "relative-links",
        "links-with-query",
        "username-alone",
        "unknown-tls",
    ],
)
def test_production_refuses_email_settings_that_cannot_work(
    test_database_url: str, overrides: dict[str, object], variable: str
) -> None:
    with pytest.raises(ValidationError, match=variable):
        production(test_database_url, **overrides)


def test_production_accepts_log_delivery_chosen_on_purpose(test_database_url: str) -> None:
    chosen = production(test_database_url, smtp_host=None, email_delivery="log")
    assert chosen.email_delivery == "log"
    assert production(test_database_url).email_delivery == "smtp"
    trailing_slash = production(test_database_url, frontend_url="https://app.example.com/")
    assert trailing_slash.frontend_url == "https://app.example.com"
