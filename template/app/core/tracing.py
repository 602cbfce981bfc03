"""OpenTelemetry traces of requests and their database statements, off unless asked for.

On when OTEL_TRACES_EXPORTER (`console` or `otlp`) or OTEL_EXPORTER_OTLP_ENDPOINT is set,
as OpenTelemetry's own configuration has it. Each request is a trace: the server span
of FastAPI's instrumentation, with SQLAlchemy's spans of its statements inside. Log
lines written inside a span carry its `trace_id` and `span_id`.

Nothing secret reaches a span: statements are recorded with their placeholders, never
their values (SQLAlchemy's instrumentation does not record parameters), and no request
header is recorded, whatever OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_* say for those
that carry credentials.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from app.core import project
from app.core.config import Settings

# Liveness and readiness probes every few seconds would bury the requests worth seeing.
EXCLUDED_URLS = "/health"
# Headers never recorded, even if OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_* name them.
SECRET_HEADERS = ["authorization", "cookie", "set-cookie", "proxy-authorization"]


def install(app: FastAPI, settings: Settings) -> None:
    """Trace requests and their statements when the settings ask for an exporter."""
    exporter = span_exporter(settings)
    if exporter is None:
        return
    resource = Resource.create(
        {
            SERVICE_NAME: settings.otel_service_name or project.SLUG,
            SERVICE_VERSION: project.VERSION,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    instrument(app, provider)


def span_exporter(settings: Settings) -> SpanExporter | None:
    """The exporter the settings name, or None when tracing is off."""
    if settings.traces_exporter == "console":
        return ConsoleSpanExporter()
    if settings.traces_exporter == "otlp":
        # OTLP over HTTP; the endpoint is the collector's base URL, as in OpenTelemetry's
        # OTEL_EXPORTER_OTLP_ENDPOINT (its default: http://localhost:4318).
        base = settings.otel_exporter_otlp_endpoint or "http://localhost:4318"
        return OTLPSpanExporter(endpoint=f"{base.rstrip('/')}/v1/traces")
    return None


def instrument(app: FastAPI, provider: TracerProvider) -> None:
    """Trace `app`'s requests and its engine's statements into `provider`, and put the
    trace and span ids on log lines."""
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=EXCLUDED_URLS,
        # No span per chunk of a request or a response: one span per request.
        exclude_spans=["receive", "send"],
        http_capture_headers_sanitize_fields=SECRET_HEADERS,
    )
    SQLAlchemyInstrumentor().instrument(
        engine=app.state.database.engine.sync_engine,
        tracer_provider=provider,
        enable_commenter=False,
        # Its declared range stops below SQLAlchemy 2.1, which it traces all the same
        # (tests/test_tracing.py).
        skip_dep_check=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(TraceContext())

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def flushing_spans(app: FastAPI) -> AsyncIterator[Any]:
        try:
            async with inner(app) as state:
                yield state
        finally:
            provider.shutdown()  # sends the spans still buffered

    app.router.lifespan_context = flushing_spans


class TraceContext(logging.Filter):
    """Adds the current span's `trace_id` and `span_id` to each record logged inside it."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True
