"""The admin commands: create-admin makes a working administrator and never takes over an
existing account; wait-for-db waits."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from httpx import AsyncClient

from app.cli import create_admin, main
from app.core.config import Settings, get_settings
from app.core.roles import ADMIN_ROLE
from tests.conftest import (
    PROJECT_ROOT,
    TEST_SECRET,
    SignedIn,
    make_settings,
    read_test_environment,
)
from tests.test_health import unreachable_url

ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "admin password from the environment"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., CliResult]:
    """Run the CLI's main() in this process with every setting given explicitly, so neither
    the caller's environment nor `.env` decides the outcome.

    In-process keeps the suite fast; the tests below that spawn `python -m app.cli` cover
    the real entry point.
    """

    def invoke(database_url: str, *arguments: str, **variables: str) -> CliResult:
        for name in Settings.model_fields:
            monkeypatch.delenv(name.upper(), raising=False)
        for name, value in {**base_environment(database_url), **variables}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        try:
            main(list(arguments))
            code, message = 0, ""
        except SystemExit as exit_:
            code, message = (exit_.code, "") if isinstance(exit_.code, int) else (1, str(exit_))
        finally:
            get_settings.cache_clear()
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err + message)

    return invoke


def base_environment(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "test",
        "JWT_SECRET": TEST_SECRET,
        "BCRYPT_ROUNDS": "4",
        "FIRST_ADMIN_EMAIL": ADMIN_EMAIL,
        "FIRST_ADMIN_PASSWORD": ADMIN_PASSWORD,
        # The commands reach the test database the way the tests do.
        "DB_POOLER": read_test_environment().db_pooler,
    }


async def login(client: AsyncClient, email: str, password: str) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/login", data={"username": email, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_create_admin_makes_an_administrator_who_can_sign_in(
    client: AsyncClient, migrated_database: str, run_cli: Callable[..., CliResult]
) -> None:
    result = await asyncio.to_thread(run_cli, migrated_database, "create-admin")

    assert result.returncode == 0, result.stderr
    assert f"Created administrator {ADMIN_EMAIL}" in result.stdout
    headers = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    users = await client.get("/api/v1/users", headers=headers)
    assert users.status_code == 200
    [admin] = users.json()["items"]
    assert (admin["email"], admin["is_active"]) == (ADMIN_EMAIL, True)


async def test_create_admin_twice_changes_nothing(
    client: AsyncClient, migrated_database: str, run_cli: Callable[..., CliResult]
) -> None:
    first = await asyncio.to_thread(run_cli, migrated_database, "create-admin")
    second = await asyncio.to_thread(run_cli, migrated_database, "create-admin")

    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert "already an administrator" in second.stdout
    headers = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    users = await client.get("/api/v1/users", headers=headers)
    assert users.json()["total"] == 1


async def register(client: AsyncClient, email: str, password: str) -> None:
    response = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": password}
    )
    assert response.status_code == 201, response.text


async def me(client: AsyncClient, email: str, password: str) -> dict[str, object]:
    response = await client.get("/api/v1/users/me", headers=await login(client, email, password))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_create_admin_never_takes_over_a_registered_account(
    client: AsyncClient, migrated_database: str, run_cli: Callable[..., CliResult]
) -> None:
    """Someone registered the administrator's email first, with a password of their own."""
    await register(client, ADMIN_EMAIL, "a stranger's password")

    result = await asyncio.to_thread(run_cli, migrated_database, "create-admin")

    assert result.returncode != 0
    assert f"{ADMIN_EMAIL} already has an account" in result.stderr
    assert "--promote --reset-password" in result.stderr
    assert "Traceback" not in result.stderr
    stranger = await login(client, ADMIN_EMAIL, "a stranger's password")
    assert (await client.get("/api/v1/users", headers=stranger)).status_code == 403
    assert (await me(client, ADMIN_EMAIL, "a stranger's password"))["role"] != ADMIN_ROLE
    refused = await client.post(
        "/api/v1/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert refused.status_code == 401


async def test_create_admin_never_reactivates_a_deactivated_administrator(
    client: AsyncClient, migrated_database: str, run_cli: Callable[..., CliResult], admin: SignedIn
) -> None:
    created = await asyncio.to_thread(run_cli, migrated_database, "create-admin")
    assert created.returncode == 0, created.stderr
    users = (await client.get("/api/v1/users", headers=admin.headers)).json()["items"]
    [bootstrap] = [user for user in users if user["email"] == ADMIN_EMAIL]
    deactivated = await client.patch(
        f"/api/v1/users/{bootstrap['id']}", json={"is_active": False}, headers=admin.headers
    )
    assert deactivated.status_code == 200, deactivated.text

    result = await asyncio.to_thread(run_cli, migrated_database, "create-admin")

    assert result.returncode != 0
    assert "inactive administrator" in result.stderr
    assert "--promote" in result.stderr
    after = await client.get(f"/api/v1/users/{bootstrap['id']}", headers=admin.headers)
    assert after.json()["is_active"] is False
    refused = await client.post(
        "/api/v1/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert refused.status_code in (401, 403)


async def test_create_admin_for_prestart_leaves_an_existing_account_alone_and_succeeds(
    client: AsyncClient, migrated_database: str, run_cli: Callable[..., CliResult]
) -> None:
    """scripts/prestart's form: a container start never fails, or changes anything,
    because the email has an account."""
    await register(client, ADMIN_EMAIL, "a stranger's password")

    result = await asyncio.to_thread(run_cli, migrated_database, "create-admin", "--skip-existing")

    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr
    assert "nothing changed" in result.stderr
    assert result.stdout == ""
    assert (await me(client, ADMIN_EMAIL, "a stranger's password"))["role"] != ADMIN_ROLE


async def test_promote_without_reset_password_is_refused(
    client: AsyncClient, migrated_database: str, run_cli: Callable[..., CliResult]
) -> None:
    await register(client, ADMIN_EMAIL, "a stranger's password")

    result = await asyncio.to_thread(run_cli, migrated_database, "create-admin", "--promote")

    assert result.returncode != 0
    assert "--promote requires --reset-password" in result.stderr
    assert (await me(client, ADMIN_EMAIL, "a stranger's password"))["role"] != ADMIN_ROLE


async def test_promote_with_reset_password_replaces_the_password_and_signs_everyone_out(
    client: AsyncClient, migrated_database: str, run_cli: Callable[..., CliResult]
) -> None:
    await register(client, ADMIN_EMAIL, "a stranger's password")
    stranger = await login(client, ADMIN_EMAIL, "a stranger's password")

    result = await asyncio.to_thread(
        run_cli,
        migrated_database,
        "create-admin",
        "--email",
        ADMIN_EMAIL.upper(),
        "--promote",
        "--reset-password",
    )

    assert result.returncode == 0, result.stderr
    assert f"Promoted {ADMIN_EMAIL}" in result.stdout
    assert (await client.get("/api/v1/users/me", headers=stranger)).status_code == 401
    refused = await client.post(
        "/api/v1/auth/login", data={"username": ADMIN_EMAIL, "password": "a stranger's password"}
    )
    assert refused.status_code == 401
    headers = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    users = await client.get("/api/v1/users", headers=headers)
    assert users.status_code == 200
    assert users.json()["total"] == 1


@pytest.mark.usefixtures("client")
async def test_create_admin_run_by_several_processes_at_once_creates_one_administrator(
    migrated_database: str, client: AsyncClient
) -> None:
    """Replicas starting together each run scripts/prestart: one inserts the
    administrator, the others find it, and none fails."""
    settings = make_settings(migrated_database)

    outcomes = await asyncio.gather(
        *(create_admin(settings, ADMIN_EMAIL, ADMIN_PASSWORD, promote=False) for _ in range(4))
    )

    assert sorted(outcome.split()[0] for outcome in outcomes) == [
        "Created",
        *[ADMIN_EMAIL] * 3,
    ], outcomes
    headers = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert (await client.get("/api/v1/users", headers=headers)).json()["total"] == 1


@pytest.mark.usefixtures("client")
def test_create_admin_without_an_email_fails_with_a_message(
    migrated_database: str, run_cli: Callable[..., CliResult]
) -> None:
    result = run_cli(migrated_database, "create-admin", FIRST_ADMIN_EMAIL="")

    assert result.returncode != 0
    assert "FIRST_ADMIN_EMAIL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("client")
def test_create_admin_with_a_short_password_fails_with_a_message(
    migrated_database: str, run_cli: Callable[..., CliResult]
) -> None:
    result = run_cli(migrated_database, "create-admin", FIRST_ADMIN_PASSWORD="short")

    assert result.returncode != 0
    assert "at least 8 characters" in result.stderr
    assert "Traceback" not in result.stderr


def test_wait_for_db_succeeds_when_the_database_answers(
    migrated_database: str, run_cli: Callable[..., CliResult]
) -> None:
    result = run_cli(migrated_database, "wait-for-db", "--timeout", "1")

    assert result.returncode == 0, result.stderr
    assert "reachable" in result.stdout


def test_wait_for_db_gives_up_with_a_message(test_database_url: str, tmp_path: Path) -> None:
    result = run_module(
        unreachable_url(test_database_url, tmp_path), "wait-for-db", "--timeout", "1"
    )

    assert result.returncode != 0
    assert "wait-for-db: database not reachable" in result.stderr


@pytest.mark.usefixtures("client")
def test_cli_runs_as_a_module(migrated_database: str) -> None:
    """The entry point operators and scripts/prestart use: `python -m app.cli`."""
    result = run_module(migrated_database, "create-admin")

    assert result.returncode == 0, result.stderr
    assert f"Created administrator {ADMIN_EMAIL}" in result.stdout


def run_module(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    setting_names = {name.upper() for name in Settings.model_fields}
    environment = {k: v for k, v in os.environ.items() if k.upper() not in setting_names}
    environment.update(base_environment(database_url))
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *arguments],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
