"""Settings: production refuses unsafe values at start-up; URLs and origins are read leniently."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from app.core.config import Settings, get_settings, load_settings, to_async_url
from app.core.dialect import ASYNC_DRIVERNAME, DIALECT_NAME
from tests.conftest import PROJECT_ROOT, TEST_SECRET, make_settings

STRONG_SECRET = "kX9vQ2mZr7TtLw4bN8cYp3HsJd6Fg1Ue5Ai0RoW2"  # 40 random characters


def plain_url(database_url: str) -> str:
    """The URL as a user writes it: the dialect alone, without a driver."""
    url = make_url(database_url).set(drivername=DIALECT_NAME)
    return url.render_as_string(hide_password=False)


def service_environment(**variables: str) -> dict[str, str]:
    """The process environment without any setting of the service, plus `variables`."""
    setting_names = {name.upper() for name in Settings.model_fields}
    environment = {
        name: value for name, value in os.environ.items() if name.upper() not in setting_names
    }
    environment["PYTHONPATH"] = str(PROJECT_ROOT)
    environment.update(variables)
    return environment


def start_service(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    # Run from an empty directory, so no `.env` can supply (and hide) a missing variable.
    return subprocess.run(
        [sys.executable, "-c", "import app.main as m; m.app"],
        cwd=tmp_path,
        env=service_environment(**variables),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def production_environment(database_url: str, **overrides: str | None) -> dict[str, str]:
    variables: dict[str, str | None] = {
        "ENVIRONMENT": "production",
        "DATABASE_URL": database_url,
        "JWT_SECRET": STRONG_SECRET,
        "CORS_ORIGINS": "https://app.example.com",
        "EMAIL_DELIVERY": "log",
        **overrides,
    }
    return {name: value for name, value in variables.items() if value is not None}


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"JWT_SECRET": None}, "JWT_SECRET"),
        ({"JWT_SECRET": "x" * 31}, "JWT_SECRET"),
        ({"JWT_SECRET": "change-me".ljust(40, "-")}, "JWT_SECRET"),
        ({"CORS_ORIGINS": "https://app.example.com,*"}, "CORS_ORIGINS"),
        ({"EMAIL_DELIVERY": None}, "SMTP_HOST"),
    ],
    ids=["secret-missing", "secret-31-bytes", "secret-placeholder", "cors-wildcard", "no-smtp"],
)
def test_production_refuses_unsafe_settings_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    test_database_url: str,
    overrides: dict[str, str | None],
    variable: str,
) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in production_environment(test_database_url, **overrides).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no `.env` to supply a missing value
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exit_:
            load_settings()
    finally:
        get_settings.cache_clear()

    assert variable in str(exit_.value.code)


def test_production_service_exits_with_a_message_not_a_traceback(
    tmp_path: Path, test_database_url: str
) -> None:
    result = start_service(tmp_path, **production_environment(test_database_url, JWT_SECRET=None))

    assert result.returncode != 0
    assert "JWT_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_production_starts_with_safe_settings(tmp_path: Path, test_database_url: str) -> None:
    result = start_service(
        tmp_path,
        ENVIRONMENT="production",
        DATABASE_URL=test_database_url,
        JWT_SECRET=STRONG_SECRET,
        CORS_ORIGINS="https://app.example.com",
        EMAIL_DELIVERY="log",
    )

    assert result.returncode == 0, result.stderr


def test_weak_secret_is_accepted_outside_production(test_database_url: str) -> None:
    settings = make_settings(test_database_url, environment="local", jwt_secret="change-me")

    assert settings.jwt_secret.get_secret_value() == "change-me"


def test_plain_database_url_selects_the_async_driver(test_database_url: str) -> None:
    url = plain_url(test_database_url)

    assert make_url(url).drivername == DIALECT_NAME
    assert make_url(to_async_url(url)).drivername == ASYNC_DRIVERNAME
    assert make_url(make_settings(url).database_url).drivername == ASYNC_DRIVERNAME


def test_database_url_with_the_async_driver_is_kept(test_database_url: str) -> None:
    url = make_url(test_database_url).set(drivername=ASYNC_DRIVERNAME)

    converted = make_url(to_async_url(url.render_as_string(hide_password=False)))

    assert converted.drivername == ASYNC_DRIVERNAME
    assert converted.database == url.database


def test_database_url_of_another_dialect_is_refused() -> None:
    with pytest.raises(ValueError, match=f"must be a {DIALECT_NAME} URL") as error:
        to_async_url("other" + "db://user@host/name")

    assert "otherdb" in str(error.value)


def test_database_url_with_an_unknown_driver_is_refused(test_database_url: str) -> None:
    url = make_url(test_database_url).set(drivername=f"{DIALECT_NAME}+nosuchdriver")

    with pytest.raises(ValueError, match="nosuchdriver"):
        make_settings(url.render_as_string(hide_password=False))


def test_database_url_that_is_not_a_url_is_refused() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL is not a valid database URL"):
        to_async_url("not a url")


@pytest.mark.parametrize(
    "value",
    [
        "https://a.example.com, https://b.example.com",
        '["https://a.example.com", "https://b.example.com"]',
    ],
    ids=["comma-separated", "json-list"],
)
def test_cors_origins_are_read_from_either_form(
    monkeypatch: pytest.MonkeyPatch, test_database_url: str, value: str
) -> None:
    monkeypatch.setenv("CORS_ORIGINS", value)

    settings = Settings(_env_file=None, database_url=test_database_url, jwt_secret=TEST_SECRET)

    assert settings.cors_origins == ["https://a.example.com", "https://b.example.com"]
