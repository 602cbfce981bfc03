"""The admin commands: create-admin makes a working administrator; wait-for-db waits."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from httpx import AsyncClient

from app.core.config import Settings
from tests.conftest import PROJECT_ROOT, TEST_SECRET
from tests.test_health import unreachable_url

ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "admin password from the environment"


def run_cli(
    database_url: str, *arguments: str, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m app.cli` as an operator would, from the project root."""
    setting_names = {name.upper() for name in Settings.model_fields}
    # Every setting is given explicitly, so neither the caller's environment nor the
    # project's `.env` decides the outcome.
    environment = {
        name: value for name, value in os.environ.items() if name.upper() not in setting_names
    }
    environment.update(
        DATABASE_URL=database_url,
        ENVIRONMENT="test",
        JWT_SECRET=TEST_SECRET,
        BCRYPT_ROUNDS="4",
        FIRST_ADMIN_EMAIL=ADMIN_EMAIL,
        FIRST_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    environment.update(variables)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *arguments],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def login(client: AsyncClient, email: str, password: str) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/login", data={"username": email, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_create_admin_makes_an_administrator_who_can_sign_in(
    client: AsyncClient, migrated_database: str
) -> None:
    result = run_cli(migrated_database, "create-admin")

    assert result.returncode == 0, result.stderr
    assert f"Created administrator {ADMIN_EMAIL}" in result.stdout
    headers = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    users = await client.get("/api/v1/users", headers=headers)
    assert users.status_code == 200
    [admin] = users.json()["items"]
    assert (admin["email"], admin["is_active"]) == (ADMIN_EMAIL, True)


async def test_create_admin_twice_changes_nothing(
    client: AsyncClient, migrated_database: str
) -> None:
    first = run_cli(migrated_database, "create-admin")
    second = run_cli(migrated_database, "create-admin")

    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert "already an administrator" in second.stdout
    headers = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    users = await client.get("/api/v1/users", headers=headers)
    assert users.json()["total"] == 1


async def test_create_admin_promotes_an_existing_user_keeping_the_password(
    client: AsyncClient, migrated_database: str
) -> None:
    registered = await client.post(
        "/api/v1/auth/register",
        json={"email": "someone@example.com", "password": "registered password"},
    )
    assert registered.status_code == 201
    headers = await login(client, "someone@example.com", "registered password")
    assert (await client.get("/api/v1/users", headers=headers)).status_code == 403

    result = run_cli(migrated_database, "create-admin", FIRST_ADMIN_EMAIL="Someone@Example.com")

    assert result.returncode == 0, result.stderr
    assert "Promoted someone@example.com" in result.stdout
    headers = await login(client, "someone@example.com", "registered password")
    users = await client.get("/api/v1/users", headers=headers)
    assert users.status_code == 200
    assert users.json()["total"] == 1


@pytest.mark.usefixtures("client")
def test_create_admin_without_an_email_fails_with_a_message(migrated_database: str) -> None:
    result = run_cli(migrated_database, "create-admin", FIRST_ADMIN_EMAIL="")

    assert result.returncode != 0
    assert "FIRST_ADMIN_EMAIL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("client")
def test_create_admin_with_a_short_password_fails_with_a_message(
    migrated_database: str,
) -> None:
    result = run_cli(migrated_database, "create-admin", FIRST_ADMIN_PASSWORD="short")

    assert result.returncode != 0
    assert "at least 8 characters" in result.stderr
    assert "Traceback" not in result.stderr


def test_wait_for_db_succeeds_when_the_database_answers(migrated_database: str) -> None:
    result = run_cli(migrated_database, "wait-for-db", "--timeout", "1")

    assert result.returncode == 0, result.stderr
    assert "reachable" in result.stdout


def test_wait_for_db_gives_up_with_a_message(test_database_url: str, tmp_path: Path) -> None:
    result = run_cli(unreachable_url(test_database_url, tmp_path), "wait-for-db", "--timeout", "1")

    assert result.returncode != 0
    assert "wait-for-db: database not reachable" in result.stderr
