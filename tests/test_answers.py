"""Copier answers: bad ones fail naming the question; secrets never reach the answers file."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

BAD_ANSWERS = [
    pytest.param({"roles": ["user"]}, "roles", "at least two", id="one-role"),
    pytest.param({"roles": ["user", "user"]}, "roles", "unique", id="duplicate-roles"),
    pytest.param({"roles": ["user", "Admin!"]}, "roles", "not a valid role name", id="bad-role"),
    pytest.param({"roles": "admin"}, "roles", "YAML list", id="roles-not-a-list"),
    pytest.param({"port": 0}, "port", "between 1 and 65535", id="port-0"),
    pytest.param({"port": 65536}, "port", "between 1 and 65535", id="port-65536"),
    pytest.param({"database": "oracle"}, "database", "oracle", id="unknown-database"),
    pytest.param({"jwt_library": "authlib"}, "jwt_library", "authlib", id="unknown-jwt-library"),
    pytest.param({"project_slug": "Bad Slug"}, "project_slug", "lowercase", id="bad-slug"),
    pytest.param({"project_name": "  "}, "project_name", "empty", id="blank-name"),
]


@pytest.mark.parametrize(("answers", "question", "message"), BAD_ANSWERS)
def test_wrong_answer_fails_naming_the_question(
    copie: Any, answers: dict[str, Any], question: str, message: str
) -> None:
    result = copie.copy(extra_answers={"project_name": "Demo", **answers})
    assert result.exit_code != 0
    error = str(result.exception)
    assert f"'{question}'" in error, error
    assert message in error, error


def render(copie: Any, **answers: Any) -> Path:
    result = copie.copy(extra_answers={"project_name": "Billing Service", **answers})
    assert result.exit_code == 0, result.exception
    return Path(result.project_dir)


def test_slug_is_derived_from_the_name(copie: Any) -> None:
    project = render(copie, project_name="Billing Service (EU) 2")
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["project_slug"] == "billing-service-eu-2"
    assert 'name = "billing-service-eu-2"' in (project / "pyproject.toml").read_text()


def env_values(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def test_env_gets_a_fresh_secret_that_the_answers_file_never_sees(copie: Any) -> None:
    first, second = render(copie), render(copie)
    secrets = [env_values(p / ".env")["JWT_SECRET"] for p in (first, second)]
    assert secrets[0] != secrets[1]
    for project, secret in zip((first, second), secrets, strict=True):
        assert len(secret.encode()) >= 32
        assert re.fullmatch(r"[A-Za-z0-9_-]+", secret)
        assert secret not in (project / ".copier-answers.yml").read_text()
        assert (project / ".env").stat().st_mode & 0o077 == 0, ".env readable by others"
        assert ".env" in (project / ".gitignore").read_text().splitlines()
        assert env_values(project / ".env.example")["JWT_SECRET"] == "change-me"


def test_env_example_documents_every_setting(copie: Any) -> None:
    project = render(copie)
    documented = set(env_values(project / ".env.example"))
    source = (project / "app/core/config.py").read_text()
    settings_block = source.split("class Settings(BaseSettings):", 1)[1].split("@field_validator")[
        0
    ]
    fields = {m.upper() for m in re.findall(r"^    ([a-z_]+):", settings_block, re.MULTILINE)}
    assert fields, "no settings found: has config.py changed shape?"
    assert fields <= documented, f"undocumented: {sorted(fields - documented)}"


def test_answers_file_records_the_answers_for_updates(copie: Any) -> None:
    project = render(copie, database="mysql", roles=["a", "b", "c"])
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["database"] == "mysql"
    assert answers["roles"] == ["a", "b", "c"]
    assert Path(answers["_src_path"]).is_absolute()
