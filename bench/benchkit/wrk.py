"""Driving the service with wrk and reading the JSON line that wrk_report.lua prints."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from benchkit.shell import BenchError, HttpRequest

WRK_SCRIPT = Path(__file__).resolve().parent.parent / "wrk_report.lua"
INSTALL_HINT = "apt-get update && apt-get install -y wrk"


@dataclass(frozen=True)
class WrkResult:
    """One wrk run; counts and rates are for the measurement window (after the warm-up)."""

    requests: int
    window_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_detail: dict[str, int]
    statuses: dict[str, int]
    # Responses of an expected refusal status (see with_refusals), not counted as errors.
    refused: int = 0

    @property
    def rps(self) -> float:
        """Every response of the window, refusals and errors included."""
        return self.requests / self.window_s if self.window_s > 0 else 0.0

    @property
    def ok_requests(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= int(code) < 300)

    @property
    def ok_rps(self) -> float:
        """2xx responses per second."""
        return self.ok_requests / self.window_s if self.window_s > 0 else 0.0

    @property
    def refused_rps(self) -> float:
        return self.refused / self.window_s if self.window_s > 0 else 0.0

    def with_refusals(self, statuses: tuple[int, ...]) -> WrkResult:
        """The same run with responses of `statuses` counted as refusals instead of
        errors: a service that sheds load on purpose (with Retry-After) is not failing."""
        keys = {f"HTTP {status}" for status in statuses}
        refused = sum(self.error_detail.get(key, 0) for key in keys)
        detail = {k: v for k, v in self.error_detail.items() if k not in keys}
        return replace(
            self, errors=self.errors - refused, error_detail=detail, refused=self.refused + refused
        )


def parse_wrk_output(stdout: str) -> WrkResult:
    """Read the `BENCH_JSON {...}` line printed by wrk_report.lua's done() hook.

    Errors are the non-2xx responses of the window, by status code, plus wrk's socket
    errors (connect, read, write) and timeouts over the whole run. wrk counts a timeout
    each time it finds a request older than --timeout (every 2 s) and when such a late
    response arrives, so that number counts overdue checks, not requests.
    """
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            break
    else:
        raise BenchError(f"wrk printed no BENCH_JSON line:\n{stdout[-2000:]}")
    statuses = {str(code): int(n) for code, n in data["statuses"].items()}
    # wrk's own "status" count (>= 400, warm-up included) gives way to the window's codes.
    detail = {key: int(value) for key, value in data["errors"].items() if key != "status"}
    for code, n in sorted(statuses.items()):
        if not 200 <= int(code) < 300:
            detail[f"HTTP {code}"] = n
    latency = data["latency_us"]
    return WrkResult(
        requests=int(data["measured_requests"]),
        window_s=data["duration_us"] / 1e6 - data["measure_from_s"],
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        errors=sum(detail.values()),
        error_detail={key: value for key, value in detail.items() if value},
        statuses=statuses,
    )


@dataclass(frozen=True)
class WrkSettings:
    threads: int
    timeout_s: float


class Wrk:
    """Runs wrk with wrk_report.lua against one server."""

    def __init__(self, base_url: str, settings: WrkSettings) -> None:
        self.base_url = base_url
        self.settings = settings

    def start(
        self,
        request: HttpRequest,
        connections: int,
        duration: int,
        *,
        warmup: int = 0,
        threads: int | None = None,
        delay_ms: float = 0,
        timeout_s: float | None = None,
    ) -> subprocess.Popen[str]:
        """Start wrk for `warmup` + `duration` seconds (wrk takes whole seconds only);
        responses are counted during the last `duration` seconds. `timeout_s` replaces
        the configured timeout for this run."""
        threads = min(threads or self.settings.threads, connections)
        timeout_s = timeout_s or self.settings.timeout_s
        duration += warmup
        cmd = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            f"{timeout_s:g}s",
            "-s",
            str(WRK_SCRIPT),
            self.base_url + request.path,
        ]
        env = dict(os.environ)
        env.update(
            {
                "BENCH_METHOD": request.method,
                "BENCH_BODY": request.body,
                "BENCH_CONTENT_TYPE": request.content_type,
                "BENCH_TOKEN": request.token,
                "BENCH_MEASURE_FROM": str(warmup),
                "BENCH_DELAY_MS": f"{delay_ms:g}" if delay_ms else "",
                "BENCH_REFRESH_TOKENS": ",".join(request.refresh_tokens),
                "BENCH_THREADS": str(threads),
            }
        )
        try:
            return subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except FileNotFoundError:
            raise BenchError(f"wrk is not installed; install it with: {INSTALL_HINT}") from None

    @staticmethod
    def finish(proc: subprocess.Popen[str]) -> WrkResult:
        try:
            # wrk stops by itself after its duration; this only guards against a hang.
            stdout, stderr = proc.communicate(timeout=3600)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchError("wrk did not finish in time") from None
        if proc.returncode != 0:
            output = (stdout + stderr).strip()[-2000:]
            raise BenchError(f"wrk failed with exit code {proc.returncode}: {output}")
        return parse_wrk_output(stdout)

    def run(
        self, request: HttpRequest, connections: int, duration: int, warmup: int = 0
    ) -> WrkResult:
        return self.finish(self.start(request, connections, duration, warmup=warmup))
