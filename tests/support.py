"""Shared pieces of the template tests: variants, databases, commands and timings."""

import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
# Servers the tests create their own databases on; CI may point them elsewhere.
POSTGRES_URL = os.environ.get("TEMPLATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
MYSQL_URL = os.environ.get("TEMPLATE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")

TIMINGS: dict[str, dict[str, float]] = defaultdict(dict)


@dataclass(frozen=True)
class Variant:
    """A named set of answers; the name is the test id and says what is special."""

    name: str
    answers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def database(self) -> str:
        return str(self.answers.get("database", "postgresql"))

    @property
    def all_answers(self) -> dict[str, Any]:
        return {"project_name": f"Variant {self.name}", **self.answers}


# Together these cover every answer: each database, each JWT library, default and custom
# role lists, with and without the example resource, and a non-default port.
VARIANTS = [
    Variant("postgresql", {"database": "postgresql"}),
    Variant("mysql", {"database": "mysql"}),
    Variant("sqlite", {"database": "sqlite"}),
    Variant(
        "postgresql-jose-custom-roles",
        {
            "database": "postgresql",
            "jwt_library": "python-jose",
            "roles": ["viewer", "editor", "admin"],
        },
    ),
    Variant(
        "mysql-jose-no-items-port-9090",
        {
            "database": "mysql",
            "jwt_library": "python-jose",
            "example_resource": False,
            "port": 9090,
        },
    ),
    Variant(
        "sqlite-jose-no-items-four-roles",
        {
            "database": "sqlite",
            "jwt_library": "python-jose",
            "example_resource": False,
            "roles": ["reader", "writer", "moderator", "owner"],
        },
    ),
]


def run(
    command: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    *,
    timing: tuple[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output, so the report shows why."""
    started = time.perf_counter()
    result = subprocess.run(
        shlex.split(command),
        cwd=cwd,
        env={**project_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if timing:
        TIMINGS[timing[0]][timing[1]] = time.perf_counter() - started
    if result.returncode != 0:
        raise AssertionError(
            f"`{command}` in {cwd} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-20000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def project_env() -> dict[str, str]:
    """The environment for commands in a rendered project: its own venv, never ours."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.setdefault("UV_PYTHON", sys.executable)
    return env


class DatabaseServer:
    """Creates and drops databases on the PostgreSQL or MySQL server under test."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.base = POSTGRES_URL if kind == "postgresql" else MYSQL_URL
        parts = urlsplit(self.base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (5432 if kind == "postgresql" else 3306)
        self.user = parts.username or ("postgres" if kind == "postgresql" else "root")
        self.password = parts.password or ""

    def _execute(self, sql: str) -> None:
        if self.kind == "postgresql":
            command = ["psql", "-h", self.host, "-p", str(self.port), "-U", self.user]
            command += ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql]
            env = {**os.environ, "PGPASSWORD": self.password}
        else:
            command = ["mysql", "-h", self.host, "-P", str(self.port), "-u", self.user, "-e", sql]
            env = {**os.environ, "MYSQL_PWD": self.password}
        subprocess.run(command, env=env, check=True, capture_output=True, text=True)

    def create(self, name: str) -> str:
        if self.kind == "postgresql":
            self._execute(f'CREATE DATABASE "{name}"')
        else:
            self._execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        return f"{self.base}/{name}"

    def drop(self, name: str) -> None:
        if self.kind == "postgresql":
            self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            self._execute(f"DROP DATABASE IF EXISTS `{name}`")


@dataclass
class Project:
    """A rendered and installed variant, with databases of its own."""

    variant: Variant
    path: Path
    test_database_url: str
    database_url: str


def render(destination: Path, **answers: Any) -> Path:
    """Render the template's working tree (HEAD plus uncommitted edits) with these answers."""
    import copier  # imported here: most helpers above do not need Copier

    copier.run_copy(
        src_path=str(REPO_ROOT),
        dst_path=destination,
        data={"project_name": "Demo Service", **answers},
        defaults=True,
        unsafe=True,
        vcs_ref="HEAD",
        quiet=True,
    )
    return destination


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(path: Path, env: Mapping[str, str], log_path: Path) -> Iterator[str]:
    """The project at `path` served by uvicorn on a free port, with options every release
    of the template knows; yields the base URL once `/health/ready` answers, and fails with
    the server's log when it does not come up."""
    port = free_port()
    command = ["uv", "run", "uvicorn", "app.main:app", "--port", str(port)]
    command += ["--no-access-log", "--no-proxy-headers"]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=path, env={**project_env(), **env}, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health/ready", timeout=10):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"service did not start:\n{log_path.read_text()}"
                    ) from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def served_by(self) -> str:
        return self.headers.get("x-served-by", "")


def call(
    port: int,
    method: str,
    path: str,
    *,
    json_body: object = None,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request to the service on `port`, on a connection of its own (so a balancer in
    front balances each one); JSON bodies come back decoded."""
    sent = dict(headers or {})
    body: bytes | None = None
    if json_body is not None:
        body, sent["Content-Type"] = json.dumps(json_body).encode(), "application/json"
    elif form is not None:
        body = urlencode(form).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        raw = response.read()
        received = {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()
    parsed = json.loads(raw) if raw and "json" in received.get("content-type", "") else raw
    return Reply(response.status, received, parsed)


def bearer(token: str, address: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if address:
        headers["X-Forwarded-For"] = address
    return headers
