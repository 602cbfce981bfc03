"""Sign-in sessions and the refresh tokens that keep them going."""

import uuid
from datetime import datetime

from sqlmodel import Field, SQLModel

from app.core.client import ADDRESS_MAX_LENGTH
from app.models.types import UTCDateTime, utcnow

USER_AGENT_MAX_LENGTH = 255
# A SHA-256 digest in hexadecimal.
TOKEN_HASH_LENGTH = 64


class AuthSession(SQLModel, table=True):
    """One login: its access tokens carry its id (`sid`), its refresh tokens belong to it.

    A session is open until it is revoked (`revoked_at`) or reaches `expires_at`, however
    often it is refreshed. Every request's current-user query checks that it is open.
    """

    __tablename__ = "auth_sessions"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # The login, or the last refresh: requests with an access token do not write it.
    last_used_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    user_agent: str = Field(default="", max_length=USER_AGENT_MAX_LENGTH)
    client_address: str = Field(default="", max_length=ADDRESS_MAX_LENGTH)


class RefreshToken(SQLModel, table=True):
    """A refresh token, known only by its hash. A spent one is kept until it expires, so
    that presenting it again is recognised as reuse and ends its session."""

    __tablename__ = "refresh_tokens"

    token_hash: str = Field(primary_key=True, max_length=TOKEN_HASH_LENGTH)
    session_id: uuid.UUID = Field(foreign_key="auth_sessions.id", ondelete="CASCADE", index=True)
    # Indexed for pruning.
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    spent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
