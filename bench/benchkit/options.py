"""What one benchmark run was asked to do (filled in from the command line by bench/run.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchkit.wrk import WrkSettings

WORKLOADS = ("health", "me", "list", "create", "login", "health-under-login")
LARGE_WORKLOAD = "list-large"


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
    command: str
