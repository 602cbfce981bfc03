"""What one benchmark run was asked to do (filled in from the command line by bench/run.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchkit.wrk import WrkSettings

WORKLOADS = (
    "health",
    "me",
    "list",
    "create",
    "refresh",
    "login",
    "health-under-login",
    "me-under-login",
)
# The refresh workload spends a session's refresh token per request; it needs as many
# sessions (logins) as connections, made this many at a time (fewer than LOGIN_MAX_FAILURES,
# which also bounds one account's logins in flight from one address).
REFRESH_LOGINS_AT_ONCE = 4
LARGE_WORKLOAD = "list-large"
# Measured while a login wrk runs at full tilt at the row's connection count.
UNDER_LOGIN_WORKLOADS = ("health-under-login", "me-under-login")
# Connections of the `me` wrk in me-under-login, and of the plain `me` row it is compared with.
ME_UNDER_LOGIN_CONNECTIONS = 16
# Refusals of a login, with Retry-After, counted apart from errors: 503 from the bounded
# hashing queue, and 429 when more logins of the benchmark's one account from its one
# address are in flight than LOGIN_MAX_FAILURES allows (each is checked before it is
# known to be right). Load shedding by design.
LOGIN_REFUSED_STATUSES = (429, 503)
LOGIN_REFUSED_TEXT = "/".join(map(str, LOGIN_REFUSED_STATUSES))
# The service's LOG_LEVEL: production's default, so the per-request JSON log is written.
SERVICE_LOG_LEVEL = "INFO"


@dataclass(frozen=True)
class Options:
    database: str
    workers: int
    loop: str
    duration: int
    warmup: int
    connections: list[int]
    repeat: int
    workloads: list[str]
    large: bool
    wrk: WrkSettings
    bcrypt_rounds: int
    probe_connections: int
    probe_delay_ms: float
    output: Path | None
    keep: bool
    profile_dir: Path | None
    drain_timeout: float
    max_noise: float
    quiet_timeout: float
    src: Path
    vcs_ref: str | None
    server_urls: dict[str, str]
    extra_env: dict[str, str]
    # What the service connects through: the database itself, or a PgBouncer the run starts.
    pooler: str
    command: str
