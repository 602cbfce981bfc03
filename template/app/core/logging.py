"""One logging set-up: JSON lines in production, readable lines elsewhere."""

import logging.config
import time
from contextvars import ContextVar
from typing import Any

import orjson

from app.core.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s %(message)s"

# The id of the request being answered, set by the request log (app/core/middleware.py),
# so that every line logged while answering it carries it.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; the others are the `extra` fields of a call.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class RequestContext(logging.Filter):
    """Adds the id of the request being answered to each record logged meanwhile."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            current = request_id.get()
            if current is not None:
                record.request_id = current
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `time`, `level`, `logger` and `message`, then each extra
    field of the record (`request_id`, `status`, ...) under its own key, and `exc_info`
    with the traceback of an exception. Written by orjson, which costs a request's line
    a few microseconds instead of tens."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        # logging's own format (2026-12-01 13:23:03,470); the part that changes once a
        # second is formatted once a second.
        second, stamp = self._second
        if int(record.created) != second:
            second = int(record.created)
            stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, stamp)
        return f"{stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(settings: Settings) -> None:
    # No line shows where it was logged from, so logging need not look it up (a walk up
    # the stack on every call; see "Optimization" in the logging HOWTO).
    logging._srcfile = None
    # Nor the thread and process names and the process id, which no line shows either.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if settings.is_production else {"format": TEXT_FORMAT}
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"default": formatter},
            "filters": {"request": {"()": RequestContext}},
            "handlers": {
                "default": {
                    "class": "logging.StreamHandler",
                    "formatter": "default",
                    "filters": ["request"],
                },
            },
            "root": {"handlers": ["default"], "level": settings.log_level},
            "loggers": {
                # The app logs each request once; uvicorn's access log would repeat it.
                "uvicorn.access": {"handlers": [], "propagate": False},
                "uvicorn.error": {"handlers": [], "propagate": True},
                "uvicorn": {"handlers": [], "propagate": True},
            },
        }
    )
