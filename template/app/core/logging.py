"""One logging set-up: JSON lines in production, readable lines elsewhere."""

import logging.config
import os
import time
from contextvars import ContextVar
from typing import Any, TextIO

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
        return self.timestamp(record.created, record.msecs)

    def timestamp(self, created: float, msecs: float) -> str:
        # logging's own format (2026-12-01 13:23:03,470); the part that changes once a
        # second is formatted once a second.
        second, stamp = self._second
        if int(created) != second:
            second = int(created)
            stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, stamp)
        return f"{stamp},{int(msecs):03d}"

    def fields_line(self, created: float, name: str, message: str, fields: dict[str, Any]) -> bytes:
        """The line format_line() writes for an INFO record of logger `name` with these
        extra `fields`, made without the record."""
        stamp = self.timestamp(created, (created - int(created)) * 1000)
        return self._line(stamp, "INFO", name, message, fields)

    def format(self, record: logging.LogRecord) -> str:
        return self.format_line(record)[:-1].decode()

    def format_line(self, record: logging.LogRecord) -> bytes:
        """The record as one line of UTF-8 JSON, newline included, ready to be written."""
        extra = {
            key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES
        }
        if record.exc_info:
            extra["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            extra["stack_info"] = self.formatStack(record.stack_info)
        return self._line(
            self.formatTime(record), record.levelname, record.name, record.getMessage(), extra
        )

    @staticmethod
    def _line(stamp: str, level: str, name: str, message: str, fields: dict[str, Any]) -> bytes:
        entry = {"time": stamp, "level": level, "logger": name, "message": message, **fields}
        return orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE)


class JsonLineHandler(logging.StreamHandler[TextIO]):
    """Writes each record its JsonFormatter formats (any other formatter's too) with one
    `os.write` to the stream's file descriptor: no text layer and no buffer in between,
    so each line is whole and leaves the process when it is logged. To a stream without
    a file descriptor (an `io.StringIO`) it writes as StreamHandler does."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._fd = _file_descriptor(self.stream)

    def setStream(self, stream: TextIO) -> TextIO | None:  # noqa: N802
        previous = super().setStream(stream)
        self._fd = _file_descriptor(self.stream)
        return previous

    def emit(self, record: logging.LogRecord) -> None:
        if self._fd is None:
            super().emit(record)
            return
        try:
            formatter = self.formatter
            if isinstance(formatter, JsonFormatter):
                line = formatter.format_line(record)
            else:
                line = (self.format(record) + self.terminator).encode(errors="backslashreplace")
            # Handler.handle holds the handler's lock, so a write cut short (by a signal)
            # is finished before another thread's line starts.
            self._write(self._fd, line)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    @staticmethod
    def _write(fd: int, line: bytes) -> None:
        written = os.write(fd, line)
        while written < len(line):
            line = line[written:]
            written = os.write(fd, line)

    def write_fields(self, logger: logging.Logger, message: str, fields: dict[str, Any]) -> bool:
        """Write the INFO line of `logger` with these `fields` straight away, as emit()
        would write the record, when this handler alone would write it and nothing could
        change it on the way: no other handler, filter or record factory anywhere between
        `logger` and the root. Returns False, having written nothing, otherwise."""
        formatter, fd = self.formatter, self._fd
        if (
            fd is None
            or type(formatter) is not JsonFormatter
            or self.level > logging.INFO
            or len(self.filters) != 1
            or type(self.filters[0]) is not RequestContext
            or logging.getLogRecordFactory() is not logging.LogRecord
        ):
            return False
        current: logging.Logger | None = logger
        while current is not None:
            if current.filters or current.handlers != ([self] if current.parent is None else []):
                return False
            if not current.propagate and current.parent is not None:
                return False
            current = current.parent
        try:
            line = formatter.fields_line(time.time(), logger.name, message, fields)
        except orjson.JSONEncodeError:
            return False  # the record's way reports it as logging reports a bad record
        self.acquire()
        try:
            self._write(fd, line)
        except OSError:
            return False
        finally:
            self.release()
        return True


def _file_descriptor(stream: TextIO) -> int | None:
    """The stream's file descriptor, once what it holds is written out (so that no line
    overtakes it), or None when it has none."""
    try:
        stream.flush()
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


def configure_logging(settings: Settings) -> None:
    # No line shows where it was logged from, so logging need not look it up (a walk up
    # the stack on every call; see "Optimization" in the logging HOWTO).
    logging._srcfile = None
    # Nor the thread and process names and the process id, which no line shows either.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if settings.is_production:
        formatter: dict[str, Any] = {"()": JsonFormatter}
        handler_class = f"{__name__}.JsonLineHandler"
    else:
        formatter = {"format": TEXT_FORMAT}
        handler_class = "logging.StreamHandler"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"default": formatter},
            "filters": {"request": {"()": RequestContext}},
            "handlers": {
                "default": {
                    "class": handler_class,
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
