"""One logging set-up: JSON lines in production, readable lines elsewhere."""

import logging.config
from typing import Any

from app.core.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s %(message)s"
# Fields of the access log that JSON lines carry as their own keys.
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(settings: Settings) -> None:
    formatter: dict[str, Any] = (
        {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FORMAT,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
        if settings.is_production
        else {"format": TEXT_FORMAT}
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"default": formatter},
            "handlers": {
                "default": {"class": "logging.StreamHandler", "formatter": "default"},
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
