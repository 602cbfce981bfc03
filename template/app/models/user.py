"""Users, and the caller of a request."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Field, SQLModel

from app.models.types import UTCDateTime, utcnow

EMAIL_MAX_LENGTH = 255
# The longest address RFC 5321 (and email-validator) accepts: what requests may send.
EMAIL_MAX_CHARS = 254
NAME_MAX_LENGTH = 255
ROLE_MAX_LENGTH = 32


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=EMAIL_MAX_LENGTH, unique=True, index=True)
    hashed_password: str = Field(max_length=255)
    full_name: str | None = Field(default=None, max_length=NAME_MAX_LENGTH)
    # A plain string, not a database enum: adding a role later needs no migration.
    role: str = Field(max_length=ROLE_MAX_LENGTH, index=True)
    is_active: bool = Field(default=True)
    # Whether the owner proved the address is theirs, by following a link sent to it.
    email_verified: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: their user row as read when the request began.

    A plain value, not an ORM object: authentication reads it with one SELECT of these
    columns, and code that changes the user loads the row in its own transaction.
    `session_id` is the sign-in session the caller's token belongs to (None where the
    value describes a user rather than a request's caller).
    """

    id: uuid.UUID
    email: str
    full_name: str | None
    role: str
    is_active: bool
    email_verified: bool
    created_at: datetime
    session_id: uuid.UUID | None = None
