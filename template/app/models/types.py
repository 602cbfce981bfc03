"""Column types shared by the tables."""

from datetime import UTC, datetime

from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from app.core.dialect import DATETIME_TYPE


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
