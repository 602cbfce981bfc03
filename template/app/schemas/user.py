"""Request and response bodies for users and authentication."""

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, field_validator

from app.core.roles import Role
from app.core.security import password_problem
from app.models.user import EMAIL_MAX_LENGTH, NAME_MAX_LENGTH
from app.schemas.common import StrictModel


def _check_password(value: str) -> str:
    problem = password_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# Emails are compared case-insensitively everywhere, so they are stored lower-cased.
Email = Annotated[EmailStr, Field(max_length=EMAIL_MAX_LENGTH), AfterValidator(str.lower)]
NewPassword = Annotated[str, AfterValidator(_check_password)]
FullName = Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH)]


class UserCreate(StrictModel):
    email: Email
    password: NewPassword
    full_name: FullName | None = None


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    full_name: str | None
    role: str
    is_active: bool
    created_at: datetime


class UserSelfUpdate(StrictModel):
    """What users may change about themselves: never their role or active flag."""

    email: Email | None = None
    full_name: FullName | None = None

    @field_validator("email")
    @classmethod
    def _email_not_null(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError("email cannot be null")
        return value


class UserAdminUpdate(StrictModel):
    role: Role | None = None
    is_active: bool | None = None
    full_name: FullName | None = None

    @field_validator("role", "is_active")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null")
        return value


class PasswordChange(StrictModel):
    current_password: str = Field(max_length=1024)
    new_password: NewPassword


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105  # the scheme, not a secret
    expires_in: int = Field(description="Seconds until the token expires")
