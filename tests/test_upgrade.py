"""A project rendered from the first release, full of data, updates to this working tree.

For each database: a clone of this repository with its recorded releases tagged
(releases.toml) and the working tree committed as one more tag; a project rendered from
0.1.0 with answers other than the defaults, migrated and filled through its own HTTP API
(an administrator, users with a changed role, items, a locked account); the team's usual
edits committed on top (a route module wired into the router, a model with its own
migration, a changed setting default, an edited README section, an extra dependency); then
`copier update --trust --defaults` as a team runs it. Nothing may conflict, every edit must
still be there, the old database must migrate and pass `alembic check`, every row must
still work, and the project's own suite, ruff and mypy must pass.
"""

import re
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import copier
import pytest
import yaml

from tests.support import (
    REPO_ROOT,
    TIMINGS,
    DatabaseServer,
    Reply,
    bearer,
    call,
    project_env,
    run,
    serve,
)
from tests.test_update import IDENTITY, assert_no_conflicts, commit_all, edit, git

FIRST_RELEASE = "0.1.0"
# Not the defaults, so that a default hard-coded anywhere cannot pass for the answer.
ANSWERS = {
    "project_name": "Ledger Service",
    "port": 8123,
    "roles": ["member", "editor", "owner"],
    "example_resource": True,
}
JWT_LIBRARY = {"postgresql": "python-jose", "mysql": "pyjwt", "sqlite": "python-jose"}
PASSWORD = "correct horse battery"
WRONG = "not the password at all"
# What both services run with: fast hashing, and a lockout long enough to outlive the test.
SERVICE_ENV = {"BCRYPT_ROUNDS": "4", "LOGIN_LOCKOUT_MINUTES": "60", "ENVIRONMENT": "local"}

# --- the team's edits ------------------------------------------------------------------------

REPORTS_ROUTES = '''"""Reports for the finance team."""

from fastapi import APIRouter

router = APIRouter(prefix="/reports", tags=["reports"])


@router.get("/summary")
async def summary() -> dict[str, list[str]]:
    """The reports available so far."""
    return {"reports": ["monthly"]}
'''
REPORTS_TEST = '''"""The team's own route, served with the template's app."""

from httpx import AsyncClient


async def test_reports_summary_lists_the_monthly_report(client: AsyncClient) -> None:
    response = await client.get("/api/v1/reports/summary")
    assert response.status_code == 200
    assert response.json() == {"reports": ["monthly"]}
'''
# The model of the 0.1.0 how-to (docs/how-to/add-a-resource.md), with its own migration.
NOTE_MODEL = '''"""Notes: short texts owned by a user."""

import uuid
from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from app.models.types import UTCDateTime, utcnow

TEXT_MAX_LENGTH = 5000


class Note(SQLModel, table=True):
    __tablename__ = "notes"
    __table_args__ = (Index("ix_notes_owner_id_created_at", "owner_id", "created_at"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE")
    text: str = Field(max_length=TEXT_MAX_LENGTH)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
'''
README_SECTION = (
    "## On call\n\n"
    "The finance team runs this service; page #ledger-oncall before touching production.\n\n"
)
DOWNGRADE_NOTES = (
    "def downgrade() -> None:\n"
    "    # Dropping the table drops its indexes; MySQL refuses to drop the foreign key's index"
    " alone.\n"
    '    op.drop_table("notes")\n'
)
BODY_LIMIT = "max_body_bytes: int = Field(default=5_242_880, ge=1024)"
EXTRA_DEPENDENCY = "tenacity>=9,<10"


@dataclass
class Filled:
    """What the 0.1.0 service was given, to find again after the update."""

    admin: str
    users: dict[str, str]  # email -> id
    items: dict[str, str]  # item id -> owner's email
    editor: str
    locked: str


# --- helpers ---------------------------------------------------------------------------------


def release_commits() -> dict[str, str]:
    text = (REPO_ROOT / "releases.toml").read_text(encoding="utf-8")
    return {entry["version"]: entry["commit"] for entry in tomllib.loads(text)["release"]}


def template_clone(root: Path) -> tuple[Path, str]:
    """A clone of this repository with every recorded release tagged, and the working
    tree (uncommitted edits included) committed and tagged as the newest release."""
    clone = root / "template"
    if REPO_ROOT.joinpath(".git", "shallow").exists():
        pytest.fail("a shallow clone lacks the release commits: run `git fetch --unshallow`")
    git(root, "clone", "--quiet", "--no-local", str(REPO_ROOT), str(clone))
    releases = release_commits()
    for version, commit in releases.items():
        git(clone, "tag", "--force", f"v{version}", commit)  # where tags travelled, the same
    listed = git(REPO_ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    for name in filter(None, listed.split("\0")):
        source, target = REPO_ROOT / name, clone / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif target.exists() and not source.exists():
            target.unlink()  # deleted in the working tree, not yet committed
    git(clone, "add", "--all")
    git(clone, "commit", "--quiet", "--allow-empty", "--no-verify", "-m", "working tree")
    newest = max(releases, key=lambda version: tuple(map(int, version.split("."))))
    tag = f"v{newest}.post1"
    git(clone, "tag", tag)
    return clone, tag


LOGIN = "/api/v1/auth/login"


def login(port: int, email: str, password: str = PASSWORD) -> Reply:
    return call(port, "POST", LOGIN, form={"username": email, "password": password})


def token_of(port: int, email: str) -> str:
    reply = login(port, email)
    assert reply.status == 200, (email, reply.status, reply.body)
    return str(reply.body["access_token"])


@contextmanager
def served(project: Path, env: dict[str, str]) -> Iterator[int]:
    """The project's service on a free port, that port; its log must hold no traceback."""
    log_path = project.parent / f"{project.name}-{secrets.token_hex(4)}.log"
    with serve(project, {**env, "METRICS_PORT": "0"}, log_path) as base:
        port = urlsplit(base).port
        assert port is not None, base
        yield port
    log = log_path.read_text()
    assert "Traceback" not in log, log[-5000:]


def fill(port: int, project: Path, env: dict[str, str]) -> Filled:
    """Data in the 0.1.0 service, through its own CLI and HTTP API."""
    admin = "owner@ledger.example"
    subprocess.run(
        ["uv", "run", "python", "-m", "app.cli", "create-admin", "--email", admin],
        cwd=project,
        env={**project_env(), **env, "FIRST_ADMIN_PASSWORD": PASSWORD},
        check=True,
        capture_output=True,
    )
    users = {}
    for name in ("alice", "bob", "carol"):
        email = f"{name}@ledger.example"
        reply = call(
            port,
            "POST",
            "/api/v1/auth/register",
            json_body={"email": email, "password": PASSWORD, "full_name": name.title()},
        )
        assert reply.status == 201, reply.body
        users[email] = str(reply.body["id"])
    items = {}
    for email, count in (("alice@ledger.example", 2), ("bob@ledger.example", 1)):
        token = token_of(port, email)
        for number in range(count):
            reply = call(
                port,
                "POST",
                "/api/v1/items",
                headers=bearer(token),
                json_body={"title": f"{email} item {number}", "description": "kept"},
            )
            assert reply.status == 201, reply.body
            items[str(reply.body["id"])] = email
    editor = "bob@ledger.example"
    reply = call(
        port,
        "PATCH",
        f"/api/v1/users/{users[editor]}",
        headers=bearer(token_of(port, admin)),
        json_body={"role": "editor"},
    )
    assert reply.status == 200 and reply.body["role"] == "editor", reply.body
    locked = "carol@ledger.example"
    for _ in range(5):
        assert login(port, locked, WRONG).status == 401
    assert login(port, locked).status == 429, "0.1.0 should lock the account after 5 failures"
    return Filled(admin, users, items, editor, locked)


def team_edits(project: Path, env: dict[str, str]) -> str:
    """The edits a team makes on 0.1.0, committed; the name of its migration."""
    routes = project / "app/api/routes/reports.py"
    routes.write_text(REPORTS_ROUTES, encoding="utf-8")
    (project / "tests/test_reports.py").write_text(REPORTS_TEST, encoding="utf-8")
    edit(
        project / "app/api/router.py",
        lambda text: (
            text.replace(
                "from app.api.routes import auth, items, users",
                "from app.api.routes import auth, items, reports, users",
            )
            + "api_router.include_router(reports.router)\n"
        ),
    )
    (project / "app/models/note.py").write_text(NOTE_MODEL, encoding="utf-8")
    edit(
        project / "app/models/__init__.py",
        lambda text: text.replace(
            "from app.models.item import Item\n",
            "from app.models.item import Item\nfrom app.models.note import Note\n",
        ).replace('"LoginThrottle", "User"]', '"LoginThrottle", "Note", "User"]'),
    )
    run("uv run alembic revision --autogenerate -m 'add notes'", project, env)
    [migration] = [path for path in (project / "alembic/versions").glob("*_add_notes.py")]
    # As the how-to says: MySQL refuses to drop the foreign key's index alone.
    edit(
        migration,
        lambda text: re.sub(
            r"def downgrade\(\) -> None:.*", DOWNGRADE_NOTES, text, flags=re.DOTALL
        ),
    )
    run("uv run alembic upgrade head", project, env)
    edit(
        project / "app/core/config.py",
        lambda text: text.replace(
            "max_body_bytes: int = Field(default=1_048_576, ge=1024)", BODY_LIMIT
        ),
    )
    edit(project / "README.md", lambda text: text.replace("\n## ", f"\n{README_SECTION}## ", 1))
    run(f"uv add --quiet '{EXTRA_DEPENDENCY}'", project)
    run("uv run ruff format .", project)
    run("uv run ruff check .", project)
    run("uv run mypy .", project)
    commit_all(project, "Reports, notes, a larger body limit, on-call notes, tenacity")
    return migration.name


# --- the test --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return template_clone(tmp_path_factory.mktemp("upgrade"))


@pytest.fixture
def databases(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """The project's database and its test database, created for this test."""
    database: str = request.param
    if database == "sqlite":
        yield "sqlite:///./app.db", "sqlite:///./test.db"
        return
    server = DatabaseServer(database)
    names = [f"upgrade_{secrets.token_hex(4)}", f"upgrade_{secrets.token_hex(4)}_test"]
    try:
        app_url, test_url = (server.create(name) for name in names)
        yield app_url, test_url
    finally:
        for name in names:
            server.drop(name)


@pytest.mark.parametrize(
    ("database", "databases"),
    [(database, database) for database in JWT_LIBRARY],
    indirect=["databases"],
    ids=list(JWT_LIBRARY),
)
def test_a_project_from_the_first_release_updates_with_its_data_and_edits(
    clone: tuple[Path, str],
    databases: tuple[str, str],
    database: str,
    tmp_path: Path,
) -> None:
    timing = f"upgrade-{database}"
    started = time.perf_counter()
    template, newest = clone
    app_url, test_url = databases
    env = {**SERVICE_ENV, "DATABASE_URL": app_url}
    project = tmp_path / "ledger-service"
    copier.run_copy(
        src_path=str(template),
        dst_path=project,
        data={**ANSWERS, "database": database, "jwt_library": JWT_LIBRARY[database]},
        defaults=True,
        unsafe=True,
        vcs_ref=f"v{FIRST_RELEASE}",
        quiet=True,
    )
    git(project, "init", "--quiet")
    commit_all(project, f"Ledger Service from the template's v{FIRST_RELEASE}")
    run("uv sync --quiet", project)
    run("uv run alembic upgrade head", project, env)
    with served(project, env) as port:
        filled = fill(port, project, env)
    migration = team_edits(project, env)
    TIMINGS[timing]["0.1.0"] = time.perf_counter() - started

    started = time.perf_counter()
    updated = subprocess.run(
        [sys.executable, "-m", "copier", "update", "--trust", "--defaults", "--vcs-ref", newest],
        cwd=project,
        env={**project_env(), **IDENTITY},
        capture_output=True,
        text=True,
        check=False,
    )
    TIMINGS[timing]["update"] = time.perf_counter() - started
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert_no_conflicts(project)
    # Both sides added dependencies and tables at the same places; the template's
    # revisions and the team's share a parent.
    printed = updated.stdout + updated.stderr
    for kept in (
        f"merge_registries: pyproject.toml: kept yours ({EXTRA_DEPENDENCY.split('>')[0]})",
        "merge_registries: app/models/__init__.py: kept yours (Note)",
        "merge_alembic_heads: Alembic had 2 heads",
    ):
        assert kept in printed, printed
    [merge] = (project / "alembic/versions").glob("*_merge_the_template_s_revisions.py")
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text(encoding="utf-8"))
    assert answers["_commit"] == newest
    assert answers["roles"] == ANSWERS["roles"] and answers["port"] == ANSWERS["port"]

    # The team's edits are all still there.
    assert (project / "app/api/routes/reports.py").read_text() == REPORTS_ROUTES
    assert (project / "tests/test_reports.py").read_text() == REPORTS_TEST
    router = (project / "app/api/router.py").read_text()
    assert "api_router.include_router(reports.router)" in router
    assert re.search(r"^from app\.api\.routes import .*\breports\b", router, re.M), router
    assert (project / "app/models/note.py").read_text() == NOTE_MODEL
    assert "from app.models.note import Note" in (project / "app/models/__init__.py").read_text()
    assert (project / "alembic/versions" / migration).is_file()
    assert BODY_LIMIT in (project / "app/core/config.py").read_text()
    assert README_SECTION in (project / "README.md").read_text()
    assert EXTRA_DEPENDENCY in (project / "pyproject.toml").read_text()
    # ... and the template's changes arrived.
    assert (project / "alembic/versions/0005_account_recovery.py").is_file()
    assert (project / "app/services/session.py").is_file()

    # The old database migrates, and the models and migrations agree.
    started = time.perf_counter()
    run("uv sync --quiet", project)
    heads = run("uv run alembic heads", project, env).stdout
    assert heads.split() == [merge.name.split("_")[1], "(head)"], heads
    run("uv run alembic upgrade head", project, env)
    checked = run("uv run alembic check", project, env)
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr

    # Every row is still there and still works.
    with served(project, env) as port:
        admin = token_of(port, filled.admin)
        listed = call(port, "GET", "/api/v1/users?limit=100", headers=bearer(admin))
        assert listed.status == 200, listed.body
        roles = {user["email"]: user["role"] for user in listed.body["items"]}
        assert roles == {
            filled.admin: "owner",
            "alice@ledger.example": "member",
            filled.editor: "editor",
            filled.locked: "member",
        }
        for email in ("alice@ledger.example", filled.editor):
            page = call(port, "GET", "/api/v1/items", headers=bearer(token_of(port, email)))
            assert page.status == 200, page.body
            owned = {item["id"] for item in page.body["items"]}
            assert owned == {item for item, owner in filled.items.items() if owner == email}
            assert all(item["owner_id"] == filled.users[email] for item in page.body["items"])
        refused = login(port, filled.locked)
        assert refused.status == 429, f"the upgrade lifted the lockout: {refused}"
        assert call(port, "GET", "/api/v1/reports/summary").status == 200
    TIMINGS[timing]["after"] = time.perf_counter() - started

    # The updated project's own checks.
    started = time.perf_counter()
    run("uv run ruff check .", project)
    run("uv run ruff format --check .", project)
    run("uv run mypy .", project)
    suite = run("uv run pytest -q -p no:cacheprovider", project, {"TEST_DATABASE_URL": test_url})
    assert " passed" in suite.stdout and " failed" not in suite.stdout, suite.stdout[-3000:]
    TIMINGS[timing]["checks"] = time.perf_counter() - started
