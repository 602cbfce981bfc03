"""Each request is logged once with its id; production logs are JSON lines."""

import io
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from httpx import ASGITransport, AsyncClient

from app.core.config import Settings
from app.core.logging import JsonFormatter, JsonLineHandler, configure_logging
from app.main import create_app
from tests.conftest import SignedIn, make_settings

ACCESS_LOGGER = "app.access"
ACCESS_FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "user_id",
}


def production_settings(database_url: str) -> Settings:
    return make_settings(
        database_url,
        environment="production",
        jwt_secret="Jq8vT3nRw5Yb2Kx7Lp9Zc4Md6Hf1Gs0Ae8Ui3OoP",
        cors_origins=["https://app.example.com"],
        email_delivery="log",
        log_level="INFO",
    )


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == ACCESS_LOGGER]


@contextmanager
def root_logger_restored() -> Iterator[logging.Logger]:
    """Undo configure_logging, which replaces the root logger's handlers and level."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


async def test_each_request_is_logged_once_with_its_details(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    response = await client.get("/health", headers={"X-Request-ID": "trace-42"})

    [record] = access_records(caplog)
    fields = record.__dict__
    assert response.status_code == 200
    assert (fields["method"], fields["path"], fields["status"]) == ("GET", "/health", 200)
    assert fields["request_id"] == "trace-42"
    assert isinstance(fields["duration_ms"], float)
    assert fields["duration_ms"] >= 0
    assert "GET /health 200" in record.getMessage()


async def test_generated_request_id_in_the_log_matches_the_response(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    response = await client.get("/health")

    [record] = access_records(caplog)
    assert record.__dict__["request_id"] == response.headers["x-request-id"]


async def test_failed_requests_are_logged_with_their_status(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    response = await client.get("/api/v1/users/me")

    [record] = access_records(caplog)
    assert response.status_code == 401
    assert (record.__dict__["path"], record.__dict__["status"]) == ("/api/v1/users/me", 401)


@asynccontextmanager
async def production_service(
    database_url: str, log_file: Path
) -> AsyncIterator[tuple[AsyncClient, logging.Logger]]:
    """A client of the production app, whose own handler writes its log to `log_file`,
    and the root logger; the file stays open until the block ends."""
    with root_logger_restored() as root, log_file.open("w") as stream:
        app = create_app(production_settings(database_url))
        [handler] = root.handlers
        assert isinstance(handler, JsonLineHandler)
        handler.setStream(stream)
        try:
            transport = ASGITransport(app=app)
            async with AsyncClient(transport=transport, base_url="http://test") as http:
                yield http, root
        finally:
            await app.state.database.dispose()


def test_production_logs_are_json_lines_with_the_request_id(test_database_url: str) -> None:
    settings = production_settings(test_database_url)
    with root_logger_restored() as root:
        configure_logging(settings)
        [handler] = root.handlers
    assert handler.formatter is not None
    record = logging.getLogger(ACCESS_LOGGER).makeRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        1,
        "%s %s %s",
        ("GET", "/health", 200),
        None,
        extra={"request_id": "trace-42", "status": 200},
    )

    line = handler.formatter.format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["request_id"] == "trace-42"
    assert entry["status"] == 200
    assert entry["message"] == "GET /health 200"
    assert entry["level"] == "INFO"
    assert entry["logger"] == ACCESS_LOGGER


def test_local_logs_are_readable_text(test_database_url: str) -> None:
    with root_logger_restored() as root:
        configure_logging(make_settings(test_database_url, environment="local"))
        [handler] = root.handlers
    assert handler.formatter is not None
    record = logging.getLogger(ACCESS_LOGGER).makeRecord(
        ACCESS_LOGGER, logging.INFO, __file__, 1, "GET /health 200", (), None
    )

    line = handler.formatter.format(record)

    assert "GET /health 200" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


async def test_the_access_line_names_the_route_and_the_caller_never_the_token(
    client: AsyncClient, user: SignedIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    response = await client.get("/api/v1/users/me", headers=user.headers)

    [record] = access_records(caplog)
    assert response.status_code == 200
    assert record.__dict__["route"] == "/api/v1/users/me"
    assert record.__dict__["user_id"] == user.id
    line = JsonFormatter().format(record)
    assert json.loads(line)["user_id"] == user.id
    token = user.headers["Authorization"].removeprefix("Bearer ")
    assert token not in line
    assert user.email not in line


async def test_an_unmatched_path_has_no_route_and_an_anonymous_caller_no_user(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    await client.get("/no/such/path")

    [record] = access_records(caplog)
    assert (record.__dict__["route"], record.__dict__["user_id"]) == (None, None)


async def test_every_line_logged_while_answering_carries_the_request_id(
    test_database_url: str,
) -> None:
    settings = production_settings(test_database_url)
    stream = io.StringIO()
    example = logging.getLogger("app.example")
    with root_logger_restored() as root:
        app = create_app(settings)
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)

        @app.get("/logs-a-line")
        async def logs_a_line() -> dict[str, str]:
            example.warning("inside the request")
            return {}

        try:
            transport = ASGITransport(app=app)
            async with AsyncClient(transport=transport, base_url="http://test") as http:
                await http.get("/logs-a-line", headers={"X-Request-ID": "req-7"})
            example.warning("outside any request")
        finally:
            await app.state.database.dispose()

    lines = {entry["message"]: entry for entry in map(json.loads, stream.getvalue().splitlines())}
    assert lines["inside the request"]["request_id"] == "req-7"
    [access] = [entry for entry in lines.values() if entry["logger"] == ACCESS_LOGGER]
    assert access["request_id"] == "req-7"
    assert "request_id" not in lines["outside any request"]


def test_json_lines_carry_the_traceback_of_an_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("app.example").makeRecord(
            "app.example", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )

    entry = json.loads(JsonFormatter().format(record))

    assert entry["message"] == "failed"
    assert "ValueError: boom" in entry["exc_info"]


async def test_production_writes_each_line_whole_and_at_once_with_every_field(
    test_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_file = tmp_path / "service.log"
    async with production_service(test_database_url, log_file) as (http, root):
        # A second handler, as a team's own or pytest's, gets the same records.
        root.addHandler(caplog.handler)
        await http.get("/health", headers={"X-Request-ID": "req-8"})
        await http.get("/no/such/path", headers={"X-Request-ID": "req-9"})
        # Read while the stream is still open and never flushed: nothing waits in a buffer.
        written = log_file.read_bytes()

    assert written.endswith(b"\n")
    entries = [json.loads(line) for line in written.decode().splitlines()]
    access = [entry for entry in entries if entry["logger"] == ACCESS_LOGGER]
    assert [set(entry) for entry in access] == [ACCESS_FIELDS, ACCESS_FIELDS]
    health, unmatched = access
    assert health["message"].startswith("GET /health 200 ")
    assert (health["level"], health["request_id"], health["method"]) == ("INFO", "req-8", "GET")
    assert (health["path"], health["route"], health["status"]) == ("/health", "/health", 200)
    assert (health["user_id"], unmatched["route"], unmatched["status"]) == (None, None, 404)
    assert isinstance(health["duration_ms"], float)
    records = access_records(caplog)
    assert [record.__dict__["request_id"] for record in records] == ["req-8", "req-9"]
    assert records[0].getMessage() == health["message"]


def test_a_production_exception_line_is_one_line_with_its_traceback(
    test_database_url: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "service.log"
    with root_logger_restored() as root, log_file.open("w") as stream:
        configure_logging(production_settings(test_database_url))
        [handler] = root.handlers
        assert isinstance(handler, JsonLineHandler)
        handler.setStream(stream)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("app.example").exception("failed")
        written = log_file.read_text()

    [line] = written.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["message"]) == ("ERROR", "failed")
    assert entry["exc_info"].startswith("Traceback (most recent call last):")
    assert entry["exc_info"].endswith("ValueError: boom")


def test_the_line_handler_writes_what_any_other_formatter_makes(tmp_path: Path) -> None:
    log_file = tmp_path / "service.log"
    logger = logging.getLogger("app.example.plain")
    with log_file.open("w") as stream:
        handler = JsonLineHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger.addHandler(handler)
        try:
            logger.warning("first")
            logger.warning("second: %s", "é")
        finally:
            logger.removeHandler(handler)
        written = log_file.read_text(encoding="utf-8")

    assert written == "WARNING first\nWARNING second: é\n"


async def test_production_writes_the_access_line_itself_as_logging_would(
    test_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    access_logger = logging.getLogger(ACCESS_LOGGER)
    through_logging: list[logging.LogRecord] = []
    handle = access_logger.handle

    def counted(record: logging.LogRecord) -> None:
        through_logging.append(record)
        handle(record)

    monkeypatch.setattr(access_logger, "handle", counted)
    log_file = tmp_path / "service.log"
    async with production_service(test_database_url, log_file) as (http, root):
        await http.get("/health", headers={"X-Request-ID": "direct-1"})
        # Any other handler, here one that drops everything, takes the line back through
        # logging.
        other = logging.NullHandler()
        root.addHandler(other)
        await http.get("/health", headers={"X-Request-ID": "logged"})
        root.removeHandler(other)
        await http.get("/health", headers={"X-Request-ID": "direct-2"})
    written = log_file.read_bytes()

    assert [record.__dict__["request_id"] for record in through_logging] == ["logged"]
    lines = [json.loads(line) for line in written.decode().splitlines()]
    access = [entry for entry in lines if entry["logger"] == ACCESS_LOGGER]
    assert [entry["request_id"] for entry in access] == ["direct-1", "logged", "direct-2"]
    # The same fields in the same order; only what differs from request to request differs.
    assert list(access[0]) == list(access[1]) == list(access[2])
    for entry in access:
        for varying in ("time", "message", "duration_ms", "request_id"):
            entry.pop(varying)
    assert access[0] == access[1] == access[2]


def test_the_line_written_without_a_record_is_the_records_line() -> None:
    formatter = JsonFormatter()
    record = logging.getLogger(ACCESS_LOGGER).makeRecord(
        ACCESS_LOGGER, logging.INFO, "(unknown file)", 0, "GET / 200 0.10ms", (), None
    )
    fields = {"request_id": "r", "status": 200, "user_id": None, "route": "/"}
    record.__dict__.update(fields)

    line = formatter.fields_line(record.created, ACCESS_LOGGER, "GET / 200 0.10ms", fields)

    assert line == formatter.format_line(record)
