"""A real Prometheus scrapes a rendered service running two workers, and its alert rules
load; every documented production command runs the server as the image does.

The Prometheus test runs on one variant (the metrics code is the same for every answer):
Debian's `prometheus` package provides `prometheus` and `promtool` (`.ci/run` installs it).
"""

import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import VARIANTS, Project, free_port, project_env, render, run
from tests.test_live_service import request

POSTGRESQL = next(variant for variant in VARIANTS if variant.name == "postgresql")
HEALTH_REQUESTS = 300
USER_REQUESTS = 40
FAILED_LOGINS = 5  # LOGIN_MAX_FAILURES
# The options every production command gives uvicorn, as the image's CMD does.
PRODUCTION_OPTIONS = (
    "--no-proxy-headers",
    "--no-access-log",
    "--loop app.runtime.loop:new_event_loop",
)
# Upper bounds of the service's latency buckets (app/runtime/metrics.py).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install prometheus (.ci/run does it)")
    return path


@contextmanager
def process_group(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[None]:
    """`command` running in a process group of its own, stopped with SIGTERM at the end."""
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def wait_for(url: str, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            request(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} never answered:\n{log.read_text()[-6000:]}") from None
            time.sleep(0.2)


def query(prometheus: str, expression: str) -> list[dict[str, object]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    body = json.loads(request(url))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def scalar(prometheus: str, expression: str) -> float | None:
    result = query(prometheus, expression)
    return float(result[0]["value"][1]) if result else None


def metric_names(expression: str) -> set[str]:
    """The metric names PromQL expressions use: what is left of them without strings,
    label matchers, ranges, `by (...)` and function calls."""
    text = re.sub(r'"[^"]*"', "", expression)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\bby\s*\([^)]*\)", "", text)
    return set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text))


def defined_metrics(source: Path) -> set[str]:
    """The names of the metrics the service's code defines."""
    pattern = re.compile(r'\b(?:Counter|Gauge|Histogram)\(\s*"([a-z_]+)"')
    return {name for path in source.rglob("*.py") for name in pattern.findall(path.read_text())}


@pytest.mark.parametrize("project", [POSTGRESQL], ids=[POSTGRESQL.name], indirect=True)
def test_prometheus_scrapes_two_workers_and_counts_the_traffic_sent(
    project: Project, tmp_path: Path
) -> None:
    prometheus_bin, promtool = tool("prometheus"), tool("promtool")
    rules = project.path / "monitoring" / "alerts.yml"
    checked = run(f"{promtool} check rules {rules}", project.path)
    assert "SUCCESS: 5 rules found" in checked.stdout + checked.stderr

    port, metrics_port, prometheus_port = free_port(), free_port(), free_port()
    # A temporary folder of its own, so that services other tests start meanwhile cannot put
    # their metrics directories beside this one's.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {
        **project_env(),
        "TMPDIR": str(temporary),
        "DATABASE_URL": project.database_url,
        "ENVIRONMENT": "production",
        "EMAIL_DELIVERY": "log",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "WARNING",
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
    }
    run("uv run alembic upgrade head", project.path, env)
    server = ["uv", "run", "uvicorn", "app.main:app", "--port", str(port), "--workers", "2"]
    server += " ".join(PRODUCTION_OPTIONS).split()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        f"rule_files: [{json.dumps(str(rules))}]\n"
        "scrape_configs:\n  - job_name: service\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    prometheus = f"http://127.0.0.1:{prometheus_port}"

    with process_group(server, project.path, env, tmp_path / "uvicorn.log"):
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health/ready", tmp_path / "uvicorn.log")  # not counted as /health
        wait_for(f"http://127.0.0.1:{metrics_port}/metrics", tmp_path / "uvicorn.log")
        [directory] = temporary.glob("variant-postgresql-metrics-*")

        # Each request on a connection of its own, so the kernel spreads them over both
        # workers; the client's own timing bounds what the server may report.
        client_seconds = []
        for _ in range(HEALTH_REQUESTS):
            started = time.perf_counter()
            request(f"{base}/health")
            client_seconds.append(time.perf_counter() - started)
        for _ in range(USER_REQUESTS):
            with pytest.raises(urllib.error.HTTPError) as refused:
                request(f"{base}/api/v1/users/{uuid.uuid4()}")
            assert refused.value.code == 401
        # Failed logins for one unknown account: the fifth fills LOGIN_MAX_FAILURES.
        for _ in range(FAILED_LOGINS):
            with pytest.raises(urllib.error.HTTPError) as failed:
                request(
                    f"{base}/api/v1/auth/login",
                    b"username=nobody%40example.com&password=wrong+password",
                    {"Content-Type": "application/x-www-form-urlencoded"},
                )
            assert failed.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as public:
            request(f"{base}/metrics")
        assert public.value.code == 404

        # Any worker may answer a scrape; every answer covers both.
        for _ in range(6):
            text = request(f"http://127.0.0.1:{metrics_port}/metrics").decode()
            health = re.search(
                r'^http_requests_total\{[^}]*route="/health"[^}]*\} (\S+)$', text, re.M
            )
            assert health, text[:3000]
            assert float(health.group(1)) == HEALTH_REQUESTS

        prometheus_command = [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ]
        with process_group(prometheus_command, tmp_path, dict(os.environ), tmp_path / "p.log"):
            wait_for(f"{prometheus}/-/ready", tmp_path / "p.log")
            health_total = 'sum(http_requests_total{job="service", route="/health"})'
            deadline = time.monotonic() + 60
            while scalar(prometheus, health_total) != HEALTH_REQUESTS:
                assert time.monotonic() < deadline, query(prometheus, "up")
                time.sleep(0.5)

            users = 'http_requests_total{route="/api/v1/users/{user_id}", status="4xx"}'
            assert scalar(prometheus, f"sum({users})") == USER_REQUESTS
            counted = 'sum(http_request_duration_seconds_count{route="/health"})'
            assert scalar(prometheus, counted) == HEALTH_REQUESTS
            seconds = 'sum(http_request_duration_seconds_sum{route="/health"})'
            assert 0 < (scalar(prometheus, seconds) or 0) <= sum(client_seconds)
            p90 = scalar(
                prometheus,
                "histogram_quantile(0.9, sum by (le) "
                '(http_request_duration_seconds_bucket{route="/health"}))',
            )
            # The server times part of each round trip the client timed, so its 90th
            # percentile is at most the client's, up to the bucket that holds it.
            client_p90 = sorted(client_seconds)[math.ceil(0.9 * HEALTH_REQUESTS) - 1]
            bound = next(b for b in LATENCY_BUCKETS if b >= client_p90)
            assert p90 is not None and 0 < p90 <= bound, (p90, client_p90)
            assert scalar(prometheus, 'sum(up{job="service"})') == 1
            failures = 'sum(login_attempts_total{outcome="failure"})'
            assert scalar(prometheus, failures) == FAILED_LOGINS
            assert scalar(prometheus, 'sum(login_lockouts_total{limit="login"})') == 1

            # The alert rules loaded, and name only metrics the service exports.
            groups = json.loads(request(f"{prometheus}/api/v1/rules"))["data"]["groups"]
            loaded = [rule["query"] for group in groups for rule in group["rules"]]
            assert len(loaded) == 5, loaded
            dashboard = (project.path / "monitoring" / "grafana-dashboard.json").read_text()
            expressions = [t["expr"] for p in json.loads(dashboard)["panels"] for t in p["targets"]]
            used = metric_names("\n".join([*loaded, *expressions]))
            defined = defined_metrics(project.path / "app")
            suffixes = ("_bucket", "_count", "_sum", "_total")
            unknown = {
                name
                for name in used
                if name not in defined
                and not any(name.endswith(s) and name.removesuffix(s) in defined for s in suffixes)
            }
            assert not unknown, f"not metrics of the service: {sorted(unknown)}"
        assert directory.is_dir()

    # The last worker to stop removes the directory the workers shared.
    assert not directory.exists(), sorted(p.name for p in directory.iterdir())


def test_every_documented_production_command_runs_the_server_as_the_image_does(
    tmp_path: Path,
) -> None:
    project = render(tmp_path / "demo-service", database="sqlite")
    repository_docs = Path(__file__).resolve().parent.parent / "docs"
    documents = [
        project / "README.md",
        project / "Dockerfile",
        project / "docs" / "operations.md",
        *repository_docs.rglob("*.md"),
    ]
    commands = []
    for path in documents:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
        for line in text.splitlines():
            if re.search(r"\buvicorn app\.main:app\b", line) and "--port" in line:
                commands.append((path.name, " ".join(line.split())))
    assert len(commands) >= 6, commands
    wrong = [(name, c) for name, c in commands if not all(o in c for o in PRODUCTION_OPTIONS)]
    assert not wrong, "\n".join(f"{name}: {command}" for name, command in wrong)
