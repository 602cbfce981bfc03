"""Single-use tokens sent by email: password resets and address verifications."""

import uuid
from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from app.models.session import TOKEN_HASH_LENGTH
from app.models.types import UTCDateTime, utcnow
from app.models.user import EMAIL_MAX_LENGTH

PURPOSE_MAX_LENGTH = 16


class TokenPurpose(StrEnum):
    """What a token may be spent on, and on nothing else."""

    PASSWORD_RESET = "password-reset"  # noqa: S105  # a purpose, not a password
    VERIFY_EMAIL = "verify-email"


class AccountToken(SQLModel, table=True):
    """A token emailed to an account's address, known only by its hash.

    It works once (`used_at`), until `expires_at`, for its `purpose` alone, and only
    while the account still has the address it was sent to. A password reset also needs
    the password to be the one it was issued for (`password_stamp`): any change of
    password voids it. A new token of a purpose replaces the account's older ones.
    """

    __tablename__ = "account_tokens"

    token_hash: str = Field(primary_key=True, max_length=TOKEN_HASH_LENGTH)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    purpose: str = Field(max_length=PURPOSE_MAX_LENGTH)
    email: str = Field(max_length=EMAIL_MAX_LENGTH)
    # A digest of the password hash when a reset was issued; empty for verifications.
    password_stamp: str = Field(default="", max_length=TOKEN_HASH_LENGTH)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
