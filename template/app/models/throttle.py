"""Attempt counters behind login throttling and the registration limit."""

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.core.client import ADDRESS_MAX_LENGTH
from app.models.types import UTCDateTime
from app.models.user import EMAIL_MAX_CHARS

SCOPE_MAX_LENGTH = 16


class AttemptCounter(SQLModel, table=True):
    """Attempts counted per key in a fixed window, kept in the database so that every
    worker process and every replica counts the same attempts.

    A key is a scope ("login", "login-address", ...) with the account's email and the
    client's address; a part that is not in the key is the empty string. An attempt is
    counted before the work it limits and settled after it.
    """

    __tablename__ = "attempt_counters"

    scope: str = Field(primary_key=True, max_length=SCOPE_MAX_LENGTH)
    email: str = Field(primary_key=True, max_length=EMAIL_MAX_CHARS)
    address: str = Field(primary_key=True, max_length=ADDRESS_MAX_LENGTH)
    # Attempts in this window, those still being checked (a password being hashed) included.
    attempts: int
    # Of those, the ones still being checked: the rest are settled failures.
    in_flight: int = Field(default=0)
    window_started_at: datetime = Field(sa_type=UTCDateTime)
