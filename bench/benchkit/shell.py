"""Running commands and talking HTTP to the service, with errors that say what failed."""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
API = "/api/v1"


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def run_cmd(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
    timeout: float = 600,
    what: str | None = None,
) -> str:
    """Run a command and return its stdout; raise BenchError with its output if it fails."""
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            env=env,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise BenchError(f"{what or cmd[0]}: command not found ({exc.filename})") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what or shlex.join(cmd)}: timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        raise BenchError(
            f"{what or shlex.join(cmd)} failed with exit code {proc.returncode}:\n{output[-4000:]}"
        )
    return proc.stdout


def uv_executable() -> str:
    """uv from PATH, or the one installed beside this Python (the repository venv's)."""
    beside = Path(sys.executable).parent / "uv"
    found = shutil.which("uv") or (str(beside) if beside.exists() else None)
    if found is None:
        raise BenchError("uv is not installed; it is one of the repository's dev dependencies")
    return found


def tool_version(cmd: Sequence[str]) -> str:
    """The first line a `--version` command prints, whatever its exit code (wrk exits 1)."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class HttpRequest:
    """One request that a workload sends over and over."""

    method: str
    path: str
    body: str = ""
    content_type: str = ""
    token: str = ""
    # For the refresh workload: one refresh token per connection, rotated by wrk_report.lua.
    refresh_tokens: tuple[str, ...] = ()

    def with_token(self, token: str) -> HttpRequest:
        return HttpRequest(self.method, self.path, self.body, self.content_type, token)


def login_request(email: str, password: str) -> HttpRequest:
    """The service's form-encoded login."""
    form = urllib.parse.urlencode({"username": email, "password": password})
    return HttpRequest("POST", f"{API}/auth/login", form, FORM_TYPE)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure here: wrk would not follow it either."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def http(base_url: str, request: HttpRequest, timeout: float = 30) -> tuple[int, Any]:
    """Send one request; return (status, the JSON body, or the raw text if it is not JSON)."""
    headers = {"Accept": JSON_TYPE}
    if request.content_type:
        headers["Content-Type"] = request.content_type
    if request.token:
        headers["Authorization"] = f"Bearer {request.token}"
    req = urllib.request.Request(
        base_url + request.path,
        data=request.body.encode() if request.body else None,
        method=request.method,
        headers=headers,
    )
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:  # refused, reset, timed out
        raise BenchError(f"{request.method} {request.path}: {exc}") from None
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def expect(base_url: str, request: HttpRequest, statuses: Sequence[int]) -> Any:
    """Send one request and fail unless the status is one of `statuses`."""
    status, body = http(base_url, request)
    if status not in statuses:
        raise BenchError(
            f"{request.method} {request.path} returned {status} (expected "
            f"{', '.join(map(str, statuses))}): {str(body)[:500]}"
        )
    return body
