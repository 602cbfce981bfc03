"""The current user's account, user administration and the role rules."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from httpx import AsyncClient
from sqlalchemy import update
from sqlmodel import col

from app.core.roles import ADMIN_ROLE, DEFAULT_ROLE, ROLE_ORDER, Role
from app.models.user import User
from tests.conftest import PASSWORD, MakeUser, SignedIn

ME = "/api/v1/users/me"
USERS = "/api/v1/users"


async def test_read_me(client: AsyncClient, user: SignedIn) -> None:
    response = await client.get(ME, headers=user.headers)
    assert response.status_code == 200
    assert response.json()["id"] == user.id
    assert response.json()["role"] == DEFAULT_ROLE.value
    created = datetime.fromisoformat(response.json()["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert timedelta(0) <= datetime.now(UTC) - created < timedelta(minutes=1)


async def test_reads_do_not_wait_for_an_open_write_transaction(
    app: FastAPI, client: AsyncClient, user: SignedIn, admin: SignedIn
) -> None:
    """Authentication and pages read without taking locks, so a long write never holds
    up the requests around it (see READ_ONLY_OPTIONS in app/core/dialect.py).

    The writer commits only after the reads have answered: if a read waited for the
    writer's lock, it could not answer first and the guard would fail the test.
    """
    async with app.state.database.sessionmaker() as writer:
        pending = update(User).where(col(User.id) == uuid.UUID(user.id)).values(full_name="Pending")
        await writer.exec(pending)
        me, users = await asyncio.wait_for(
            asyncio.gather(
                client.get(ME, headers=user.headers), client.get(USERS, headers=admin.headers)
            ),
            timeout=10,  # a guard against waiting for the lock, not a measurement
        )
        await writer.commit()
    assert (me.status_code, users.status_code) == (200, 200)
    # The uncommitted change was not visible to the reads.
    assert me.json()["full_name"] is None
    assert {u["full_name"] for u in users.json()["items"]} == {None}
    after = await client.get(ME, headers=user.headers)
    assert after.json()["full_name"] == "Pending"


async def test_update_me_changes_name_and_email(client: AsyncClient, user: SignedIn) -> None:
    response = await client.patch(
        ME,
        json={"full_name": "Grace", "email": "Grace@Example.com", "current_password": PASSWORD},
        headers=user.headers,
    )
    assert response.status_code == 200
    assert response.json()["full_name"] == "Grace"
    assert response.json()["email"] == "grace@example.com"
    login = await client.post(
        "/api/v1/auth/login", data={"username": "grace@example.com", "password": PASSWORD}
    )
    assert login.status_code == 200


async def test_update_me_to_a_taken_email_is_409(
    client: AsyncClient, user: SignedIn, admin: SignedIn
) -> None:
    body = {"email": admin.email, "current_password": PASSWORD}
    response = await client.patch(ME, json=body, headers=user.headers)
    assert response.status_code == 409
    assert (await client.get(ME, headers=user.headers)).json()["email"] == user.email


@pytest.mark.parametrize(
    "body",
    [{"role": ADMIN_ROLE.value}, {"is_active": False}, {"email": None}, {"hashed_password": "x"}],
)
async def test_user_cannot_change_own_role_or_active_flag(
    client: AsyncClient, user: SignedIn, body: dict[str, object]
) -> None:
    response = await client.patch(ME, json=body, headers=user.headers)
    assert response.status_code == 422
    me = (await client.get(ME, headers=user.headers)).json()
    assert me["role"] == DEFAULT_ROLE.value
    assert me["is_active"] is True


async def test_change_password(client: AsyncClient, user: SignedIn) -> None:
    response = await client.post(
        f"{ME}/password",
        json={"current_password": PASSWORD, "new_password": "a brand new secret"},
        headers=user.headers,
    )
    assert response.status_code == 204
    old = await client.post(
        "/api/v1/auth/login", data={"username": user.email, "password": PASSWORD}
    )
    new = await client.post(
        "/api/v1/auth/login", data={"username": user.email, "password": "a brand new secret"}
    )
    assert (old.status_code, new.status_code) == (401, 200)


async def test_change_password_needs_the_current_one(client: AsyncClient, user: SignedIn) -> None:
    response = await client.post(
        f"{ME}/password",
        json={"current_password": "not my password", "new_password": "a brand new secret"},
        headers=user.headers,
    )
    assert response.status_code == 401
    assert response.json() == {"detail": "Current password is incorrect"}


async def test_change_password_validates_the_new_one(client: AsyncClient, user: SignedIn) -> None:
    response = await client.post(
        f"{ME}/password",
        json={"current_password": PASSWORD, "new_password": "€" * 25},
        headers=user.headers,
    )
    assert response.status_code == 422


@pytest.mark.parametrize("role", [r for r in ROLE_ORDER if r != ADMIN_ROLE])
async def test_only_the_administrator_role_may_administer(
    client: AsyncClient, make_user: MakeUser, role: Role
) -> None:
    member = await make_user(role)
    target = await make_user(DEFAULT_ROLE)
    assert (await client.get(USERS, headers=member.headers)).status_code == 403
    assert (await client.get(f"{USERS}/{target.id}", headers=member.headers)).status_code == 403
    patch = await client.patch(
        f"{USERS}/{target.id}", json={"role": ADMIN_ROLE.value}, headers=member.headers
    )
    assert patch.status_code == 403
    assert (await client.delete(f"{USERS}/{target.id}", headers=member.headers)).status_code == 403


def test_roles_are_ordered_and_each_includes_those_below() -> None:
    assert ROLE_ORDER[0] == DEFAULT_ROLE
    assert ROLE_ORDER[-1] == ADMIN_ROLE
    for i, held in enumerate(ROLE_ORDER):
        for j, required in enumerate(ROLE_ORDER):
            assert held.includes(required) == (i >= j)


async def test_require_role_admits_the_role_and_those_above(
    app: FastAPI, client: AsyncClient, make_user: MakeUser
) -> None:
    from app.api.deps import require_role

    # A route guarded by each role in turn, to check the guard against every holder.
    for minimum in ROLE_ORDER:
        guard = require_role(minimum)

        async def guarded(user: Annotated[User, Depends(guard)]) -> dict[str, str]:
            return {"role": user.role}

        app.add_api_route(f"/test-guard/{minimum.value}", guarded)
    members = {role: await make_user(role) for role in ROLE_ORDER}
    for minimum in ROLE_ORDER:
        for held, member in members.items():
            response = await client.get(f"/test-guard/{minimum.value}", headers=member.headers)
            expected = 200 if held.includes(minimum) else 403
            assert response.status_code == expected, (held, minimum)


async def test_admin_lists_users_with_paging(
    client: AsyncClient, make_user: MakeUser, admin: SignedIn
) -> None:
    for _ in range(4):
        await make_user()
    first = await client.get(USERS, params={"limit": 2}, headers=admin.headers)
    second = await client.get(USERS, params={"offset": 2, "limit": 2}, headers=admin.headers)
    third = await client.get(USERS, params={"offset": 4, "limit": 2}, headers=admin.headers)
    past_end = await client.get(USERS, params={"offset": 9, "limit": 2}, headers=admin.headers)
    assert first.status_code == 200
    # Every page says the total, whether it is counted (a page with more after it, or
    # past the end) or follows from a short last page.
    assert [p.json()["total"] for p in (first, second, third, past_end)] == [5, 5, 5, 5]
    pages = [first.json()["items"], second.json()["items"], third.json()["items"]]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert past_end.json()["items"] == []
    ids = [u["id"] for p in pages for u in p]
    assert len(set(ids)) == 5


async def test_admin_reads_a_user_and_gets_404_for_unknown(
    client: AsyncClient, user: SignedIn, admin: SignedIn
) -> None:
    found = await client.get(f"{USERS}/{user.id}", headers=admin.headers)
    assert found.status_code == 200
    assert found.json()["email"] == user.email
    missing = await client.get(f"{USERS}/{uuid.uuid4()}", headers=admin.headers)
    assert missing.status_code == 404
    assert missing.json() == {"detail": "User not found"}


async def test_admin_changes_role_and_the_change_applies_at_once(
    client: AsyncClient, user: SignedIn, admin: SignedIn
) -> None:
    async def sign_in() -> dict[str, str]:
        response = await client.post(
            "/api/v1/auth/login", data={"username": user.email, "password": PASSWORD}
        )
        assert response.status_code == 200
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    promoted = await client.patch(
        f"{USERS}/{user.id}", json={"role": ADMIN_ROLE.value}, headers=admin.headers
    )
    assert promoted.status_code == 200
    assert promoted.json()["role"] == ADMIN_ROLE.value
    # A new role ends the user's sessions; the next one has it.
    assert (await client.get(USERS, headers=user.headers)).status_code == 401
    as_admin = await sign_in()
    assert (await client.get(USERS, headers=as_admin)).status_code == 200
    demoted = await client.patch(
        f"{USERS}/{user.id}", json={"role": DEFAULT_ROLE.value}, headers=admin.headers
    )
    assert demoted.status_code == 200
    assert (await client.get(USERS, headers=as_admin)).status_code == 401
    assert (await client.get(USERS, headers=await sign_in())).status_code == 403


@pytest.mark.parametrize(
    "body", [{"role": "emperor"}, {"role": None}, {"is_active": None}, {"email": "x@example.com"}]
)
async def test_admin_update_validates_the_body(
    client: AsyncClient, user: SignedIn, admin: SignedIn, body: dict[str, object]
) -> None:
    response = await client.patch(f"{USERS}/{user.id}", json=body, headers=admin.headers)
    assert response.status_code == 422


async def test_admin_deletes_a_user(client: AsyncClient, user: SignedIn, admin: SignedIn) -> None:
    assert (await client.delete(f"{USERS}/{user.id}", headers=admin.headers)).status_code == 204
    assert (await client.get(f"{USERS}/{user.id}", headers=admin.headers)).status_code == 404
    assert (await client.delete(f"{USERS}/{user.id}", headers=admin.headers)).status_code == 404


@pytest.mark.parametrize("change", [{"role": DEFAULT_ROLE.value}, {"is_active": False}, "delete"])
async def test_last_active_administrator_cannot_be_removed(
    client: AsyncClient, admin: SignedIn, change: dict[str, object] | str
) -> None:
    url = f"{USERS}/{admin.id}"
    if change == "delete":
        response = await client.delete(url, headers=admin.headers)
    else:
        response = await client.patch(url, json=change, headers=admin.headers)
    assert response.status_code == 409
    assert "last active administrator" in response.json()["detail"]
    me = (await client.get(ME, headers=admin.headers)).json()
    assert (me["role"], me["is_active"]) == (ADMIN_ROLE.value, True)


async def test_an_administrator_can_step_down_when_another_remains(
    client: AsyncClient, make_user: MakeUser
) -> None:
    first = await make_user(ADMIN_ROLE)
    await make_user(ADMIN_ROLE)
    response = await client.patch(
        f"{USERS}/{first.id}", json={"role": DEFAULT_ROLE.value}, headers=first.headers
    )
    assert response.status_code == 200
    # Stepping down ends the former administrator's sessions, this one included.
    assert (await client.get(USERS, headers=first.headers)).status_code == 401


async def test_inactive_administrators_do_not_count_as_the_remaining_one(
    client: AsyncClient, make_user: MakeUser
) -> None:
    active = await make_user(ADMIN_ROLE)
    dormant = await make_user(ADMIN_ROLE)
    deactivate = await client.patch(
        f"{USERS}/{dormant.id}", json={"is_active": False}, headers=active.headers
    )
    assert deactivate.status_code == 200
    response = await client.patch(
        f"{USERS}/{active.id}", json={"role": DEFAULT_ROLE.value}, headers=active.headers
    )
    assert response.status_code == 409


@pytest.mark.parametrize("action", ["demote", "deactivate", "delete"])
async def test_two_admins_removing_each_other_concurrently_leave_one(
    client: AsyncClient, make_user: MakeUser, action: str
) -> None:
    a = await make_user(ADMIN_ROLE)
    b = await make_user(ADMIN_ROLE)

    async def remove(actor: SignedIn, target: SignedIn) -> int:
        url = f"{USERS}/{target.id}"
        if action == "delete":
            return (await client.delete(url, headers=actor.headers)).status_code
        body = {"role": DEFAULT_ROLE.value} if action == "demote" else {"is_active": False}
        return (await client.patch(url, json=body, headers=actor.headers)).status_code

    statuses = await asyncio.gather(remove(a, b), remove(b, a))
    success = 204 if action == "delete" else 200
    assert statuses.count(success) == 1, statuses
    # The other one is refused: 409, or, when the first change already applied to its
    # author, 401 (deleted or deactivated) or 403 (demoted).
    assert set(statuses) - {success} <= {401, 403, 409}, statuses
    remaining = 0
    for member in (a, b):
        response = await client.get(USERS, headers=member.headers)
        remaining += response.status_code == 200
    assert remaining == 1
