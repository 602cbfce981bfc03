"""Settings read once from the environment and `.env`."""

import json
from email.utils import parseaddr
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.core.dialect import ASYNC_DRIVERNAME, DIALECT_NAME, POOLERS

MIN_SECRET_BYTES = 32
# Values that appear in examples and tutorials; production refuses them as secrets.
PLACEHOLDER_SECRETS = frozenset(
    {"change-me", "changeme", "secret", "your-secret-key", "jwt-secret", "please-change-me"}
)

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def to_async_url(value: str) -> str:
    """Accept the plain URL form (`dialect://user:password@host/db`) and pick the async driver."""
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ValueError(f"DATABASE_URL is not a valid database URL: {exc}") from None
    dialect, _, driver = url.drivername.partition("+")
    if dialect != DIALECT_NAME:
        raise ValueError(
            f"DATABASE_URL must be a {DIALECT_NAME} URL (got '{dialect}'); "
            f"this service was generated for {DIALECT_NAME}"
        )
    expected_driver = ASYNC_DRIVERNAME.partition("+")[2]
    if driver and driver != expected_driver:
        raise ValueError(
            f"DATABASE_URL names the driver '{driver}'; this service uses '{expected_driver}' "
            f"(write '{DIALECT_NAME}://...' and the right driver is chosen)"
        )
    return url.set(drivername=ASYNC_DRIVERNAME).render_as_string(hide_password=False)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: Literal["local", "test", "production"] = "local"
    database_url: str = Field(min_length=1)
    db_pool_size: int = Field(default=20, ge=1, le=500)
    db_max_overflow: int = Field(default=0, ge=0, le=500)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    # What sits between the service and the database (app/core/dialect.py, POOLERS).
    db_pooler: str = "none"

    jwt_secret: SecretStr
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    access_token_expire_minutes: int = Field(default=30, ge=1, le=60 * 24 * 30)
    # Each refresh token's lifetime, and a session's however often it is refreshed; both
    # may be fractional (tests use seconds).
    refresh_token_expire_days: float = Field(default=14, gt=0, le=365)
    session_max_days: float = Field(default=30, gt=0, le=365)
    # Open sessions kept per user; a login beyond it closes the oldest.
    max_sessions_per_user: int = Field(default=20, ge=1, le=1000)
    bcrypt_rounds: int = Field(default=12, ge=4, le=31)

    # Failed logins for one account from one client address before that pair is locked,
    # and the window they are counted in (which is also how long the lock lasts).
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_minutes: int = Field(default=15, ge=1)
    # Failed logins from one address, whichever accounts they name, in the same window.
    login_max_failures_per_address: int = Field(default=50, ge=1)
    # Failed logins for one account from all addresses together, per hour.
    login_max_failures_per_account: int = Field(default=100, ge=1)
    # Registrations attempted from one address per hour, refused ones included.
    register_max_per_address_per_hour: int = Field(default=20, ge=1)
    # Logins and registrations waiting for a password hash before new ones get 503; by
    # default about HASHING_QUEUE_SECONDS of work at the configured bcrypt cost.
    hashing_queue_limit: int | None = Field(default=None, ge=1)
    # Seconds a refusal (429 or 503) waits before it is sent, holding no place in the queue.
    refusal_pause_seconds: float = Field(default=1.0, ge=0, le=60)
    # Proxies (addresses or networks) whose X-Forwarded-For names the client.
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = []

    cors_origins: Annotated[list[str], NoDecode] = [
        "http://localhost:3000",
        "http://localhost:5173",
    ]
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Prometheus metrics of every worker, served on a port of their own (0: not served).
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"  # noqa: S104  # scraped from outside the container
    # Traces, named as OpenTelemetry names them; off unless an exporter or endpoint is set.
    otel_traces_exporter: Literal["otlp", "console", "none"] | None = None
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str | None = None

    first_admin_email: str | None = None
    first_admin_password: SecretStr | None = None

    # Outgoing email: password resets and address verification. "smtp" sends through
    # SMTP_HOST; "log" writes each message to the log instead. Empty: "smtp" when
    # SMTP_HOST is set, else "log" (which production accepts only when chosen).
    email_delivery: Literal["smtp", "log"] | None = None
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    # none: plain text (a local catcher); starttls: upgrade after connecting (port 587);
    # ssl: TLS from the first byte (port 465).
    smtp_tls: Literal["none", "starttls", "ssl"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # The sender: an address, or "Name <address>"; without a name, the project's is used.
    email_from: str = "no-reply@localhost"
    # Seconds before the first retry of a failed delivery; each next one waits 5 times longer.
    email_retry_seconds: float = Field(default=2.0, ge=0, le=600)
    # The front end's base URL: links in emails are FRONTEND_URL/reset-password?token=...
    # and FRONTEND_URL/verify-email?token=...
    frontend_url: str = "http://localhost:5173"
    password_reset_expire_minutes: int = Field(default=30, ge=1, le=24 * 60)
    # Reset emails per account per hour; more requests are answered alike and send nothing.
    password_reset_max_per_hour: int = Field(default=3, ge=1)
    email_verify_expire_hours: int = Field(default=48, ge=1, le=24 * 30)
    # Verification emails per address per hour, the one sent at registration included.
    email_verify_max_per_hour: int = Field(default=3, ge=1)
    # Whether a login with the right password but an unverified email is refused (403).
    require_verified_email: bool = False

    @field_validator("database_url")
    @classmethod
    def _async_database_url(cls, value: str) -> str:
        return to_async_url(value)

    @field_validator("db_pooler")
    @classmethod
    def _known_pooler(cls, value: str) -> str:
        if value not in POOLERS:
            raise ValueError(f"DB_POOLER must be one of: {', '.join(POOLERS)} (got {value!r})")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: Any) -> Any:
        # Accept a JSON list or the friendlier comma-separated form.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @field_validator(
        "hashing_queue_limit",
        "email_delivery",
        "smtp_host",
        "smtp_username",
        "smtp_password",
        "otel_traces_exporter",
        "otel_exporter_otlp_endpoint",
        "otel_service_name",
        mode="before",
    )
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        # `HASHING_QUEUE_LIMIT=` (as in .env.example) means: derive it from the cost;
        # `SMTP_HOST=`: no mail server; `OTEL_TRACES_EXPORTER=`: as if it were not set.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("email_from")
    @classmethod
    def _sender_address(cls, value: str) -> str:
        _, address = parseaddr(value)
        local, _, domain = address.rpartition("@")
        if not local or not domain or any(ch.isspace() for ch in address):
            raise ValueError(f"not an email address, nor 'Name <address>': {value!r}")
        return value

    @field_validator("frontend_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment: links append their own")
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_proxies(cls, value: Any) -> Any:
        # A comma-separated list of addresses or networks: "10.0.0.0/8, 192.168.1.7".
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            try:
                return [ip_network(part, strict=False) for part in value]
            except ValueError as exc:
                raise ValueError(f"not an IP address or network: {exc}") from None
        return value

    @model_validator(mode="after")
    def _lifetimes_in_order(self) -> "Settings":
        if self.refresh_token_expire_days > self.session_max_days:
            raise ValueError(
                "REFRESH_TOKEN_EXPIRE_DAYS must not exceed SESSION_MAX_DAYS "
                f"({self.refresh_token_expire_days:g} > {self.session_max_days:g})"
            )
        return self

    @model_validator(mode="after")
    def _email_delivery(self) -> "Settings":
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD must be set together")
        if self.email_delivery is None:
            if self.smtp_host is None and self.is_production:
                raise ValueError(
                    "SMTP_HOST is required in production: without it no password reset or "
                    "verification email can be sent (set EMAIL_DELIVERY=log to write them "
                    "to the log instead, on purpose)"
                )
            self.email_delivery = "log" if self.smtp_host is None else "smtp"
        if self.email_delivery == "smtp" and self.smtp_host is None:
            raise ValueError("EMAIL_DELIVERY=smtp needs SMTP_HOST")
        return self

    @model_validator(mode="after")
    def _production_requirements(self) -> "Settings":
        if self.environment != "production":
            return self
        secret = self.jwt_secret.get_secret_value()
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes in production; "
                'generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
            )
        if secret.strip().lower() in PLACEHOLDER_SECRETS or "change-me" in secret.lower():
            raise ValueError("JWT_SECRET is a placeholder; set a random secret in production")
        if "*" in self.cors_origins:
            raise ValueError("CORS_ORIGINS must list explicit origins in production, not '*'")
        if self.smtp_host is not None and self.email_delivery != "log":
            # Mail from or links to this machine's loopback reach nobody.
            if parseaddr(self.email_from)[1].rpartition("@")[2].lower() == "localhost":
                raise ValueError("EMAIL_FROM must be an address of your domain in production")
            if urlsplit(self.frontend_url).hostname in LOOPBACK_HOSTS:
                raise ValueError("FRONTEND_URL must be the front end's public URL in production")
        return self

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def traces_exporter(self) -> str | None:
        """Where spans go: `console`, `otlp`, or None when tracing is off. An endpoint
        alone means OTLP, as in OpenTelemetry's own configuration."""
        if self.otel_traces_exporter is not None:
            return None if self.otel_traces_exporter == "none" else self.otel_traces_exporter
        return "otlp" if self.otel_exporter_otlp_endpoint else None


@lru_cache
def get_settings() -> Settings:
    return Settings()  # values come from the environment


def load_settings() -> Settings:
    """The settings, or exit with a message naming each bad variable."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(part) for part in error['loc']).upper() or 'settings'}: "
            f"{error['msg']}"
            for error in exc.errors()
        )
        raise SystemExit(f"Invalid configuration:\n{problems}") from None
