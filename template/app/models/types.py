"""Column types shared by the tables."""

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, ColumnElement
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from app.core.dialect import DATETIME_TYPE, utc_timestamp


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, stored the same way on every database.

    Not every database keeps a time zone, so values are stored as naive UTC and given
    back as aware UTC datetimes.
    """

    impl = DATETIME_TYPE
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def read_columns(columns: Iterable[Column[Any]]) -> tuple[ColumnElement[Any], ...]:
    """`columns` as a read selects them: UTC timestamps the way the database hands them
    over cheapest (see utc_timestamp in app/core/dialect.py), the rest as they are."""
    return tuple(
        utc_timestamp(column) if isinstance(column.type, UTCDateTime) else column
        for column in columns
    )
