"""Each variant served by uvicorn: fuzzed with schemathesis as a user and as the administrator."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import TIMINGS, Project, run, serve

PASSWORD = "fuzzing password 1"
# JSON Schema cannot say "at most 72 UTF-8 bytes", "no NUL characters" or which domains
# email-validator refuses, so schema-valid bodies can rightly get 422: skip only the check
# that insists they be accepted. The rendered tests cover those rules one by one.
EXCLUDED_CHECKS = "positive_data_acceptance"
MAX_EXAMPLES = 25


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as response:
        return bytes(response.read())


@contextmanager
def served(project: Project, env: dict[str, str]) -> Iterator[str]:
    with serve(project.path, env, project.path / "uvicorn.log") as base:
        yield base


def login(base: str, email: str) -> str:
    body = f"username={email}&password={PASSWORD.replace(' ', '+')}".encode()
    token = json.loads(
        request(
            f"{base}/api/v1/auth/login",
            body,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
    )["access_token"]
    return str(token)


def schemathesis(base: str, token: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Installed beside the interpreter running these tests (the template's own venv).
    executable = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert executable, "schemathesis is not installed in the template's environment"
    return subprocess.run(
        [
            executable, "run", f"{base}/openapi.json",
            "--header", f"Authorization: Bearer {token}",
            "--checks", "all",
            "--exclude-checks", EXCLUDED_CHECKS,
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", "20261126",
            "--request-timeout", "20",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )  # fmt: skip


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    project: Project, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": project.database_url,
        "ENVIRONMENT": "production",
        "JWT_SECRET": secrets.token_urlsafe(48),
        # No mail server here: emails go to the log, which production allows when chosen.
        "EMAIL_DELIVERY": "log",
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "WARNING",
        # Fuzzing sends many failed logins and registrations from one address; a real
        # service keeps the defaults.
        "LOGIN_MAX_FAILURES": "1000",
        "LOGIN_MAX_FAILURES_PER_ADDRESS": "100000",
        "LOGIN_MAX_FAILURES_PER_ACCOUNT": "100000",
        "REGISTER_MAX_PER_ADDRESS_PER_HOUR": "100000",
        "FIRST_ADMIN_EMAIL": "fuzz-admin@example.com",
        "FIRST_ADMIN_PASSWORD": PASSWORD,
    }
    run("uv run alembic upgrade head", project.path, env)
    run("uv run python -m app.cli create-admin", project.path, env)
    started = time.perf_counter()
    with served(project, env) as base:
        member_email = f"fuzz-{secrets.token_hex(4)}@example.com"
        request(
            f"{base}/api/v1/auth/register",
            json.dumps({"email": member_email, "password": PASSWORD}).encode(),
            {"Content-Type": "application/json"},
        )
        tokens = {"user": login(base, member_email), "admin": login(base, env["FIRST_ADMIN_EMAIL"])}
        for who, token in tokens.items():
            result = schemathesis(base, token, tmp_path)
            assert result.returncode == 0, f"as {who}:\n{result.stdout[-12000:]}{result.stderr}"
    TIMINGS[project.variant.name]["schemathesis"] = time.perf_counter() - started
    assert os.path.exists(project.path / "uvicorn.log")
