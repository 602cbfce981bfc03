"""Every variant renders clean, passes its linters, migrates, and passes its own tests."""

import re
from pathlib import Path

import pytest

from tests.support import Project, run

# Files that belong to tools rather than to the rendered template.
SKIP_DIRS = {
    ".venv",
    ".git",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "__pycache__",
}
SKIP_FILES = {"uv.lock", ".copier-answers.yml"}
# GitHub expressions (${{ ... }}) are not Jinja; Mako's ${...} neither.
LEFTOVER = re.compile(r"(?<!\$)\{\{|\{%|%\}|\{#|#\}")

OTHER_DATABASES = {
    "postgresql": ["mysql", "mariadb", "sqlite", "aiomysql", "aiosqlite"],
    "mysql": ["postgres", "asyncpg", "psycopg", "sqlite", "aiosqlite"],
    "sqlite": ["postgres", "asyncpg", "psycopg", "mysql", "mariadb", "aiomysql"],
}
OTHER_JWT_LIBRARY = {"pyjwt": ["jose"], "python-jose": ["pyjwt"]}


def rendered_files(root: Path) -> list[Path]:
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and not SKIP_DIRS.intersection(path.relative_to(root).parts)
        and path.name not in SKIP_FILES
        and not path.name.endswith((".db", ".db-wal", ".db-shm"))
    ]


def test_no_template_syntax_is_left(project: Project) -> None:
    offenders = []
    for path in rendered_files(project.path):
        relative = path.relative_to(project.path)
        if LEFTOVER.search(str(relative)):
            offenders.append(f"{relative}: file name")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if LEFTOVER.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_nothing_mentions_the_databases_or_libraries_not_chosen(project: Project) -> None:
    answers = project.variant.all_answers
    banned = [
        *OTHER_DATABASES[project.variant.database],
        *OTHER_JWT_LIBRARY[answers.get("jwt_library", "pyjwt")],
    ]
    offenders = []
    for path in rendered_files(project.path):
        relative = path.relative_to(project.path)
        text = f"{relative}\n{path.read_text(encoding='utf-8')}".lower()
        offenders += [f"{relative}: {word}" for word in banned if word in text]
    assert not offenders, "\n".join(offenders)


def test_example_resource_only_when_asked(project: Project) -> None:
    wanted = project.variant.all_answers.get("example_resource", True)
    item_files = [p for p in rendered_files(project.path) if "item" in p.name]
    assert bool(item_files) == wanted, item_files
    router = (project.path / "app/api/router.py").read_text()
    assert ("items.router" in router) == wanted


def test_roles_are_rendered_in_order(project: Project) -> None:
    roles = project.variant.all_answers.get("roles", ["user", "admin"])
    result = run(
        "uv run python -c 'from app.core.roles import ROLE_ORDER, DEFAULT_ROLE, ADMIN_ROLE;"
        "print(*ROLE_ORDER, DEFAULT_ROLE, ADMIN_ROLE)'",
        project.path,
    )
    assert result.stdout.split() == [*roles, roles[0], roles[-1]]


def test_port_answer_is_used(project: Project) -> None:
    port = str(project.variant.all_answers.get("port", 8003))
    readme = (project.path / "README.md").read_text()
    assert f"--port {port}" in readme
    assert f"EXPOSE {port}" in (project.path / "Dockerfile").read_text()


def test_ruff_and_mypy_pass(project: Project) -> None:
    name = project.variant.name
    run("uv run ruff check .", project.path, timing=(name, "ruff"))
    run("uv run ruff format --check .", project.path)
    run("uv run mypy .", project.path, timing=(name, "mypy"))


def test_migrations_apply_and_match_the_models(project: Project) -> None:
    env = {"DATABASE_URL": project.database_url, "ENVIRONMENT": "test"}
    run("uv run alembic upgrade head", project.path, env, timing=(project.variant.name, "alembic"))
    checked = run("uv run alembic check", project.path, env)
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr


def test_project_test_suite_passes(project: Project) -> None:
    result = run(
        "uv run pytest -q -p no:cacheprovider --tb=short",
        project.path,
        {"TEST_DATABASE_URL": project.test_database_url},
        timing=(project.variant.name, "pytest"),
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


@pytest.mark.parametrize("script", ["scripts/check"])
def test_check_script_is_executable(project: Project, script: str) -> None:
    path = project.path / script
    assert path.exists(), f"{script} missing"
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
