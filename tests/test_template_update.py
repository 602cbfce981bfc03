"""Update pull requests, run for real outside GitHub.

A template repository is built from this one and tagged v1.0.0, then v1.1.0 with a new README
title. Projects are rendered from it with the Copier CLI (which prints the template's messages
after copy and update) and `scripts/template-update`, the logic of the rendered workflow
template-update.yml, runs in them as the workflow runs it: with no git identity configured.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_update import build_template_repo, commit_all, edit, git, tag_release

TEMPLATE_TITLE = "# {{ project_name }}, kept up to date"
TEAM_TITLE = "# Update Demo, run by the reports team"
ANSWERS = ["--data", "project_name=Update Demo", "--data", "database=sqlite"]


def copier_command() -> str:
    path = shutil.which("copier", path=str(Path(sys.executable).parent)) or shutil.which("copier")
    if path is None:
        pytest.fail("`copier` is not installed; run `uv sync` (it comes with the dev group)")
    return path


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = build_template_repo(tmp_path_factory.mktemp("releases"), "template-repo")
    tag_release(repo, "v1.0.0")
    edit(repo / "template/README.md.jinja", lambda text: re.sub(r"\A# .*", TEMPLATE_TITLE, text))
    tag_release(repo, "v1.1.0")
    return repo


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """Like a GitHub runner's: no git identity, no global git config; Copier from our venv."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GIT_", "VIRTUAL_ENV", "GITHUB_"))
    }
    return {**env, "HOME": str(home), "COPIER": copier_command()}


def copier_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [copier_command(), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def copy(releases: Path, destination: Path, version: str, *data: str) -> str:
    """Render `version` into a new git repository with the CLI; Copier's stderr."""
    result = copier_cli(
        "copy", "--trust", "--defaults", "--vcs-ref", version, *ANSWERS, *data,
        str(releases), str(destination), cwd=destination.parent,
    )  # fmt: skip
    git(destination, "init", "--quiet")
    commit_all(destination, f"Generated from template {version}")
    return result.stderr


def template_update(
    project: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run scripts/template-update; its result and what it wrote to GITHUB_OUTPUT."""
    output = project.parent / f"{project.name}-github-output"
    output.write_text("")
    result = subprocess.run(
        [str(project / "scripts" / "template-update"), *args],
        cwd=project,
        env={**env, "GITHUB_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return result, outputs


def recorded_commit(project: Path) -> object:
    return yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"]


def test_template_update_applies_the_release_and_reports_the_conflict(
    releases: Path, tmp_path: Path, bare_env: dict[str, str]
) -> None:
    project = tmp_path / "update-demo"
    copy(releases, project, "v1.0.0")
    edit(project / "README.md", lambda text: re.sub(r"\A# .*", TEAM_TITLE, text))
    commit_all(project, "Our README title")

    result, outputs = template_update(project, bare_env, "update")

    assert outputs == {
        "updated": "true",
        "old-version": "v1.0.0",
        "new-version": "v1.1.0",
        "conflicts": "1",
    }
    assert "Updated from template v1.0.0 to v1.1.0." in result.stdout
    assert "Files with conflicts to resolve:\n  README.md\n" in result.stdout
    assert recorded_commit(project) == "v1.1.0"
    conflict = "\n".join(
        [
            "<<<<<<< before updating",
            TEAM_TITLE,
            "=======",
            "# Update Demo, kept up to date",
            ">>>>>>> after updating",
        ]
    )
    assert (project / "README.md").read_text().startswith(conflict)
    # Copier's message after the update, rendered with the new release.
    assert "Updated to template v1.1.0." in result.stderr

    log = tmp_path / "checks.log"
    log.write_text("ruff check: ok\nFAILED tests/test_reports.py::test_summary - assert 500\n")
    failed, _ = template_update(project, bare_env, "report", "failure", str(log))
    body = failed.stdout
    assert body.startswith("## Template update: v1.0.0 to v1.1.0\n")
    assert "**v1.0.0** to **v1.1.0**" in body
    assert f"(`{releases}`)" in body
    conflicts = body.split("### Conflicts\n", 1)[1].split("### Checks\n", 1)[0]
    assert re.findall(r"^- `(.+)`$", conflicts, re.MULTILINE) == ["README.md"]
    checks = body.split("### Checks\n", 1)[1]
    assert "on the updated project: **failed**." in checks
    assert "FAILED tests/test_reports.py::test_summary - assert 500" in checks

    passed, _ = template_update(project, bare_env, "report", "success", str(log))
    assert "on the updated project: **passed**." in passed.stdout
    skipped, _ = template_update(project, bare_env, "report", "skipped")
    assert "on the updated project: **not run**." in skipped.stdout
    assert "<details>" not in skipped.stdout


def test_template_update_without_conflicts_lists_none(
    releases: Path, tmp_path: Path, bare_env: dict[str, str]
) -> None:
    project = tmp_path / "clean-update"
    copy(releases, project, "v1.0.0")

    _, outputs = template_update(project, bare_env, "update")
    body, _ = template_update(project, bare_env, "report", "success")

    assert outputs["updated"] == "true"
    assert outputs["conflicts"] == "0"
    assert (project / "README.md").read_text().startswith("# Update Demo, kept up to date\n")
    assert "None: every change of the template merged with the project's." in body.stdout


def test_template_update_on_an_up_to_date_project_changes_nothing(
    releases: Path, tmp_path: Path, bare_env: dict[str, str]
) -> None:
    project = tmp_path / "current"
    copy(releases, project, "v1.1.0")
    head = git(project, "rev-parse", "HEAD")

    result, outputs = template_update(project, bare_env, "update")

    assert outputs == {"updated": "false", "old-version": "v1.1.0"}
    assert "The project is up to date with the template (v1.1.0)." in result.stdout
    assert git(project, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(project, "rev-parse", "HEAD") == head
    assert recorded_commit(project) == "v1.1.0"


def test_template_update_leaves_a_release_already_proposed_on_the_branch_alone(
    releases: Path, tmp_path: Path, bare_env: dict[str, str]
) -> None:
    """A second run must not rebuild the branch the team resolved conflicts on."""
    project = tmp_path / "first-run"
    copy(releases, project, "v1.0.0")
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "--quiet", "--bare", str(origin))
    git(project, "remote", "add", "origin", str(origin))
    git(project, "push", "--quiet", "origin", "HEAD:main")
    env = {**bare_env, "TEMPLATE_UPDATE_BRANCH": "template-update"}
    _, outputs = template_update(project, env, "update")
    assert outputs["updated"] == "true"
    # What create-pull-request does with the result.
    git(project, "switch", "--quiet", "-c", "template-update")
    commit_all(project, "Update from template v1.1.0")
    git(project, "push", "--quiet", "origin", "template-update")

    second = tmp_path / "second-run"
    git(tmp_path, "clone", "--quiet", "--branch", "main", str(origin), str(second))
    result, outputs = template_update(second, env, "update")

    assert outputs == {"updated": "false", "old-version": "v1.0.0"}
    assert "Template v1.1.0 is already proposed on the branch template-update" in result.stdout
    assert recorded_commit(second) == "v1.0.0"
    assert git(second, "status", "--porcelain", "--untracked-files=all") == ""


def test_template_update_refuses_a_dirty_tree(
    releases: Path, tmp_path: Path, bare_env: dict[str, str]
) -> None:
    project = tmp_path / "dirty"
    copy(releases, project, "v1.0.0")
    (project / "notes.txt").write_text("not committed\n")

    result = subprocess.run(
        [str(project / "scripts" / "template-update"), "update"],
        cwd=project,
        env=bare_env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 1
    assert "copier update needs a clean tree" in result.stderr
    assert recorded_commit(project) == "v1.0.0"


def test_template_update_rejects_an_unknown_command(tmp_path: Path) -> None:
    project = tmp_path / "usage"
    project.mkdir()
    shutil.copytree(
        Path(__file__).resolve().parent.parent / "template" / "scripts", project / "scripts"
    )
    result = subprocess.run(
        [str(project / "scripts" / "template-update"), "upgrade"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: scripts/template-update update | report")


# --- Copier's messages -------------------------------------------------------------------------


@pytest.mark.parametrize(("database", "starts_a_server"), [("sqlite", False), ("postgresql", True)])
def test_copier_prints_the_next_steps_after_copy(
    releases: Path, tmp_path: Path, database: str, starts_a_server: bool
) -> None:
    project = tmp_path / "next-steps"
    answers = ["--data", f"database={database}", "--data", "port=9123"]
    message = copy(releases, project, "v1.0.0", *answers)

    steps = message.split("Update Demo is ready. Next steps:", 1)[1]
    commands = [line.strip() for line in steps.splitlines() if line.startswith("  ")]
    assert commands[0] == f"cd {project}"
    order = ["git init", "uv sync", "uv run alembic upgrade head", "uv run uvicorn app.main:app"]
    positions = [next(i for i, c in enumerate(commands) if c.startswith(o)) for o in order]
    assert positions == sorted(positions), commands
    assert "--port 9123" in commands[positions[-1]]
    assert ("docker compose up -d db" in steps) is starts_a_server
    assert "http://localhost:9123/docs" in steps
    assert "template-update.yml" in steps


def test_copier_prints_what_to_check_after_update(releases: Path, tmp_path: Path) -> None:
    project = tmp_path / "after-update"
    copy(releases, project, "v1.0.0")

    result = copier_cli("update", "--trust", "--defaults", cwd=project)

    message = result.stderr.split("Updated to template v1.1.0.", 1)[1]
    for command in (
        "git grep -n -e '^<<<<<<< ' -e '^>>>>>>> '",
        "find . -name '*.rej' -not -path './.venv/*'",
        "uv sync",
        "uv run alembic upgrade head",
        "scripts/check",
        'git add -A && git commit -m "Update from template v1.1.0"',
    ):
        assert command in message, command
    assert str(releases) in message
