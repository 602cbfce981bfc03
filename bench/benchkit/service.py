"""The rendered service: rendering it, running commands in its venv, and its uvicorn server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit.shell import BenchError, HttpRequest, http, run_cmd, uv_executable


def render(src: Path, dst: Path, database: str, vcs_ref: str | None) -> None:
    """Render the template with Copier's Python API (uncommitted edits are included)."""
    try:
        import copier
    except ImportError:
        raise BenchError(
            "copier is not importable; run with the repository venv: .venv/bin/python bench/run.py"
        ) from None
    copier.run_copy(
        src_path=str(src),
        dst_path=str(dst),
        data={"project_name": "Bench Service", "database": database},
        defaults=True,
        unsafe=True,
        vcs_ref=vcs_ref,
        quiet=True,
    )


VERSIONS_CODE = """
import importlib.metadata as m, json, platform
names = ["fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "sqlalchemy",
         "sqlmodel", "asyncpg", "aiomysql", "pymysql", "aiosqlite", "libpass", "bcrypt", "pyjwt",
         "python-jose"]
out = {"python": platform.python_version()}
for name in names:
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(out))
"""

# CPU seconds of one bcrypt verify, made the way the service makes it (passlib's CryptContext).
BCRYPT_CODE = """
import json, time
from passlib.context import CryptContext
ctx = CryptContext(schemes=["bcrypt"], bcrypt__rounds={rounds})
hashed = ctx.hash("correct horse battery staple")
ctx.verify("correct horse battery staple", hashed)
n = {n}
cpu, wall = time.process_time(), time.perf_counter()
for _ in range(n):
    assert ctx.verify("correct horse battery staple", hashed)
print(json.dumps({{"cpu_s": (time.process_time() - cpu) / n,
                   "wall_s": (time.perf_counter() - wall) / n}}))
"""


@dataclass
class Project:
    """The rendered service in its temporary folder, with the environment it runs in."""

    path: Path
    env: dict[str, str]

    def uv_run(self, *args: str, what: str | None = None, input_text: str | None = None) -> str:
        return run_cmd(
            [uv_executable(), "run", "--no-sync", *args],
            cwd=self.path,
            env=self.env,
            input_text=input_text,
            what=what,
        )

    def python_json(self, code: str, what: str) -> Any:
        """Run Python in the project's venv; its last line of output is JSON."""
        out = self.uv_run("python", "-c", code, what=what)
        return json.loads(out.strip().splitlines()[-1])

    def versions(self) -> dict[str, str]:
        versions: dict[str, str] = self.python_json(VERSIONS_CODE, "read package versions")
        return versions

    def bcrypt_verify_seconds(self, rounds: int) -> tuple[float, float]:
        """(CPU seconds, wall seconds) of one bcrypt verify at `rounds`."""
        n = 10 if rounds <= 12 else 3
        timing = self.python_json(BCRYPT_CODE.format(rounds=rounds, n=n), "measure bcrypt")
        return float(timing["cpu_s"]), float(timing["wall_s"])


class Server:
    """uvicorn started as production starts it, in a process group of its own."""

    def __init__(
        self, project: Project, port: int, workers: int, log_path: Path, *, loop: str
    ) -> None:
        self.project = project
        self.port = port
        self.workers = workers
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.command = [
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--loop",
            loop,
            "--http",
            "httptools",
        ]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int | None:
        """The server's process group (its own pid: it was started in a new session)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, ready_timeout: float = 60) -> None:
        executable = self.project.path / ".venv" / "bin" / "uvicorn"
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [str(executable), *self.command[1:]],
                cwd=self.project.path,
                env=self.project.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, _ = http(self.base_url, HttpRequest("GET", "/health"), timeout=2)
            except BenchError:
                status = 0
            if status == 200:
                if self.workers > 1:
                    self._wait_for_workers(deadline)
                return
            time.sleep(0.2)
        raise BenchError(f"uvicorn did not answer /health within {ready_timeout:.0f} s")

    def _wait_for_workers(self, deadline: float) -> None:
        # Each worker builds the app when it starts; wait until every one is up.
        while time.monotonic() < deadline:
            if len(self.worker_pids()) >= self.workers:
                time.sleep(1.0)
                return
            time.sleep(0.2)
        raise BenchError(f"fewer than {self.workers} uvicorn workers started")

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the workers, or the server itself."""
        if self.proc is None:
            return []
        if self.workers == 1:
            return [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"uvicorn exited with code {self.proc.returncode}")

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def ready_latency(self, timeout: float) -> float | None:
        """Seconds /health/ready took (a database round trip), or None if it failed."""
        started = time.perf_counter()
        try:
            status, _ = http(self.base_url, HttpRequest("GET", "/health/ready"), timeout=timeout)
        except BenchError:
            return None
        return time.perf_counter() - started if status == 200 else None

    def stop(self) -> None:
        """Stop the whole process group (supervisor and workers), politely first."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
