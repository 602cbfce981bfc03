"""Shapes shared by several resources: pages and page parameters."""

import re
import uuid
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

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


# A lone surrogate is not a character: no database can store it, nor UTF-8 encode it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: Any) -> Any:
    """Refuse text that a database would refuse: NUL (some cannot store it) and
    lone surrogates (which no UTF-8 encoder accepts). Other types pass through."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if _LONE_SURROGATE.search(value):
            raise ValueError("must not contain lone surrogates (invalid Unicode)")
    return value


# Every string a request sends carries this check, after a length bound of its own that
# is at most its column's, so every database stores what the schema accepts:
# Annotated[str, Field(max_length=...), Storable]. (After the bound, so that the bound
# stays in the schema's own string check.)
Storable = BeforeValidator(check_text)


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
