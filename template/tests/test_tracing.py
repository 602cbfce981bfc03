"""OpenTelemetry traces: one trace per request with its statements inside, no secrets in
spans, and log lines that name their trace."""

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core import tracing
from app.main import create_app
from tests.conftest import PASSWORD, SignedIn, make_settings
from tests.test_logging import root_logger_restored

PRODUCTION_SECRET = "Jq8vT3nRw5Yb2Kx7Lp9Zc4Md6Hf1Gs0Ae8Ui3OoP"


@contextmanager
def traced(app: FastAPI) -> Iterator[InMemorySpanExporter]:
    """`app` traced into memory, from its first request on."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(app, provider)
    try:
        yield exporter
    finally:
        SQLAlchemyInstrumentor().uninstrument()
        provider.shutdown()


@pytest.fixture
def spans(app: FastAPI) -> Iterator[InMemorySpanExporter]:
    """Requested before any fixture that sends a request, which builds the app's stack."""
    with traced(app) as exporter:
        yield exporter


def server_spans(finished: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    return [span for span in finished if span.kind is SpanKind.SERVER]


async def test_each_request_is_one_trace_with_its_statements_inside(
    spans: InMemorySpanExporter, client: AsyncClient, user: SignedIn
) -> None:
    spans.clear()

    assert (await client.get("/api/v1/users/me", headers=user.headers)).status_code == 200
    assert (await client.get("/api/v1/users/me", headers=user.headers)).status_code == 200

    finished = spans.get_finished_spans()
    servers = server_spans(finished)
    assert len(servers) == 2
    assert {span.context.trace_id for span in finished} == {s.context.trace_id for s in servers}
    for server in servers:
        assert server.attributes is not None
        assert server.attributes["http.route"] == "/api/v1/users/me"
        inside = [s for s in finished if s.context.trace_id == server.context.trace_id]
        statements = [s for s in inside if s.kind is SpanKind.CLIENT]
        assert statements, [s.name for s in inside]
        assert all(s.parent is not None for s in statements)


async def test_spans_hold_no_password_token_or_statement_values(
    spans: InMemorySpanExporter, client: AsyncClient, user: SignedIn
) -> None:
    spans.clear()
    login = await client.post(
        "/api/v1/auth/login", data={"username": user.email, "password": PASSWORD}
    )
    token = login.json()["access_token"]
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert (login.status_code, me.status_code) == (200, 200)

    finished = spans.get_finished_spans()
    assert len(server_spans(finished)) == 2
    attributes = [(key, str(v)) for span in finished for key, v in (span.attributes or {}).items()]
    assert any(key == "db.statement" for key, _ in attributes)
    secrets = [PASSWORD, token, token.split(".")[2], user.email, login.json()["refresh_token"]]
    leaks = [(key, text) for key, text in attributes if any(s in text for s in secrets)]
    assert not leaks
    assert not [key for key, _ in attributes if "authorization" in key.lower()]


async def test_log_lines_of_a_traced_request_carry_its_trace_and_span_ids(
    migrated_database: str,
) -> None:
    settings = make_settings(
        migrated_database,
        environment="production",
        jwt_secret=PRODUCTION_SECRET,
        cors_origins=["https://app.example.com"],
        email_delivery="log",
        log_level="INFO",
    )
    stream = io.StringIO()
    with root_logger_restored() as root:
        app = create_app(settings)
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        try:
            with traced(app) as exporter:
                async with AsyncClient(
                    transport=ASGITransport(app=app), base_url="http://test"
                ) as http:
                    assert (await http.get("/api/v1/users/me")).status_code == 401
        finally:
            await app.state.database.dispose()

    [server] = server_spans(exporter.get_finished_spans())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [access] = [line for line in lines if line["logger"] == "app.access"]
    assert access["trace_id"] == format(server.context.trace_id, "032x")
    assert len(access["span_id"]) == 16
    assert access["route"] == "/api/v1/users/me"


def test_tracing_is_off_unless_an_exporter_or_an_endpoint_is_set(migrated_database: str) -> None:
    def exporter(**overrides: object) -> SpanExporter | None:
        return tracing.span_exporter(make_settings(migrated_database, **overrides))

    assert exporter() is None
    assert exporter(otel_traces_exporter="none", otel_exporter_otlp_endpoint="http://c") is None
    assert isinstance(exporter(otel_traces_exporter="console"), ConsoleSpanExporter)
    otlp = exporter(otel_exporter_otlp_endpoint="http://collector:4318/")
    assert isinstance(otlp, OTLPSpanExporter)
    assert otlp._endpoint == "http://collector:4318/v1/traces"
