"""Access tokens: every token the service did not issue, or no longer honours, gets 401."""

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlmodel import select

from app.core.config import Settings
from app.core.roles import ADMIN_ROLE
from app.core.security import VERIFIED_TOKENS_KEPT, TokenService
from app.models.user import User
from tests.conftest import TEST_SECRET, MakeUser, SignedIn

ME = "/api/v1/users/me"
ADMIN_ONLY = "/api/v1/users"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    payload: dict[str, Any],
    *,
    key: str = TEST_SECRET,
    alg: str = "HS256",
    header: dict[str, Any] | None = None,
) -> str:
    """Build a JWT by hand, independent of the library the service uses."""
    head = b64(json.dumps({"alg": alg, "typ": "JWT", **(header or {})}).encode())
    body = b64(json.dumps(payload).encode())
    signing_input = f"{head}.{body}".encode()
    if alg == "none":
        return f"{head}.{body}."
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return f"{head}.{body}.{b64(hmac.new(key.encode(), signing_input, digest).digest())}"


def claims(user: SignedIn, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": user.id,
        "role": user.role,
        "sid": user.session_id,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
    }
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


async def assert_rejected(client: AsyncClient, token: str, path: str = ME) -> None:
    # Bytes, so that non-ASCII garbage reaches the service as sent.
    response = await client.get(path, headers={b"Authorization": f"Bearer {token}".encode()})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": "Invalid or expired token"}


async def test_a_correctly_forged_token_is_accepted(client: AsyncClient, user: SignedIn) -> None:
    # The control case: proves forge() builds what the service accepts, so the
    # rejections below are due to the one thing each test changes.
    response = await client.get(ME, headers={"Authorization": f"Bearer {forge(claims(user))}"})
    assert response.status_code == 200


async def test_missing_token_is_401(client: AsyncClient) -> None:
    response = await client.get(ME)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("scheme", ["Basic", "Token"])
async def test_other_authorization_schemes_are_401(client: AsyncClient, scheme: str) -> None:
    response = await client.get(ME, headers={"Authorization": f"{scheme} abc"})
    assert response.status_code == 401


async def test_alg_none_is_rejected(client: AsyncClient, user: SignedIn) -> None:
    await assert_rejected(client, forge(claims(user), alg="none"))
    await assert_rejected(client, forge(claims(user), alg="none", header={"alg": "None"}))


async def test_token_signed_with_another_key_is_rejected(
    client: AsyncClient, user: SignedIn
) -> None:
    await assert_rejected(client, forge(claims(user), key="another-secret-" * 4))


async def test_token_with_another_algorithm_is_rejected(
    client: AsyncClient, user: SignedIn
) -> None:
    # Signed with the right secret, but HS512 is not the configured algorithm.
    await assert_rejected(client, forge(claims(user), alg="HS512"))


async def test_expired_token_is_rejected(client: AsyncClient, user: SignedIn) -> None:
    past = int(time.time()) - 3600
    await assert_rejected(client, forge(claims(user, iat=past - 60, exp=past)))


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "sub", "sid"])
async def test_token_missing_a_required_claim_is_rejected(
    client: AsyncClient, user: SignedIn, claim: str
) -> None:
    payload = claims(user)
    del payload[claim]
    await assert_rejected(client, forge(payload))


async def test_token_with_unknown_critical_header_is_rejected(
    client: AsyncClient, user: SignedIn
) -> None:
    await assert_rejected(client, forge(claims(user), header={"crit": ["x-unknown"]}))


async def test_edited_payload_is_rejected(client: AsyncClient, user: SignedIn) -> None:
    """Raising the role inside a real token breaks its signature."""
    token = user.headers["Authorization"].removeprefix("Bearer ")
    head, _, signature = token.split(".")
    raised = b64(json.dumps(claims(user, role=ADMIN_ROLE.value)).encode())
    await assert_rejected(client, f"{head}.{raised}.{signature}", ADMIN_ONLY)


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9.e30.", "é.é.é", "x" * 5000],
)
async def test_malformed_token_is_rejected(client: AsyncClient, token: str) -> None:
    await assert_rejected(client, token)


@pytest.mark.parametrize("sid", [str(uuid.uuid4()), "not-a-uuid", 42, "", None])
async def test_a_token_naming_no_session_of_its_user_is_rejected(
    client: AsyncClient, make_user: MakeUser, sid: object
) -> None:
    """Tokens from before sessions existed carry no `sid`; a session that is not the
    subject's (someone else's, or none) opens nothing."""
    member, other = await make_user(), await make_user()
    await assert_rejected(client, forge({**claims(member), "sid": sid}))
    await assert_rejected(client, forge(claims(member, sid=other.session_id)))


@pytest.mark.parametrize("sub", [str(uuid.uuid4()), "not-a-uuid", 42, ""])
async def test_subject_naming_no_user_is_rejected(
    client: AsyncClient, user: SignedIn, sub: object
) -> None:
    await assert_rejected(client, forge(claims(user, sub=sub)))


async def test_role_claim_does_not_grant_privileges(client: AsyncClient, user: SignedIn) -> None:
    """A validly signed token claiming the administrator role still gets the stored role."""
    token = forge(claims(user, role=ADMIN_ROLE.value))
    response = await client.get(ADMIN_ONLY, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403


async def test_deleted_user_token_is_rejected(
    client: AsyncClient, user: SignedIn, admin: SignedIn
) -> None:
    # Used once first, so the token has been verified and remembered.
    assert (await client.get(ME, headers=user.headers)).status_code == 200
    assert (
        await client.delete(f"/api/v1/users/{user.id}", headers=admin.headers)
    ).status_code == 204
    response = await client.get(ME, headers=user.headers)
    assert response.status_code == 401


async def test_deactivated_user_token_is_rejected_and_login_fails(
    client: AsyncClient, user: SignedIn, admin: SignedIn
) -> None:
    assert (await client.get(ME, headers=user.headers)).status_code == 200
    response = await client.patch(
        f"/api/v1/users/{user.id}", json={"is_active": False}, headers=admin.headers
    )
    assert response.status_code == 200
    assert (await client.get(ME, headers=user.headers)).status_code == 401
    login = await client.post(
        "/api/v1/auth/login", data={"username": user.email, "password": "correct horse battery"}
    )
    assert login.status_code == 401


async def test_issued_token_carries_sub_role_iat_and_exp(app: FastAPI, make_user: MakeUser) -> None:
    member = await make_user()
    token = member.headers["Authorization"].removeprefix("Bearer ")
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["sub"] == member.id
    assert payload["role"] == member.role
    assert payload["sid"] == member.session_id
    assert len(payload["jti"]) == 32
    assert payload["exp"] - payload["iat"] == 30 * 60
    service: TokenService = app.state.token_service
    assert service.read(token).user_id == uuid.UUID(member.id)
    async with app.state.database.sessionmaker() as session:
        stored = (await session.exec(select(User).where(User.email == member.email))).one()
    assert str(stored.id) == payload["sub"]


async def test_a_remembered_token_is_refused_once_it_expires(
    client: AsyncClient, user: SignedIn
) -> None:
    """Verified tokens are remembered, but never past their expiry."""
    expires = int(time.time()) + 2  # at least a second to use it once first
    token = forge(claims(user, exp=expires))
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get(ME, headers=headers)).status_code == 200
    # Some JWT libraries compare whole seconds: wait until a full second past the expiry.
    await asyncio.sleep(expires + 1.05 - time.time())
    await assert_rejected(client, token)


def test_the_verified_token_memory_is_bounded(settings: Settings) -> None:
    service = TokenService(settings)
    later = datetime.now(UTC) + timedelta(days=1)
    issued = [
        service.issue(uuid.uuid4(), "user", uuid.uuid4(), later).token
        for _ in range(VERIFIED_TOKENS_KEPT + 10)
    ]
    for token in issued:
        service.read(token)
    # Every token still reads correctly, remembered or not.
    assert service.read(issued[0]) == service.read(issued[0])
    assert len(service._verified) <= VERIFIED_TOKENS_KEPT
