"""Request and response bodies for users and authentication."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from app.core.roles import Role
from app.core.security import PASSWORD_MAX_BYTES, PASSWORD_MIN_CHARS, password_problem
from app.models.user import NAME_MAX_LENGTH
from app.schemas.common import PublicId, StrictModel, not_null


def _check_password(value: str) -> str:
    problem = password_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# Emails are compared case-insensitively everywhere, so they are stored lower-cased.
# 254 characters is the longest address RFC 5321 (and email-validator) accepts.
EMAIL_MAX_CHARS = 254
Email = Annotated[EmailStr, Field(max_length=EMAIL_MAX_CHARS), AfterValidator(str.lower)]
# The schema states the character bounds; the validator also enforces bcrypt's 72 bytes.
NewPassword = Annotated[
    str,
    Field(min_length=PASSWORD_MIN_CHARS, max_length=PASSWORD_MAX_BYTES),
    AfterValidator(_check_password),
]
FullName = Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH)]


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
    created_at: datetime


class UserSelfUpdate(StrictModel):
    """What users may change about themselves: never their role or active flag."""

    email: Email | SkipJsonSchema[None] = None
    full_name: FullName | None = None

    _email_not_null = field_validator("email", mode="before")(not_null)


class UserAdminUpdate(StrictModel):
    # Strict mode would want a Role instance; a JSON body carries its value.
    role: Annotated[Role, Field(strict=False)] | SkipJsonSchema[None] = None
    is_active: bool | SkipJsonSchema[None] = None
    full_name: FullName | None = None

    _not_null = field_validator("role", "is_active", mode="before")(not_null)


class PasswordChange(StrictModel):
    current_password: str = Field(max_length=1024)
    new_password: NewPassword


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105  # the scheme, not a secret
    expires_in: int = Field(description="Seconds until the token expires")
