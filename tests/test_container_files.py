"""Container files of every rendered variant, checked without a Docker engine.

The Dockerfile is parsed with BuildKit's own parser (the `dockerfile` package) and linted
with hadolint; compose.yaml is validated against the Compose Specification schema that
check-jsonschema vendors; scripts/prestart is linted with shellcheck and run against stub
commands, and once for real on SQLite; scripts/template-update is linted with shellcheck too.
Each checker is also fed a broken file, so a checker that stopped working would fail here
instead of passing everything.
"""

import contextlib
import fnmatch
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

import dockerfile
import jsonschema
import pytest
import yaml

from tests.support import free_port, render

DATABASES = ["postgresql", "mysql", "sqlite"]
# Not the default, so a value hard-coded in the template cannot pass for the answer.
PORT = 8123
DB_IMAGES = {"postgresql": "postgres:16", "mysql": "mysql:8.4"}
OTHER_DATABASE_WORDS = {
    "postgresql": ["mysql", "mariadb", "sqlite", "3306"],
    "mysql": ["postgres", "sqlite", "5432", "pg_isready"],
    "sqlite": ["postgres", "mysql", "mariadb", "5432", "3306"],
}
CONTAINER_FILES = ["Dockerfile", ".dockerignore", "compose.yaml", "scripts/prestart"]
DOCKERFILE_INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    projects = {}
    for database in DATABASES:
        destination = tmp_path_factory.mktemp(f"container-{database}") / "demo"
        render(destination, database=database, port=PORT)
        projects[database] = destination
    return projects


def require_tool(name: str) -> str:
    # The venv's bin first: `.venv/bin/pytest` runs without the venv on PATH.
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed; run `uv sync` (it comes with the dev group)")
    return path


# --- Dockerfile ----------------------------------------------------------------------------


def _stages(commands: tuple[dockerfile.Command, ...]) -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for command in commands:
        if command.cmd.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def _global_args(commands: tuple[dockerfile.Command, ...]) -> dict[str, str]:
    args = {}
    for command in commands:
        if command.cmd.upper() == "FROM":
            break
        if command.cmd.upper() == "ARG":
            name, _, default = command.value[0].partition("=")
            args[name] = default
    return args


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def dockerfile_problems(text: str, port: int) -> list[str]:
    """What keeps this Dockerfile from being the production image the template promises."""
    commands = dockerfile.parse_string(text)
    problems = [
        f"line {c.start_line}: unknown instruction {c.cmd}"
        for c in commands
        if c.cmd.upper() not in DOCKERFILE_INSTRUCTIONS
    ]
    stages = _stages(commands)
    if len(stages) < 2:
        return [*problems, "not multi-stage: dependencies must be built in a separate stage"]
    args = _global_args(commands)
    final = stages[-1]
    named = {c.cmd.upper(): c for c in final}  # the last of each instruction wins

    base = _substitute(final[0].value[0], args)
    if not re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base):
        problems.append(f"final stage is based on {base!r}, not a python slim image")

    uv_copies = [
        c
        for stage in stages
        for c in stage
        if c.cmd.upper() == "COPY"
        and any(f.startswith("--from=ghcr.io/astral-sh/uv") for f in c.flags)
    ]
    if not any(
        re.fullmatch(r"--from=ghcr\.io/astral-sh/uv:0\.13(\.\d+)?", f)
        for c in uv_copies
        for f in c.flags
    ):
        problems.append("uv is not copied from ghcr.io/astral-sh/uv pinned to a 0.13 tag")
    if any(c in final for c in uv_copies):
        problems.append("the final stage carries uv; only the build stage needs it")
    earlier = {c.value[2].lower() for stage in stages[:-1] for c in stage[:1] if len(c.value) == 3}
    if not any(
        c.cmd.upper() == "COPY"
        and any(f.lower().removeprefix("--from=") in earlier for f in c.flags)
        for c in final
    ):
        problems.append("the final stage does not copy the environment built in an earlier stage")

    for stage in stages:
        sync = next(
            (i for i, c in enumerate(stage) if c.cmd.upper() == "RUN" and "uv sync" in c.value[0]),
            None,
        )
        if sync is None:
            continue
        sources = [
            src
            for c in stage[:sync]
            if c.cmd.upper() in {"COPY", "ADD"} and not any(f.startswith("--from") for f in c.flags)
            for src in c.value[:-1]
        ]
        if "pyproject.toml" not in sources or not set(sources) <= {
            "pyproject.toml",
            "uv.lock",
            "uv.lock*",
        }:
            problems.append(
                f"`uv sync` runs after copying {sources}; copy only pyproject.toml and uv.lock "
                "first so the dependency layer is cached apart from the source"
            )

    user = named.get("USER")
    if user is None or user.value[0].split(":")[0] in {"root", "0"}:
        problems.append("the final stage runs as root; add a USER that is not root")

    healthcheck = named.get("HEALTHCHECK")
    if healthcheck is None or healthcheck.value[0].upper() != "CMD":
        problems.append("no HEALTHCHECK ... CMD in the final stage")
    else:
        probe = " ".join(healthcheck.value[1:])
        if f"127.0.0.1:{port}/health" not in probe and f"localhost:{port}/health" not in probe:
            problems.append(f"HEALTHCHECK does not request /health on port {port}: {probe}")
        if "urllib" not in probe or re.search(r"\b(curl|wget)\b", probe):
            problems.append(
                "HEALTHCHECK must use Python's urllib; slim images have no curl or wget"
            )

    exposed = {p.split("/")[0] for c in final if c.cmd.upper() == "EXPOSE" for p in c.value}
    if exposed != {str(port)}:
        problems.append(f"EXPOSE {sorted(exposed)} does not equal the port answer {port}")

    cmd = named.get("CMD")
    if cmd is None or not cmd.json:
        problems.append("CMD must use the exec (JSON) form so signals reach the server")
    else:
        line = " ".join(cmd.value)
        if not re.search(r"scripts/prestart\b.*&&.*\buvicorn app\.main:app\b", line):
            problems.append(f"CMD does not run scripts/prestart and then uvicorn: {line}")
        # The app decides whom to trust (TRUSTED_PROXIES); uvicorn must not rewrite the peer.
        # The drain on SIGTERM is bounded, to end within the orchestrator's grace period.
        options = (f"--port {port}", "--host 0.0.0.0", "--no-proxy-headers")
        for option in (*options, "--timeout-graceful-shutdown"):
            if option not in line:
                problems.append(f"CMD lacks `{option}`: {line}")
    return problems


@pytest.mark.parametrize("database", DATABASES)
def test_dockerfile_is_multistage_nonroot_and_healthchecked(
    rendered: dict[str, Path], database: str
) -> None:
    text = (rendered[database] / "Dockerfile").read_text()
    assert dockerfile_problems(text, PORT) == []


def test_dockerfile_checks_reject_a_naive_dockerfile() -> None:
    naive = textwrap.dedent(
        """\
        FROM python:3.13
        COPY . .
        RUN pip install uv && uv sync
        EXPOSE 8000
        CMD uvicorn app.main:app --port 8000
        """
    )
    assert dockerfile_problems(naive, PORT) == [
        "not multi-stage: dependencies must be built in a separate stage"
    ]
    two_stage = "FROM python:3.13 AS build\nCOPY . .\nRUN uv sync\n" + naive
    problems = "\n".join(dockerfile_problems(two_stage, PORT))
    for expected in (
        "not a python slim image",
        "not copied from ghcr.io/astral-sh/uv",
        "does not copy the environment built in an earlier stage",
        "`uv sync` runs after copying ['.']",
        "runs as root",
        "no HEALTHCHECK",
        "EXPOSE ['8000'] does not equal the port answer 8123",
        "exec (JSON) form",
    ):
        assert expected in problems


def test_dockerfile_checks_reject_a_root_user_and_wrong_probe() -> None:
    text = textwrap.dedent(
        """\
        FROM python:3.13-slim AS builder
        COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /bin/uv
        COPY pyproject.toml uv.lock ./
        RUN uv sync --locked
        FROM python:3.13-slim
        COPY --from=builder /app/.venv /app/.venv
        USER 0
        EXPOSE 8123
        HEALTHCHECK CMD curl -f http://localhost:8000/health
        CMD ["uvicorn", "app.main:app", "--port", "8123"]
        """
    )
    problems = "\n".join(dockerfile_problems(text, PORT))
    assert "runs as root" in problems
    assert "does not request /health on port 8123" in problems
    assert "must use Python's urllib" in problems
    assert "does not run scripts/prestart" in problems


@pytest.mark.parametrize("database", DATABASES)
def test_hadolint_accepts_the_dockerfile(rendered: dict[str, Path], database: str) -> None:
    result = subprocess.run(
        [require_tool("hadolint"), "--no-color", str(rendered[database] / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN apt-get install curl\nCMD uvicorn app.main:app\n")
    result = subprocess.run(
        [require_tool("hadolint"), "--no-color", str(careless)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    # Pinned base image tag, apt-get without pinned versions, CMD in shell form.
    for rule in ("DL3007", "DL3008", "DL3025"):
        assert rule in result.stdout


@pytest.mark.parametrize("database", DATABASES)
def test_dockerignore_keeps_the_venv_and_secrets_out_of_the_image(
    rendered: dict[str, Path], database: str
) -> None:
    patterns = {
        line.strip()
        for line in (rendered[database] / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # `COPY . .` would otherwise replace the image's venv with the host's and bake in .env.
    assert {".venv", ".env", ".git", "tests"} <= patterns
    assert ("*.db" in patterns) == (database == "sqlite")


# --- compose.yaml --------------------------------------------------------------------------


def _compose_schema() -> dict[str, object]:
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema_file.read_text(encoding="utf-8"))


def compose_schema_errors(document: object) -> list[str]:
    schema = _compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator_class(schema).iter_errors(document)
    ]


def _environment(service: dict[str, object]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {str(k): str(v) for k, v in environment.items()}


def compose_problems(document: dict[str, object], database: str, port: int) -> list[str]:
    """What keeps this compose file from being the local stack the template promises."""
    services: dict[str, dict[str, object]] = document.get("services", {})
    api = services.get("api")
    if api is None:
        return ["no `api` service"]
    problems = []
    if api.get("build") not in (".", {"context": "."}):
        problems.append("api is not built from the project's Dockerfile")
    if f"{port}:{port}" not in [str(p) for p in api.get("ports", [])]:
        problems.append(f"api does not publish the port answer {port}")
    env_files = api.get("env_file", [])
    if ".env" not in ([env_files] if isinstance(env_files, str) else env_files):
        problems.append("api does not read .env")
    for name, service in services.items():
        if not service.get("healthcheck", {}).get("test"):
            problems.append(f"service {name} has no healthcheck")

    url = urlsplit(_environment(api).get("DATABASE_URL", ""))
    if url.scheme != database:
        problems.append(f"DATABASE_URL scheme {url.scheme!r} is not {database!r}")
    declared_volumes = set((document.get("volumes") or {}).keys())
    if database == "sqlite":
        if set(services) != {"api"}:
            problems.append(f"a SQLite stack needs no database service, got {sorted(services)}")
        directory = str(Path(url.path[1:]).parent)  # sqlite:////abs/path -> /abs/path
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in api.get("volumes", [])}
        if mounts.get(directory) not in declared_volumes:
            problems.append(f"the SQLite file's directory {directory} is not on a named volume")
        return problems

    db = services.get("db")
    if db is None:
        return [*problems, "no `db` service"]
    if db.get("image") != DB_IMAGES[database]:
        problems.append(f"db image is {db.get('image')!r}, expected {DB_IMAGES[database]!r}")
    if url.hostname != "db":
        problems.append(f"DATABASE_URL points at {url.hostname!r}, not the db service")
    depends = api.get("depends_on", {})
    if not isinstance(depends, dict) or depends.get("db", {}).get("condition") != "service_healthy":
        problems.append("api does not wait for db with condition: service_healthy")
    if not any(str(v).split(":")[0] in declared_volumes for v in db.get("volumes", [])):
        problems.append("the database's data is not on a named volume")
    password_variable = "POSTGRES_PASSWORD" if database == "postgresql" else "MYSQL_PASSWORD"
    password = _environment(db).get(password_variable, "")
    if not re.fullmatch(r"\$\{DB_PASSWORD:-[^}]+\}", password):
        problems.append(f"{password_variable} is not taken from DB_PASSWORD with a local default")
    if password and f":{password}@" not in _environment(api)["DATABASE_URL"]:
        problems.append("DATABASE_URL does not use the database's password")
    # The test suite needs its own database next to the one the service migrates.
    init_scripts = [str(c.get("content", "")) for c in (document.get("configs") or {}).values()]
    test_database = f"CREATE DATABASE {url.path.lstrip('/')}_test"
    if not any(test_database in script for script in init_scripts):
        problems.append(f"the db service does not run `{test_database}` on first start")
    return problems


@pytest.mark.parametrize("database", DATABASES)
def test_compose_file_matches_the_compose_specification(
    rendered: dict[str, Path], database: str
) -> None:
    document = yaml.safe_load((rendered[database] / "compose.yaml").read_text())
    assert compose_schema_errors(document) == []


@pytest.mark.parametrize("database", DATABASES)
def test_compose_runs_the_api_with_its_database(rendered: dict[str, Path], database: str) -> None:
    document = yaml.safe_load((rendered[database] / "compose.yaml").read_text())
    assert compose_problems(document, database, PORT) == []


def test_compose_checks_reject_a_broken_stack() -> None:
    broken = yaml.safe_load(
        textwrap.dedent(
            """\
            services:
              api:
                build: .
                ports: ["8000:8000"]
                depends_on:
                  db:
                    condition: healthy
                environment:
                  DATABASE_URL: postgresql://app:pw@localhost:5432/app
              db:
                image: postgres:16
                enviroment:
                  POSTGRES_PASSWORD: pw
            """
        )
    )
    errors = "\n".join(compose_schema_errors(broken))
    assert "services/api/depends_on: {'db': {'condition': 'healthy'}} is not valid" in errors
    assert "'enviroment' was unexpected" in errors
    problems = "\n".join(compose_problems(broken, "postgresql", PORT))
    for expected in (
        "does not publish the port answer 8123",
        "does not read .env",
        "service api has no healthcheck",
        "service db has no healthcheck",
        "points at 'localhost'",
        "does not wait for db",
        "not on a named volume",
        "not taken from DB_PASSWORD",
        "does not run `CREATE DATABASE app_test`",
    ):
        assert expected in problems


# --- rendered text -------------------------------------------------------------------------


@pytest.mark.parametrize("database", DATABASES)
def test_container_files_mention_only_the_chosen_database(
    rendered: dict[str, Path], database: str
) -> None:
    for name in CONTAINER_FILES:
        text = (rendered[database] / name).read_text()
        assert not re.search(r"\{\{|\}\}|\{%|%\}|\{#|#\}", text), f"Jinja left in {name}"
        for word in OTHER_DATABASE_WORDS[database]:
            assert word not in text.lower(), f"{name} of a {database} project mentions {word}"


# --- scripts/prestart ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prestart", "template-update"])
@pytest.mark.parametrize("database", DATABASES)
def test_script_is_executable_and_passes_shellcheck(
    rendered: dict[str, Path], database: str, name: str
) -> None:
    script = rendered[database] / "scripts" / name
    assert script.stat().st_mode & stat.S_IXUSR, "Copier must keep the executable bit"
    result = subprocess.run(
        [require_tool("shellcheck"), "--severity=style", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_rejects_a_careless_script(tmp_path: Path) -> None:
    careless = tmp_path / "prestart"
    careless.write_text(
        "#!/usr/bin/env bash\ncd $(dirname $0)/..\nif [ $FIRST_ADMIN_EMAIL ]; then echo x; fi\n"
    )
    result = subprocess.run(
        [require_tool("shellcheck"), str(careless)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "SC2046" in result.stdout  # unquoted command substitution


@pytest.fixture
def stub_commands(tmp_path: Path) -> tuple[Path, Path]:
    """`python` and `alembic` stand-ins that record each call (cwd and argv) to a log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name in ("python", "alembic"):
        stub = bin_dir / name
        stub.write_text(
            textwrap.dedent(
                f"""\
                #!/usr/bin/env bash
                echo "$PWD|{name} $*" >> {log}
                if [[ "$*" == *wait-for-db* && -n "${{STUB_DB_DOWN:-}}" ]]; then
                    echo "database unreachable" >&2
                    exit 1
                fi
                """
            )
        )
        stub.chmod(0o755)
    return bin_dir, log


def _run_prestart(
    project: Path, bin_dir: Path, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", **env}
    return subprocess.run(
        [str(project / "scripts" / "prestart")],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


def test_prestart_waits_migrates_and_creates_the_admin_in_order(
    rendered: dict[str, Path], stub_commands: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, log = stub_commands
    project = rendered["postgresql"]
    result = _run_prestart(project, bin_dir, cwd=tmp_path, FIRST_ADMIN_EMAIL="admin@example.com")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        f"{project}|python -m app.cli wait-for-db --timeout 60",
        f"{project}|alembic upgrade head",
        f"{project}|python -m app.cli create-admin --skip-existing",
    ]


def test_prestart_skips_the_admin_without_first_admin_email(
    rendered: dict[str, Path], stub_commands: tuple[Path, Path]
) -> None:
    bin_dir, log = stub_commands
    project = rendered["postgresql"]
    result = _run_prestart(project, bin_dir, cwd=project, DB_WAIT_TIMEOUT="5")
    assert result.returncode == 0, result.stderr
    assert [line.split("|")[1] for line in log.read_text().splitlines()] == [
        "python -m app.cli wait-for-db --timeout 5",
        "alembic upgrade head",
    ]


def test_prestart_stops_when_the_database_is_unreachable(
    rendered: dict[str, Path], stub_commands: tuple[Path, Path]
) -> None:
    bin_dir, log = stub_commands
    project = rendered["postgresql"]
    result = _run_prestart(
        project, bin_dir, cwd=project, STUB_DB_DOWN="1", FIRST_ADMIN_EMAIL="a@example.com"
    )
    assert result.returncode != 0
    assert "database unreachable" in result.stderr
    assert [line.split("|")[1] for line in log.read_text().splitlines()] == [
        "python -m app.cli wait-for-db --timeout 60"
    ]


def test_prestart_migrates_and_seeds_the_admin_on_sqlite_for_real(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    """The real commands, run the way the script's header tells developers to."""
    uv = require_tool("uv")
    project = rendered["sqlite"]
    database = tmp_path / "prestart.db"
    # As a developer would: the admin is configured in .env, not in the shell.
    env_file = project / ".env"
    env_file.write_text(
        env_file.read_text()
        .replace("FIRST_ADMIN_EMAIL=\n", "FIRST_ADMIN_EMAIL=first.admin@example.com\n")
        .replace("FIRST_ADMIN_PASSWORD=\n", "FIRST_ADMIN_PASSWORD=a-long-enough-password-1\n")
    )
    assert "FIRST_ADMIN_EMAIL=first.admin@example.com" in env_file.read_text()
    environment = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    environment.update(UV_PYTHON_DOWNLOADS="never", DATABASE_URL=f"sqlite:///{database}")
    for attempt in ("first", "second"):  # the second run proves every step is idempotent
        result = subprocess.run(
            [uv, "run", "--env-file", ".env", "scripts/prestart"],
            cwd=project,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{attempt} run:\n{result.stdout}\n{result.stderr}"
    with sqlite3.connect(database) as connection:
        tables = [
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        assert "alembic_version" in tables
        admins = [
            table
            for table in tables
            if "email"
            in [column[1] for column in connection.execute(f'PRAGMA table_info("{table}")')]
            and connection.execute(
                f'SELECT COUNT(*) FROM "{table}" WHERE email = ?', ("first.admin@example.com",)
            ).fetchone()[0]
            == 1
        ]
    assert len(admins) == 1, f"the first admin is not stored exactly once in {tables}"


# --- the image's own commands, run outside a container ------------------------------------


def _env_instructions(stage: list[dockerfile.Command]) -> dict[str, str]:
    values: dict[str, str] = {}
    for command in stage:
        if command.cmd.upper() == "ENV":
            pairs = command.value
            values.update({pairs[i]: pairs[i + 1].strip('"') for i in range(0, len(pairs), 2)})
    return values


def _dockerignored(relative: Path, patterns: list[str]) -> bool:
    text = relative.as_posix()
    return any(
        fnmatch.fnmatch(text, pattern.removeprefix("**/"))
        or fnmatch.fnmatch(relative.name, pattern.removeprefix("**/"))
        if pattern.startswith("**/")
        else fnmatch.fnmatch(text, pattern) or text.startswith(f"{pattern}/")
        for pattern in patterns
    )


def _build_context(project: Path, destination: Path) -> None:
    """Copy what `COPY . .` would see: the project minus .dockerignore's patterns."""
    patterns = [
        line.strip()
        for line in (project / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in sorted(project.rglob("*")):
        relative = path.relative_to(project)
        if any(
            _dockerignored(Path(*relative.parts[: i + 1]), patterns)
            for i in range(len(relative.parts))
        ):
            continue
        target = destination / relative
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def test_image_commands_build_and_start_the_service_on_sqlite(tmp_path: Path) -> None:
    """Runs the Dockerfile's dependency RUN, CMD and HEALTHCHECK as written, minus the container.

    This proves the service starts from runtime dependencies only, with the files the
    build context keeps, that prestart and the health check pass, and that SIGTERM reaches
    uvicorn. The non-root user, the base image and BuildKit features are not exercised.
    """
    uv = require_tool("uv")
    port = free_port()
    project = tmp_path / "project"
    render(project, database="sqlite", port=port)
    base_env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    base_env["UV_PYTHON_DOWNLOADS"] = "never"
    lock = subprocess.run(
        [uv, "lock"], cwd=project, env=base_env, capture_output=True, text=True, check=False
    )
    assert lock.returncode == 0, lock.stderr

    stages = _stages(dockerfile.parse_string((project / "Dockerfile").read_text()))
    builder = next(
        s for s in stages if any(c.cmd.upper() == "RUN" and "uv sync" in c.value[0] for c in s)
    )
    venv = tmp_path / "venv"
    build_env = {**base_env, **_env_instructions(builder), "UV_PROJECT_ENVIRONMENT": str(venv)}
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    for command in builder:
        if command.cmd.upper() == "COPY" and not command.flags:
            for source in command.value[:-1]:
                for match in project.glob(source):
                    shutil.copy2(match, build_dir)
        if command.cmd.upper() == "RUN":
            result = subprocess.run(
                ["/bin/sh", "-c", command.value[0]],
                cwd=build_dir,
                env=build_env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, result.stderr
    assert (venv / "bin" / "uvicorn").exists()
    assert not (venv / "bin" / "pytest").exists(), "the image must not install the dev group"

    image = tmp_path / "image"
    _build_context(project, image)
    assert not (image / ".env").exists() and not (image / "tests").exists()

    final = stages[-1]
    runtime_env = _env_instructions(final)
    runtime_env["PATH"] = (
        runtime_env["PATH"].replace("/app/.venv", str(venv)).replace("$PATH", "/usr/bin:/bin")
    )
    runtime_env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        JWT_SECRET=secrets.token_urlsafe(48),
        CORS_ORIGINS="https://app.example.com",
        EMAIL_DELIVERY="log",
        FIRST_ADMIN_EMAIL="first.admin@example.com",
        FIRST_ADMIN_PASSWORD=secrets.token_urlsafe(16),
    )
    assert runtime_env["ENVIRONMENT"] == "production"
    named = {c.cmd.upper(): c for c in final}
    healthcheck = list(named["HEALTHCHECK"].value[1:])
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            list(named["CMD"].value),
            cwd=image,
            env=runtime_env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so nothing outlives the test
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, f"the service exited early:\n{log.read_text()}"
                probe = subprocess.run(
                    healthcheck, env=runtime_env, capture_output=True, check=False
                )
                if probe.returncode == 0:
                    break
                assert time.monotonic() < deadline, f"HEALTHCHECK never passed:\n{log.read_text()}"
                time.sleep(0.5)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                assert json.load(response) == {"status": "ok"}
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/health/ready", timeout=5
            ) as response:
                assert response.status == 200
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                returncode = server.wait(timeout=20)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
    # uvicorn re-raises the signal after a graceful shutdown, so -SIGTERM is a clean exit.
    assert returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
    # `exec` keeps the shell's process id: the signal went to uvicorn, not to a shell.
    assert f"Finished server process [{server.pid}]" in log.read_text()


# The options every production start of the service passes to uvicorn (the Dockerfile's
# CMD, the Kubernetes Deployment, the commands in the rendered README and operations page).
PRODUCTION_SERVER_OPTIONS = {
    "--no-proxy-headers": None,
    "--no-access-log": None,
    "--loop": "app.runtime.loop:new_event_loop",
    "--timeout-graceful-shutdown": "25",
}
# Options a start may vary: where it listens and how many processes it runs.
_PLACE_OPTIONS = {"--host", "--port", "--workers"}


def uvicorn_options(command: str) -> dict[str, str | None]:
    """The options of the `uvicorn app.main:app ...` in `command`, as {option: value}."""
    words = command.replace("\\\n", " ").replace("=", " ").split()
    words = words[words.index("app.main:app") + 1 :]
    options: dict[str, str | None] = {}
    for index, word in enumerate(words):
        if word.startswith("--"):
            following = words[index + 1] if index + 1 < len(words) else None
            has_value = following is not None and not following.startswith("--")
            options[word] = following if has_value else None
    return {key: value for key, value in options.items() if key not in _PLACE_OPTIONS}


def production_commands(project: Path) -> dict[str, str]:
    """Every documented way to start the service in production, by where it is written."""
    commands: dict[str, str] = {}
    for name in ("README.md", "docs/operations.md"):
        text = (project / name).read_text()
        blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
        found = [
            line
            for block in blocks
            for line in block.replace("\\\n", " ").splitlines()
            if "uvicorn app.main:app" in line
        ]
        assert found, f"{name} documents no command that starts the service"
        for number, line in enumerate(found):
            commands[f"{name} #{number + 1}"] = line.split("#")[0]
    cmd = next(c for c in dockerfile.parse_string((project / "Dockerfile").read_text())[::-1]
               if c.cmd.upper() == "CMD")  # fmt: skip
    commands["Dockerfile CMD"] = " ".join(cmd.value)
    for document in yaml.safe_load_all(
        (project / "deploy" / "kubernetes" / "base" / "deployment.yaml").read_text()
    ):
        for container in document["spec"]["template"]["spec"]["containers"]:
            commands[f"Kubernetes {container['name']}"] = " ".join(container["command"])
    return commands


@pytest.mark.parametrize("database", DATABASES)
def test_every_production_start_uses_the_same_server_settings(
    rendered: dict[str, Path], database: str
) -> None:
    commands = production_commands(rendered[database])
    assert {"Dockerfile CMD", "Kubernetes api", "README.md #1", "docs/operations.md #1"} <= set(
        commands
    )
    different = {
        where: options
        for where, command in commands.items()
        if (options := uvicorn_options(command)) != PRODUCTION_SERVER_OPTIONS
    }
    assert different == {}, f"expected {PRODUCTION_SERVER_OPTIONS}"


def test_server_settings_check_rejects_uvicorns_defaults() -> None:
    # The plain command picks uvloop and uvicorn's own access log.
    assert uvicorn_options("uv run uvicorn app.main:app --port 8003") != PRODUCTION_SERVER_OPTIONS
    assert (
        uvicorn_options(
            "uvicorn app.main:app --host=0.0.0.0 --workers 2 --no-proxy-headers --no-access-log"
            " --loop=app.runtime.loop:new_event_loop --timeout-graceful-shutdown=25"
        )
        == PRODUCTION_SERVER_OPTIONS
    )
