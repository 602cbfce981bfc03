"""`copier update` keeps the team's work and brings the template's changes.

Each test builds a template repository in a temporary folder from this one (copier.yml,
template/, migrations/), tags versions of it, renders a SQLite project from the older tag,
commits the team's edits and updates to the newer tag through Copier's Python API.
"""

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import copier
import pytest
import yaml

from tests.support import REPO_ROOT, TIMINGS, run

SQLITE_ANSWERS = {"project_name": "Update Demo", "database": "sqlite"}
# The tests' own database files: sqlite URLs relative to the project's root.
APP_DATABASE = {"DATABASE_URL": "sqlite:///./app.db", "ENVIRONMENT": "test"}
TEST_DATABASE = {"TEST_DATABASE_URL": "sqlite:///./test.db"}
COPY_IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.py[co]", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "*.db"
)
SKIP_DIRS = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"}
IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "template-tests@example.com",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "template-tests@example.com",
}

# What template v1.1.0 changes, in a file the team also edits and in files it does not.
NEW_README_SECTION = (
    "\n## Keeping up with the template\n\n"
    "`copier update --trust` on a clean tree pulls in the template's newer releases.\n"
)
NEW_USER_MODEL_DOCSTRING = '"""Users (roles are plain strings) and their login throttling state."""'
NEW_EDITORCONFIG = "root = true\n\n[*]\nend_of_line = lf\ninsert_final_newline = true\n"

# What the team changes in its project.
REPORTS_ROUTES = '''"""Reports for the operations team."""

from fastapi import APIRouter

router = APIRouter(prefix="/reports", tags=["reports"])


@router.get("/summary")
async def summary() -> dict[str, list[str]]:
    """The reports available so far."""
    return {"reports": []}
'''
REPORTS_TEST = '''"""The team's own route, served with the template's app."""

from httpx import AsyncClient


async def test_reports_summary_lists_no_reports_yet(client: AsyncClient) -> None:
    response = await client.get("/api/v1/reports/summary")
    assert response.status_code == 200
    assert response.json() == {"reports": []}
'''
NICKNAME_FIELD = "    nickname: str | None = Field(default=None, max_length=50)"
README_TITLE = "# Update Demo, run by the reports team"


# --- helpers ---------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        env={**os.environ, **IDENTITY},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"git {' '.join(args)} in {cwd}:\n{result.stderr}"
    return result.stdout


def commit_all(cwd: Path, message: str) -> None:
    git(cwd, "add", "--all")
    git(cwd, "commit", "--quiet", "--no-verify", "-m", message)


def build_template_repo(root: Path, name: str) -> Path:
    """A git repository holding this template as it is now, not yet committed."""
    repo = root / name
    repo.mkdir()
    shutil.copy2(REPO_ROOT / "copier.yml", repo / "copier.yml")
    for folder in ("template", "migrations"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=COPY_IGNORE, symlinks=True)
    git(repo, "init", "--quiet")
    return repo


def tag_release(repo: Path, version: str) -> None:
    commit_all(repo, f"Release {version}")
    git(repo, "tag", version)


def edit(path: Path, change: Callable[[str], str]) -> None:
    """Apply `change` to a file's text; fail if it changed nothing (the anchor moved)."""
    before = path.read_text(encoding="utf-8")
    after = change(before)
    assert after != before, f"{path}: the edit found nothing to change"
    path.write_text(after, encoding="utf-8")


def render(repo: Path, destination: Path, **data: object) -> Path:
    copier.run_copy(
        src_path=str(repo),  # absolute: a relative _src_path breaks later updates
        dst_path=destination,
        data={**SQLITE_ANSWERS, **data},
        defaults=True,
        unsafe=True,
        vcs_ref="v1.0.0",
        quiet=True,
    )
    git(destination, "init", "--quiet")
    commit_all(destination, "Project generated from template v1.0.0")
    return destination


def update(project: Path, timing: str | None = None, **data: object) -> None:
    started = time.perf_counter()
    copier.run_update(
        dst_path=project,
        data=data,
        defaults=True,
        unsafe=True,  # the migrations and the .env task only run when trusted
        overwrite=True,
        vcs_ref="v1.1.0",
        quiet=True,
    )
    if timing:
        TIMINGS[timing]["update"] = time.perf_counter() - started


def answers(project: Path) -> dict[str, object]:
    loaded = yaml.safe_load((project / ".copier-answers.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def project_files(project: Path) -> list[Path]:
    return [
        path
        for path in sorted(project.rglob("*"))
        if path.is_file() and not SKIP_DIRS.intersection(path.relative_to(project).parts)
    ]


def assert_no_conflicts(project: Path) -> None:
    """Copier exits 0 even when it leaves conflicts: look for every trace of one."""
    unmerged = git(project, "diff", "--diff-filter=U", "--name-only").split()
    assert not unmerged, f"unmerged after the update: {unmerged}"
    rejects = [str(p.relative_to(project)) for p in project_files(project) if p.suffix == ".rej"]
    assert not rejects, f"rejected hunks: {rejects}"
    marked = [
        str(path.relative_to(project))
        for path in project_files(project)
        if re.search(rb"^(<{7}|>{7})( |$)", path.read_bytes(), re.MULTILINE)
    ]
    assert not marked, f"conflict markers in {marked}"


def assert_project_suite_passes(project: Path, timing: str) -> set[str]:
    """Run the project's own tests; the names of those that passed."""
    report = project.parent / f"{project.name}-pytest.xml"
    result = run(
        f"uv run pytest -q -p no:cacheprovider --junitxml {shlex.quote(str(report))}",
        project,
        TEST_DATABASE,
        timing=(timing, "pytest"),
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    # The report comes from the project's own test run, just above.
    cases = ElementTree.parse(report).getroot().iter("testcase")  # noqa: S314
    outcomes = ("failure", "error", "skipped")
    return {
        case.get("name", "")
        for case in cases
        if not any(case.find(outcome) is not None for outcome in outcomes)
    }


def assert_migrations_match_the_models(project: Path) -> None:
    run("uv run alembic upgrade head", project, APP_DATABASE)
    checked = run("uv run alembic check", project, APP_DATABASE)
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr


# --- template v1.0.0 -> v1.1.0 with a small change -------------------------------------------


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This template tagged v1.0.0, then v1.1.0 with a README section, a reworded
    docstring in a module the team edits, and a new file."""
    repo = build_template_repo(tmp_path_factory.mktemp("fixture"), "template-repo")
    tag_release(repo, "v1.0.0")
    edit(repo / "template/README.md.jinja", lambda text: text + NEW_README_SECTION)
    edit(
        repo / "template/app/models/user.py",
        lambda text: re.sub(r'\A""".*?"""', NEW_USER_MODEL_DOCSTRING, text),
    )
    (repo / "template/.editorconfig").write_text(NEW_EDITORCONFIG, encoding="utf-8")
    tag_release(repo, "v1.1.0")
    return repo


def test_update_keeps_the_teams_code_migration_readme_and_env_and_brings_the_templates_changes(
    template_repo: Path, tmp_path: Path
) -> None:
    project = render(template_repo, tmp_path / "update-demo")
    run("uv sync --quiet", project, timing=("update-keeps-work", "install"))
    run("uv run alembic upgrade head", project, APP_DATABASE)

    # The team's work: a route module wired into the API with its own test, a new model
    # field with its autogenerated revision, a README line and a setting in .env.
    (project / "app/api/routes/reports.py").write_text(REPORTS_ROUTES, encoding="utf-8")
    (project / "tests/test_reports.py").write_text(REPORTS_TEST, encoding="utf-8")
    edit(
        project / "app/api/router.py",
        lambda text: (
            re.sub(
                r"^(from app\.api\.routes import .*)$",
                r"\1\nfrom app.api.routes import reports",
                text,
                count=1,
                flags=re.MULTILINE,
            )
            + "api_router.include_router(reports.router)\n"
        ),
    )
    edit(
        project / "app/models/user.py",
        lambda text: re.sub(
            r"^(    full_name: .*)$", rf"\1\n{NICKNAME_FIELD}", text, count=1, flags=re.MULTILINE
        ),
    )
    versions = project / "alembic/versions"
    template_revisions = set(versions.glob("*.py"))
    run('uv run alembic revision --autogenerate -m "add nickname"', project, APP_DATABASE)
    [revision] = set(versions.glob("*.py")) - template_revisions
    revision_text = revision.read_text(encoding="utf-8")
    assert "nickname" in revision_text, revision_text
    run("uv run alembic upgrade head", project, APP_DATABASE)
    edit(project / "README.md", lambda text: re.sub(r"\A# .*", README_TITLE, text))
    edit(project / ".env", lambda text: text.replace("LOG_LEVEL=INFO", "LOG_LEVEL=WARNING"))
    env_before = (project / ".env").read_bytes()
    commit_all(project, "Reports, nicknames and our README")
    assert not git(project, "status", "--porcelain"), "the team's work must be committed"
    router_before = (project / "app/api/router.py").read_text(encoding="utf-8")
    prestart_before = (project / "scripts/prestart").read_bytes()

    update(project, "update-keeps-work")

    assert answers(project)["_commit"] == "v1.1.0"
    assert answers(project)["_src_path"] == str(template_repo)
    assert_no_conflicts(project)
    # Everything the team did is still there.
    assert (project / "app/api/routes/reports.py").read_text(encoding="utf-8") == REPORTS_ROUTES
    assert (project / "tests/test_reports.py").read_text(encoding="utf-8") == REPORTS_TEST
    assert (project / "app/api/router.py").read_text(encoding="utf-8") == router_before
    user_model = (project / "app/models/user.py").read_text(encoding="utf-8")
    assert NICKNAME_FIELD in user_model.splitlines()
    assert revision.read_text(encoding="utf-8") == revision_text
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert readme.splitlines()[0] == README_TITLE
    assert (project / ".env").read_bytes() == env_before, ".env (and its secret) was rewritten"
    # And the template's change arrived, in the file the team edited too.
    assert readme.endswith(NEW_README_SECTION)
    assert user_model.startswith(NEW_USER_MODEL_DOCSTRING)
    assert (project / ".editorconfig").read_text(encoding="utf-8") == NEW_EDITORCONFIG
    # The prestart migration runs on every update and leaves this project alone.
    assert (project / "scripts/prestart").read_bytes() == prestart_before
    assert not (project / "scripts/prestart.sh").exists()

    run("uv sync --quiet", project)
    passed = assert_project_suite_passes(project, "update-keeps-work")
    assert "test_reports_summary_lists_no_reports_yet" in passed, "the team's test did not run"
    assert_migrations_match_the_models(project)
    heads = run("uv run alembic heads", project, APP_DATABASE).stdout.split()
    revision_id = re.search(r"^revision: str = [\"'](\w+)[\"']", revision_text, re.MULTILINE)
    assert revision_id, revision_text
    assert heads == [revision_id[1], "(head)"], "the team's revision must be the only head"


def test_update_with_a_new_roles_answer_adds_the_role_without_a_migration(
    template_repo: Path, tmp_path: Path
) -> None:
    project = render(template_repo, tmp_path / "roles-demo")
    assert answers(project)["roles"] == ["user", "admin"]
    assert "editor" not in (project / "README.md").read_text(encoding="utf-8")
    run("uv sync --quiet", project, timing=("update-new-roles", "install"))
    run("uv run alembic upgrade head", project, APP_DATABASE)
    commit_all(project, "Lock the dependencies")
    revisions_before = sorted(p.name for p in (project / "alembic/versions").glob("*.py"))

    update(project, "update-new-roles", roles=["user", "editor", "admin"])

    assert answers(project)["roles"] == ["user", "editor", "admin"]
    assert answers(project)["_commit"] == "v1.1.0"
    assert_no_conflicts(project)
    roles = (project / "app/core/roles.py").read_text(encoding="utf-8")
    members = re.findall(r'^    ([A-Z_]+) = "([a-z_]+)"$', roles, re.MULTILINE)
    assert members == [("USER", "user"), ("EDITOR", "editor"), ("ADMIN", "admin")]
    assert "DEFAULT_ROLE = Role.USER" in roles
    assert "ADMIN_ROLE = Role.ADMIN" in roles
    assert "editor" in (project / "README.md").read_text(encoding="utf-8")
    # Roles are stored as strings: the database migrated before the update still matches.
    assert sorted(p.name for p in (project / "alembic/versions").glob("*.py")) == revisions_before
    checked = run("uv run alembic check", project, APP_DATABASE)
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr
    assert_project_suite_passes(project, "update-new-roles")


def test_update_leaves_a_prestart_sh_the_template_never_shipped_alone(
    template_repo: Path, tmp_path: Path
) -> None:
    project = render(template_repo, tmp_path / "own-script")
    own_script = "#!/bin/sh\n# Our own helper, not the template's.\necho warming caches\n"
    (project / "scripts/prestart.sh").write_text(own_script, encoding="utf-8")
    commit_all(project, "Our own prestart.sh")
    prestart_before = (project / "scripts/prestart").read_bytes()

    update(project)

    assert_no_conflicts(project)
    assert (project / "scripts/prestart.sh").read_text(encoding="utf-8") == own_script
    assert (project / "scripts/prestart").read_bytes() == prestart_before


# --- template v1.0.0 with scripts/prestart.sh -> v1.1.0 with scripts/prestart -----------------

OLD_PRESTART_COMMENT = "# Migrates the database and seeds the first admin before the API starts."
TEAM_PRESTART_LINE = 'echo "prestart finished on $(hostname)"'


@pytest.fixture(scope="module")
def renamed_script_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1.0.0 ships scripts/prestart.sh with an older first comment; v1.1.0 is this template,
    which ships scripts/prestart and, in copier.yml, the migration that carries edits over."""
    repo = build_template_repo(tmp_path_factory.mktemp("fixture"), "renamed-script-repo")
    scripts = repo / "template/scripts"
    new_script = (scripts / "prestart").read_text(encoding="utf-8")
    lines = new_script.splitlines(keepends=True)
    assert lines[1].startswith("# "), "scripts/prestart should open with a comment"
    (scripts / "prestart").rename(scripts / "prestart.sh")
    (scripts / "prestart.sh").write_text(
        "".join([lines[0], OLD_PRESTART_COMMENT + "\n", *lines[2:]]), encoding="utf-8"
    )
    for path in (repo / "template").rglob("*"):
        if path.is_file() and b"scripts/prestart" in path.read_bytes():
            edit(
                path,
                lambda text: re.sub(r"scripts/prestart\b(?!\.sh)", "scripts/prestart.sh", text),
            )
    tag_release(repo, "v1.0.0")

    shutil.rmtree(repo / "template")
    shutil.copytree(REPO_ROOT / "template", repo / "template", ignore=COPY_IGNORE, symlinks=True)
    tag_release(repo, "v1.1.0")
    return repo


def test_real_copier_yml_runs_the_prestart_migration_after_updates() -> None:
    config = yaml.safe_load((REPO_ROOT / "copier.yml").read_text(encoding="utf-8"))
    commands = [
        str(m["command"]) for m in config["_migrations"] if "_stage == 'after'" in m["when"]
    ]
    assert any("migrations/carry_over_prestart.py" in command for command in commands), commands
    assert (REPO_ROOT / "migrations/carry_over_prestart.py").is_file()


def test_update_moves_the_teams_edited_prestart_sh_to_scripts_prestart(
    renamed_script_repo: Path, tmp_path: Path
) -> None:
    project = render(renamed_script_repo, tmp_path / "renamed")
    old_script = project / "scripts/prestart.sh"
    assert "scripts/prestart.sh" in (project / "Dockerfile").read_text(encoding="utf-8")
    edit(old_script, lambda text: text + TEAM_PRESTART_LINE + "\n")
    commit_all(project, "Log where prestart ran")

    update(project)

    assert answers(project)["_commit"] == "v1.1.0"
    assert_no_conflicts(project)
    assert not old_script.exists()
    new_script = project / "scripts/prestart"
    template_script = (renamed_script_repo / "template/scripts/prestart").read_text()
    # The template's reworded comment and the team's line, merged at the new name.
    assert new_script.read_text(encoding="utf-8") == template_script + TEAM_PRESTART_LINE + "\n"
    assert os.access(new_script, os.X_OK), "scripts/prestart lost its executable bit"
    dockerfile = (project / "Dockerfile").read_text(encoding="utf-8")
    assert "scripts/prestart" in dockerfile and "prestart.sh" not in dockerfile


def test_update_replaces_an_unedited_prestart_sh_with_the_templates_scripts_prestart(
    renamed_script_repo: Path, tmp_path: Path
) -> None:
    project = render(renamed_script_repo, tmp_path / "unedited")

    update(project)

    assert_no_conflicts(project)
    assert not (project / "scripts/prestart.sh").exists()
    template_script = (renamed_script_repo / "template/scripts/prestart").read_bytes()
    assert (project / "scripts/prestart").read_bytes() == template_script


def test_prestart_sh_edit_that_clashes_with_the_template_is_left_as_a_recorded_conflict(
    renamed_script_repo: Path, tmp_path: Path
) -> None:
    project = render(renamed_script_repo, tmp_path / "clash")
    team_comment = "# Our own wording of what this script does."
    edit(
        project / "scripts/prestart.sh",
        lambda text: text.replace(OLD_PRESTART_COMMENT, team_comment),
    )
    commit_all(project, "Reword the prestart comment")

    update(project)

    assert git(project, "diff", "--diff-filter=U", "--name-only").split() == ["scripts/prestart"]
    merged = (project / "scripts/prestart").read_text(encoding="utf-8")
    template_comment = (
        (renamed_script_repo / "template/scripts/prestart").read_text().splitlines()[1]
    )
    conflict = [
        "<<<<<<< before updating",
        team_comment,
        "=======",
        template_comment,
        ">>>>>>> after updating",
    ]
    assert "\n".join(conflict) in merged, merged
    assert not (project / "scripts/prestart.sh").exists()
