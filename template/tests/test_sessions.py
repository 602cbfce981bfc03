"""Sessions: refresh-token rotation and reuse detection, logout, revocation, expiry."""

import asyncio
import base64
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy import func, update
from sqlmodel import col, select

from app.cli import prune_sessions
from app.core.roles import ADMIN_ROLE, DEFAULT_ROLE
from app.main import create_app
from app.models.session import AuthSession, RefreshToken
from app.models.types import utcnow
from app.models.user import User
from app.services.session import token_digest
from tests.conftest import (
    JSON_HEADERS,
    PASSWORD,
    MakeUser,
    SignedIn,
    close_app,
    make_settings,
    session_of,
)

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/users/me"
SESSIONS = "/api/v1/users/me/sessions"
REFUSED = {"detail": "Invalid or expired refresh token"}
SECOND = 1 / 86_400  # a second, in days


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def payload(access_token: str) -> dict[str, Any]:
    part = access_token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


async def login(client: AsyncClient, email: str, **headers: str) -> dict[str, Any]:
    response = await client.post(
        LOGIN, data={"username": email, "password": PASSWORD}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def refresh(client: AsyncClient, token: object) -> Response:
    # Encoded here, ASCII-only, so that even lone surrogates reach the service as sent.
    body = json.dumps({"refresh_token": token})
    return await client.post(REFRESH, content=body, headers=JSON_HEADERS)


def assert_refused(response: Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == REFUSED
    assert response.headers["www-authenticate"] == "Bearer"


async def assert_signed_out(client: AsyncClient, access: str) -> None:
    response = await client.get(ME, headers=bearer(access))
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "Invalid or expired token"}


def access_of(user: SignedIn) -> str:
    return user.headers["Authorization"].removeprefix("Bearer ")


@asynccontextmanager
async def app_with(migrated_database: str, **settings: object) -> AsyncIterator[AsyncClient]:
    """A client of another app instance on the same database (as a second worker or
    replica would be), with these settings."""
    application = create_app(make_settings(migrated_database, **settings))
    try:
        transport = ASGITransport(app=application)
        async with AsyncClient(transport=transport, base_url="http://test") as http:
            yield http
    finally:
        await close_app(application)


async def count(app: FastAPI, model: type[Any]) -> int:
    async with app.state.database.sessionmaker() as session:
        return int((await session.exec(select(func.count()).select_from(model))).one())


async def test_login_opens_a_session_and_answers_a_pair_never_cached(
    client: AsyncClient, user: SignedIn
) -> None:
    response = await client.post(LOGIN, data={"username": user.email, "password": PASSWORD})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "refresh_expires_in",
    }
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    assert body["refresh_expires_in"] == 14 * 86_400
    assert len(base64.urlsafe_b64decode(body["refresh_token"] + "=")) == 32
    claims = payload(body["access_token"])
    assert claims["sid"] != user.session_id  # a login is a session of its own


async def test_refresh_rotates_keeps_the_session_and_issues_a_new_jti(
    client: AsyncClient, user: SignedIn
) -> None:
    first = await refresh(client, user.refresh_token)
    assert first.status_code == 200, first.text
    assert first.headers["cache-control"] == "no-store"
    pair = first.json()
    assert pair["refresh_token"] != user.refresh_token
    old, new = payload(access_of(user)), payload(pair["access_token"])
    assert new["sid"] == old["sid"] == user.session_id
    assert new["jti"] != old["jti"]
    assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200
    second = await refresh(client, pair["refresh_token"])
    assert second.status_code == 200, second.text
    assert payload(second.json()["access_token"])["sid"] == user.session_id


async def test_a_spent_refresh_token_presented_again_revokes_the_whole_session(
    client: AsyncClient, user: SignedIn, make_user: MakeUser
) -> None:
    bystander = await make_user()
    # The thief refreshes first with a copied token; then the victim's own use of it is
    # reuse. Every token of the session, whoever holds it, stops working.
    thief = (await refresh(client, user.refresh_token)).json()
    assert_refused(await refresh(client, user.refresh_token))
    assert_refused(await refresh(client, thief["refresh_token"]))
    await assert_signed_out(client, thief["access_token"])
    await assert_signed_out(client, access_of(user))
    # Nobody else's session is touched.
    assert (await client.get(ME, headers=bystander.headers)).status_code == 200
    assert (await refresh(client, bystander.refresh_token)).status_code == 200


async def test_concurrent_refreshes_with_one_token_have_exactly_one_winner(
    client: AsyncClient, user: SignedIn
) -> None:
    responses = await asyncio.gather(*(refresh(client, user.refresh_token) for _ in range(8)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [401] * 7, statuses
    for response in responses:
        if response.status_code == 401:
            assert response.json() == REFUSED


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        secrets.token_urlsafe(32),  # well formed, never issued
        "A" * 43,
        "x" * 1024,
        "\x00" * 43,
        "é" * 43,
    ],
    ids=["empty", "short", "never-issued", "letters", "long", "nul", "non-ascii"],
)
async def test_unknown_and_malformed_refresh_tokens_are_refused_alike(
    client: AsyncClient, user: SignedIn, token: str
) -> None:
    assert_refused(await refresh(client, token))
    # Nothing was revoked by the attempt.
    assert (await client.get(ME, headers=user.headers)).status_code == 200


async def test_tampered_access_and_non_string_refresh_tokens_are_refused(
    client: AsyncClient, user: SignedIn
) -> None:
    token = user.refresh_token
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert_refused(await refresh(client, tampered))
    assert_refused(await refresh(client, access_of(user)))  # an access token is not one
    assert_refused(await refresh(client, token.upper() if token.upper() != token else token[::-1]))
    assert (await refresh(client, token)).status_code == 200  # the real one still works
    for body in ({}, {"refresh_token": 42}, {"refresh_token": token, "extra": 1}):
        response = await client.post(REFRESH, json=body)
        assert response.status_code == 422, response.text
    response = await client.post(REFRESH, json={"refresh_token": "x" * 1025})
    assert response.status_code == 422
    # Text that is not text at all (lone surrogates) is refused as the body's fault.
    response = await refresh(client, "\ud800" * 43)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "string_unicode"


async def test_logout_ends_the_session_for_its_access_and_refresh_tokens(
    client: AsyncClient, make_user: MakeUser
) -> None:
    member = await make_user()
    other = await login(client, member.email)
    response = await client.post(LOGOUT, headers=member.headers)
    assert response.status_code == 204
    await assert_signed_out(client, access_of(member))
    assert_refused(await refresh(client, member.refresh_token))
    assert (await client.post(LOGOUT, headers=member.headers)).status_code == 401
    # The member's other session goes on.
    assert (await client.get(ME, headers=bearer(other["access_token"]))).status_code == 200
    assert (await client.post(LOGOUT)).status_code == 401


async def test_sessions_are_listed_without_token_material(
    client: AsyncClient, user: SignedIn
) -> None:
    other = await login(client, user.email, **{"User-Agent": "Phone\x7f app/1.0"})
    response = await client.get(SESSIONS, headers=user.headers)
    assert response.status_code == 200
    listed = response.json()
    assert [entry["id"] for entry in listed] == [session_of(other["access_token"]), user.session_id]
    assert [entry["current"] for entry in listed] == [False, True]
    assert set(listed[0]) == {
        "id",
        "created_at",
        "last_used_at",
        "user_agent",
        "client_address",
        "current",
    }
    assert listed[0]["user_agent"] == "Phone app/1.0"  # control characters dropped
    assert listed[0]["client_address"] == "127.0.0.1"
    text = response.text
    for secret in (user.refresh_token, other["refresh_token"], token_digest(user.refresh_token)):
        assert secret not in text


async def test_a_long_user_agent_is_kept_shortened(client: AsyncClient, user: SignedIn) -> None:
    await login(client, user.email, **{"User-Agent": "a" * 5000})
    listed = (await client.get(SESSIONS, headers=user.headers)).json()
    assert listed[0]["user_agent"] == "a" * 255


async def test_revoking_one_session_ends_it_and_only_it(
    client: AsyncClient, user: SignedIn, make_user: MakeUser
) -> None:
    other = await login(client, user.email)
    other_id = session_of(other["access_token"])
    response = await client.delete(f"{SESSIONS}/{other_id}", headers=user.headers)
    assert response.status_code == 204
    await assert_signed_out(client, other["access_token"])
    assert_refused(await refresh(client, other["refresh_token"]))
    assert (await client.get(ME, headers=user.headers)).status_code == 200
    # Gone already, never existed, or someone else's: all 404.
    stranger = await make_user()
    for session_id in (other_id, str(uuid.uuid4()), stranger.session_id):
        response = await client.delete(f"{SESSIONS}/{session_id}", headers=user.headers)
        assert response.status_code == 404, response.text
        assert response.json() == {"detail": "Session not found"}
    assert (await client.get(ME, headers=stranger.headers)).status_code == 200
    response = await client.delete(f"{SESSIONS}/not-a-uuid", headers=user.headers)
    assert response.status_code in {404, 422}


async def test_revoking_the_others_keeps_only_the_current_session(
    client: AsyncClient, user: SignedIn
) -> None:
    others = [await login(client, user.email) for _ in range(3)]
    assert (await client.delete(SESSIONS, headers=user.headers)).status_code == 204
    for other in others:
        await assert_signed_out(client, other["access_token"])
        assert_refused(await refresh(client, other["refresh_token"]))
    listed = (await client.get(SESSIONS, headers=user.headers)).json()
    assert [entry["id"] for entry in listed] == [user.session_id]
    assert (await refresh(client, user.refresh_token)).status_code == 200


async def test_a_password_change_ends_every_other_session(
    client: AsyncClient, user: SignedIn
) -> None:
    other = await login(client, user.email)
    response = await client.post(
        f"{ME}/password",
        json={"current_password": PASSWORD, "new_password": "another good passphrase"},
        headers=user.headers,
    )
    assert response.status_code == 204, response.text
    await assert_signed_out(client, other["access_token"])
    assert_refused(await refresh(client, other["refresh_token"]))
    assert (await client.get(ME, headers=user.headers)).status_code == 200
    assert (await refresh(client, user.refresh_token)).status_code == 200


@pytest.mark.parametrize(
    ("change", "signs_out"),
    [
        ({"is_active": False}, True),
        ({"role": ADMIN_ROLE.value}, True),
        ({"role": DEFAULT_ROLE.value, "full_name": "Renamed"}, False),  # the same role
    ],
)
async def test_an_administrator_deactivating_or_changing_a_role_ends_every_session(
    client: AsyncClient,
    admin: SignedIn,
    make_user: MakeUser,
    change: dict[str, Any],
    signs_out: bool,
) -> None:
    member = await make_user()
    other = await login(client, member.email)
    response = await client.patch(f"/api/v1/users/{member.id}", json=change, headers=admin.headers)
    assert response.status_code == 200, response.text
    if not signs_out:
        # Nothing that decides access changed: the sessions go on.
        assert (await client.get(ME, headers=member.headers)).status_code == 200
        assert (await refresh(client, other["refresh_token"])).status_code == 200
        return
    for access, refresh_token in (
        (access_of(member), member.refresh_token),
        (other["access_token"], other["refresh_token"]),
    ):
        await assert_signed_out(client, access)
        assert_refused(await refresh(client, refresh_token))
    if change.get("is_active") is False:
        # Reactivating the account does not bring the old sessions back.
        response = await client.patch(
            f"/api/v1/users/{member.id}", json={"is_active": True}, headers=admin.headers
        )
        assert response.status_code == 200
        await assert_signed_out(client, access_of(member))
    assert (await client.get(ME, headers=admin.headers)).status_code == 200


async def test_refreshing_reads_the_users_current_role_and_active_flag(
    app: FastAPI, client: AsyncClient, user: SignedIn
) -> None:
    async def set_user(**values: object) -> None:
        async with app.state.database.sessionmaker() as session:
            statement = update(User).where(col(User.id) == uuid.UUID(user.id)).values(**values)
            await session.exec(statement)
            await session.commit()

    # Changed behind the service's back (no revocation): refreshing still sees it.
    await set_user(role=ADMIN_ROLE.value)
    pair = (await refresh(client, user.refresh_token)).json()
    assert payload(pair["access_token"])["role"] == ADMIN_ROLE.value
    await set_user(is_active=False)
    assert_refused(await refresh(client, pair["refresh_token"]))


async def test_a_deleted_user_cannot_refresh(
    client: AsyncClient, admin: SignedIn, make_user: MakeUser
) -> None:
    member = await make_user()
    response = await client.delete(f"/api/v1/users/{member.id}", headers=admin.headers)
    assert response.status_code == 204
    assert_refused(await refresh(client, member.refresh_token))
    await assert_signed_out(client, access_of(member))


async def test_a_refresh_token_expires_and_a_session_ends_however_often_refreshed(
    migrated_database: str, app: FastAPI, make_user: MakeUser
) -> None:
    member = await make_user()  # `app` is requested for its clean-up
    async with app_with(
        migrated_database, refresh_token_expire_days=1.5 * SECOND, session_max_days=3 * SECOND
    ) as short:
        pair = await login(short, member.email)
        assert pair["refresh_expires_in"] == 1
        await asyncio.sleep(1.6)
        assert_refused(await refresh(short, pair["refresh_token"]))  # expired unused

        pair = await login(short, member.email)
        for _ in range(3):  # refreshed in time, again and again
            await asyncio.sleep(0.5)
            response = await refresh(short, pair["refresh_token"])
            assert response.status_code == 200, response.text
            pair = response.json()
        # The session's end bounds the tokens of its last refresh.
        assert pair["refresh_expires_in"] <= 2
        assert pair["expires_in"] <= 2
        await asyncio.sleep(3.2 - 1.5)
        await assert_signed_out(short, pair["access_token"])
        assert_refused(await refresh(short, pair["refresh_token"]))


async def test_a_revoked_session_is_refused_by_another_instance_that_remembered_the_token(
    migrated_database: str, client: AsyncClient, user: SignedIn
) -> None:
    async with app_with(migrated_database) as second:
        # Both instances have verified (and remember) the token.
        assert (await client.get(ME, headers=user.headers)).status_code == 200
        assert (await second.get(ME, headers=user.headers)).status_code == 200
        assert (await second.post(LOGOUT, headers=user.headers)).status_code == 204
        await assert_signed_out(client, access_of(user))
        await assert_signed_out(second, access_of(user))
        assert_refused(await refresh(client, user.refresh_token))


async def test_a_user_keeps_at_most_the_configured_sessions(
    migrated_database: str, app: FastAPI, make_user: MakeUser
) -> None:
    member = await make_user()
    async with app_with(migrated_database, max_sessions_per_user=3) as capped:
        pairs = [await login(capped, member.email) for _ in range(6)]
        listed = (await capped.get(SESSIONS, headers=bearer(pairs[-1]["access_token"]))).json()
        assert [entry["id"] for entry in listed] == [
            session_of(pair["access_token"]) for pair in reversed(pairs[-3:])
        ]
        for pair in pairs[:3]:  # the oldest were closed
            await assert_signed_out(capped, pair["access_token"])
            assert_refused(await refresh(capped, pair["refresh_token"]))
    assert await count(app, AuthSession) == 3  # rows do not pile up


async def test_prune_deletes_closed_sessions_and_expired_tokens_and_is_idempotent(
    app: FastAPI, client: AsyncClient, make_user: MakeUser
) -> None:
    kept, ended = await make_user(), await make_user()
    spent = (await refresh(client, kept.refresh_token)).json()  # kept has a spent token
    assert (await client.post(LOGOUT, headers=ended.headers)).status_code == 204
    async with app.state.database.sessionmaker() as session:
        await session.exec(
            update(RefreshToken)
            .where(col(RefreshToken.token_hash) == token_digest(kept.refresh_token))
            .values(expires_at=utcnow())
        )
        await session.commit()
    assert await count(app, AuthSession) == 2
    assert await count(app, RefreshToken) == 3

    settings = app.state.settings
    assert await prune_sessions(settings) == (
        "Deleted 1 closed session(s) and 2 unusable refresh token(s)"
    )
    assert await prune_sessions(settings) == (
        "Deleted 0 closed session(s) and 0 unusable refresh token(s)"
    )
    assert await count(app, AuthSession) == 1
    assert (await refresh(client, spent["refresh_token"])).status_code == 200
