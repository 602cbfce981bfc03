"""Hostile or malformed requests get clear 4xx answers, safe headers and no internals."""

import re
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from app.api.deps import get_current_user
from app.core.config import Settings
from app.main import create_app
from app.models.user import Principal
from tests.conftest import JSON_HEADERS, SignedIn, as_json, close_app, make_settings

MAX_BODY_BYTES = 4096
ALLOWED_ORIGIN = "https://app.example.com"
GENERATED_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def settings(migrated_database: str) -> Settings:
    return make_settings(
        migrated_database, max_body_bytes=MAX_BODY_BYTES, cors_origins=[ALLOWED_ORIGIN]
    )


async def test_malformed_json_body_is_rejected_with_422(client: AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        content=b'{"email": "a@example.com", "password": ',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid"
    assert error["loc"][0] == "body"


async def test_wrong_field_types_are_rejected_with_422_naming_each_field(
    client: AsyncClient,
) -> None:
    response = await client.post(
        "/api/v1/auth/register", json={"email": 12345, "password": ["not", "a", "string"]}
    )

    assert response.status_code == 422
    locations = {tuple(error["loc"]) for error in response.json()["detail"]}
    assert locations == {("body", "email"), ("body", "password")}


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_a_path_that_is_not_a_uuid_names_no_resource(
    client: AsyncClient, admin: SignedIn, method: str
) -> None:
    # Ids are matched as UUIDs in the route itself, so anything else is simply not there.
    response = await client.request(
        method, "/api/v1/users/not-a-uuid", headers=admin.headers, json={}
    )

    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


async def test_unsupported_method_is_405_listing_every_allowed_method(
    client: AsyncClient, user: SignedIn
) -> None:
    response = await client.delete("/api/v1/users/me", headers=user.headers)

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, PATCH"


@pytest.mark.parametrize(
    "params",
    [
        {"offset": "-1"},
        {"limit": "0"},
        {"limit": "101"},
        {"offset": "1000000001"},
        {"limit": "ten"},
        {"offset": "1.5"},
    ],
    ids=[
        "negative-offset",
        "zero-limit",
        "limit-over-100",
        "offset-over-a-billion",
        "non-integer-limit",
        "fractional-offset",
    ],
)
async def test_out_of_range_paging_is_rejected_with_422(
    client: AsyncClient, admin: SignedIn, params: dict[str, str]
) -> None:
    response = await client.get("/api/v1/users", params=params, headers=admin.headers)

    assert response.status_code == 422
    [name] = params
    assert [error["loc"] for error in response.json()["detail"]] == [["query", name]]


async def test_paging_at_its_limits_is_accepted(client: AsyncClient, admin: SignedIn) -> None:
    largest_page = await client.get("/api/v1/users", params={"limit": 100}, headers=admin.headers)
    furthest_offset = await client.get(
        "/api/v1/users", params={"offset": 1_000_000_000}, headers=admin.headers
    )

    assert largest_page.status_code == 200
    assert largest_page.json()["total"] == 1
    assert furthest_offset.status_code == 200
    assert furthest_offset.json() == {"items": [], "total": 1}


async def test_body_declared_over_the_limit_is_rejected_with_413(client: AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        content=b"x" * (MAX_BODY_BYTES + 1),
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert str(MAX_BODY_BYTES) in response.json()["detail"]


async def test_streamed_body_over_the_limit_is_rejected_with_413(client: AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "a@example.com", "full_name": "'
        for _ in range(MAX_BODY_BYTES // 512 + 1):
            yield b"x" * 512
        yield b'", "password": "long enough password"}'

    response = await client.post(
        "/api/v1/auth/register",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert str(MAX_BODY_BYTES) in response.json()["detail"]


async def test_body_under_the_limit_is_accepted(client: AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "a@example.com", "password": "long enough password"},
    )

    assert response.status_code == 201


async def test_responses_carry_security_headers(client: AsyncClient) -> None:
    response = await client.get("/health")

    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


async def test_login_responses_are_never_cached(client: AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/login", data={"username": "nobody@example.com", "password": "wrong pass"}
    )

    assert response.status_code == 401
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_cors_preflight_from_a_configured_origin_is_allowed(client: AsyncClient) -> None:
    response = await client.options(
        "/api/v1/auth/login",
        headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]


async def test_cors_preflight_from_another_origin_is_not_allowed(client: AsyncClient) -> None:
    response = await client.options(
        "/api/v1/auth/login",
        headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"},
    )

    assert "access-control-allow-origin" not in response.headers


async def test_valid_incoming_request_id_is_echoed(client: AsyncClient) -> None:
    request_id = "req-2024.01:abc_DEF"

    response = await client.get("/health", headers={"X-Request-ID": request_id})

    assert response.headers["x-request-id"] == request_id


async def test_missing_request_id_is_generated(client: AsyncClient) -> None:
    response = await client.get("/health")

    assert GENERATED_REQUEST_ID.match(response.headers["x-request-id"])


@pytest.mark.parametrize(
    "request_id", ["has spaces in it", "x" * 300, "semi;colon"], ids=["spaces", "300-chars", "semi"]
)
async def test_invalid_incoming_request_id_is_replaced(
    client: AsyncClient, request_id: str
) -> None:
    response = await client.get("/health", headers={"X-Request-ID": request_id})

    assert response.headers["x-request-id"] != request_id
    assert GENERATED_REQUEST_ID.match(response.headers["x-request-id"])


async def test_unexpected_error_answers_500_without_internals(app: FastAPI) -> None:
    def broken_authentication() -> Principal:
        raise RuntimeError("internal detail: connection string and stack")

    app.dependency_overrides[get_current_user] = broken_authentication
    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/api/v1/users/me", headers={"Authorization": "Bearer x"})

    assert response.status_code == 500
    # The request id in the body is the one in the log record and in the header.
    assert response.json() == {
        "detail": "Internal server error",
        "request_id": response.headers["x-request-id"],
    }
    assert "Traceback" not in response.text
    assert "internal detail" not in response.text


async def test_unexpected_error_response_keeps_request_id_and_headers(app: FastAPI) -> None:
    def broken_authentication() -> Principal:
        raise RuntimeError("internal detail")

    app.dependency_overrides[get_current_user] = broken_authentication
    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get(
            "/api/v1/users/me",
            headers={"X-Request-ID": "trace-500", "Origin": ALLOWED_ORIGIN},
        )

    assert response.status_code == 500
    # The id is how an operator finds this failure's traceback in the log.
    assert response.headers.get("x-request-id") == "trace-500"
    assert response.headers.get("x-content-type-options") == "nosniff"
    # Without it a browser hides the 500 from the front end behind a CORS error.
    assert response.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN


@pytest.mark.parametrize(
    "password",
    ["Sh0rt!z", "T00-long-secret-" * 5],
    ids=["too-short", "too-long"],
)
async def test_validation_error_does_not_echo_the_password(
    client: AsyncClient, password: str
) -> None:
    response = await client.post(
        "/api/v1/auth/register", json={"email": "a@example.com", "password": password}
    )

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "password"]]
    assert password not in response.text


async def test_wildcard_origin_outside_production_never_allows_credentials(
    test_database_url: str,
) -> None:
    app = create_app(make_settings(test_database_url, cors_origins=["*"]))
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.options(
            "/api/v1/auth/login",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
            },
        )
    await close_app(app)

    assert response.headers.get("access-control-allow-credentials") is None
    assert response.headers.get("access-control-allow-origin") == "*"


NUL, SURROGATE = "nul\x00here", "lone \ud800 surrogate"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("full_name", NUL, "NUL"),
        ("full_name", SURROGATE, "surrogate"),
        ("full_name", "x" * 256, "at most 255"),
        ("email", f"a{SURROGATE}@example.com", "surrogate"),
        ("email", "a" * 250 + "@example.com", "too long"),
        ("password", "long enough " + NUL, "NUL"),
        ("password", "long enough " + SURROGATE, "surrogate"),
    ],
)
async def test_registration_refuses_text_no_database_stores(
    client: AsyncClient, field: str, value: str, message: str
) -> None:
    body = {"email": "new@example.com", "password": "long enough", field: value}
    response = await client.post(
        "/api/v1/auth/register", content=as_json(body), headers=JSON_HEADERS
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]
    assert message in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("username", "x" * 255, "at most 254"),
        ("username", NUL, "NUL"),
        ("password", NUL, "NUL"),
        ("password", "x" * 1025, "at most 1024"),
        ("scope", NUL, "NUL"),
        ("grant_type", "client_credentials", "pattern"),
    ],
)
async def test_the_login_form_refuses_over_long_and_unstorable_text(
    client: AsyncClient, field: str, value: str, message: str
) -> None:
    form = {"username": "someone@example.com", "password": "some password", field: value}
    response = await client.post("/api/v1/auth/login", data=form)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]
    assert message in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("full_name", [NUL, SURROGATE, "x" * 256])
async def test_a_profile_update_refuses_text_no_database_stores(
    client: AsyncClient, user: SignedIn, full_name: str
) -> None:
    response = await client.patch(
        "/api/v1/users/me",
        content=as_json({"full_name": full_name}),
        headers={**user.headers, **JSON_HEADERS},
    )
    assert response.status_code == 422, response.text


async def test_a_password_change_refuses_an_unstorable_current_password(
    client: AsyncClient, user: SignedIn
) -> None:
    response = await client.post(
        "/api/v1/users/me/password",
        content=as_json({"current_password": SURROGATE, "new_password": "a new password"}),
        headers={**user.headers, **JSON_HEADERS},
    )
    assert response.status_code == 422, response.text
