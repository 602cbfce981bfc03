"""Shapes shared by several resources: pages and page parameters."""

from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

MAX_PAGE_SIZE = 100
# Far beyond any real page, and small enough for every database's OFFSET type.
MAX_OFFSET = 1_000_000_000


class PageParams(BaseModel):
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET)] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = 50


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int


class StrictModel(BaseModel):
    """A request body that refuses fields it does not know (such as `role` at registration)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ErrorMessage(BaseModel):
    """The body of every error this service answers, except validation errors (422)."""

    detail: str


Responses = dict[int | str, dict[str, Any]]


def error(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry for an error answered with ErrorMessage."""
    return {"model": ErrorMessage, "description": description}
