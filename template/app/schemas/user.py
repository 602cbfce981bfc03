"""Request and response bodies for users and authentication."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from app.core.roles import Role
from app.core.security import PASSWORD_MAX_BYTES, PASSWORD_MIN_CHARS, password_problem
from app.models.user import EMAIL_MAX_CHARS, NAME_MAX_LENGTH
from app.schemas.common import PublicId, Storable, StrictModel, not_null


def _check_password(value: str) -> str:
    problem = password_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# Emails are compared case-insensitively everywhere, so they are stored lower-cased.
Email = Annotated[EmailStr, Field(max_length=EMAIL_MAX_CHARS), Storable, AfterValidator(str.lower)]
# The schema states the character bounds; the validator also enforces bcrypt's 72 bytes.
NewPassword = Annotated[
    str,
    Field(min_length=PASSWORD_MIN_CHARS, max_length=PASSWORD_MAX_BYTES),
    Storable,
    AfterValidator(_check_password),
]
# Form fields of the OAuth2 password grant that this service ignores.
OAUTH2_FIELD_MAX_CHARS = 1024
# A password being checked, not set: over 72 bytes it is simply wrong.
PASSWORD_CHECK_MAX_CHARS = 1024
Password = Annotated[str, Field(max_length=PASSWORD_CHECK_MAX_CHARS), Storable]
FullName = Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH), Storable]
OAuth2Field = Annotated[str, Field(max_length=OAUTH2_FIELD_MAX_CHARS), Storable]
# A token from an email link. Not stored, only hashed and looked up: any text up to this
# length that is not a live token of the right kind gets the same 400.
LinkToken = Annotated[str, Field(max_length=1024)]


class UserCreate(StrictModel):
    email: Email
    password: NewPassword
    full_name: FullName | None = None


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: PublicId
    email: str
    full_name: str | None
    role: str
    is_active: bool
    email_verified: bool
    created_at: datetime


class UserSelfUpdate(StrictModel):
    """What users may change about themselves: never their role or active flag. A new
    email needs `current_password`."""

    email: Email | SkipJsonSchema[None] = None
    full_name: FullName | None = None
    current_password: Password | SkipJsonSchema[None] = None

    _not_null = field_validator("email", "current_password", mode="before")(not_null)


class UserAdminUpdate(StrictModel):
    # Strict mode would want a Role instance; a JSON body carries its value.
    role: Annotated[Role, Field(strict=False)] | SkipJsonSchema[None] = None
    is_active: bool | SkipJsonSchema[None] = None
    full_name: FullName | None = None

    _not_null = field_validator("role", "is_active", mode="before")(not_null)


class PasswordChange(StrictModel):
    current_password: Password
    new_password: NewPassword


class LoginForm(BaseModel):
    """The OAuth2 password grant's form (RFC 6749, section 4.3.2), as Swagger's
    Authorize button sends it; `username` is the email."""

    grant_type: Annotated[str, Field(pattern="^password$")] | None = None
    username: Annotated[str, Field(min_length=1, max_length=EMAIL_MAX_CHARS), Storable]
    password: Password
    scope: OAuth2Field = ""
    client_id: OAuth2Field | None = None
    client_secret: OAuth2Field | None = None


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105  # the scheme, not a secret
    expires_in: int = Field(description="Seconds until the access token expires")
    refresh_token: str = Field(
        description="Spend it at /api/v1/auth/refresh for a new pair; each works once"
    )
    refresh_expires_in: int = Field(description="Seconds until the refresh token expires")


class PasswordResetRequest(StrictModel):
    email: Email


class PasswordReset(StrictModel):
    token: LinkToken
    new_password: NewPassword


class EmailVerification(StrictModel):
    token: LinkToken


class Accepted(BaseModel):
    """The answer to a request whose work goes on after it (an email to send)."""

    detail: str


class RefreshRequest(StrictModel):
    # Not stored, only hashed and looked up: any text up to this length gets the same
    # 401 when it is not a live refresh token.
    refresh_token: str = Field(max_length=1024)


class SessionPublic(BaseModel):
    id: PublicId
    created_at: datetime
    last_used_at: datetime = Field(description="The login, or the last refresh")
    user_agent: str
    client_address: str
    current: bool = Field(description="Whether this request's token belongs to it")
