"""Shapes shared by several resources: pages and page parameters."""

import uuid
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

MAX_PAGE_SIZE = 100
# Far beyond any real page, and small enough for every database's OFFSET type.
MAX_OFFSET = 1_000_000_000


# An id in a response, written with str(). A database driver may return its own subclass
# of uuid.UUID, which pydantic serializes by a path that takes twice as long; str() is
# the same text either way. The schema stays that of a UUID.
PublicId = Annotated[
    uuid.UUID,
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "uuid"}),
]


class PageParams(BaseModel):
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET)] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = 50


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int


def not_null(value: Any) -> Any:
    """For PATCH bodies: a field may be left out, but not set to null."""
    if value is None:
        raise ValueError("may be omitted, but not null")
    return value


class StrictModel(BaseModel):
    """A request body that refuses unknown fields (such as `role` at registration) and
    values of the wrong JSON type (such as 0 for false)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorMessage(BaseModel):
    """The body of every error this service answers, except validation errors (422)."""

    detail: str


Responses = dict[int | str, dict[str, Any]]


def error(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry for an error answered with ErrorMessage."""
    return {"model": ErrorMessage, "description": description}
