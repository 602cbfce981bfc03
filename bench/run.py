"""Load benchmark of a service rendered from this Copier template.

One command renders a variant into a temporary folder, installs it with `uv sync`, creates and
migrates a database of its own, seeds it, starts uvicorn the way production does and drives it
with wrk from a separate process. It prints one line per run, checks the performance targets,
writes docs/benchmarks.md and always cleans up (server, database, temporary folder).

    .venv/bin/python bench/run.py --database postgresql

See bench/README.md for the workloads and the options.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchkit.cpu import CpuMeter, CpuSample
from benchkit.database import DATABASES, BenchDatabase
from benchkit.options import (
    LARGE_WORKLOAD,
    LOGIN_REFUSED_STATUSES,
    ME_UNDER_LOGIN_CONNECTIONS,
    REFRESH_LOGINS_AT_ONCE,
    SERVICE_LOG_LEVEL,
    UNDER_LOGIN_WORKLOADS,
    WORKLOADS,
    Options,
)
from benchkit.pooler import pgbouncer
from benchkit.profiler import Profiler
from benchkit.report import (
    ANALYSIS_HEADING,
    Check,
    Environment,
    RunResult,
    check_targets,
    format_run_line,
    machine_info,
    render_markdown,
    summarize,
    summary_table,
)
from benchkit.rules import check_last_administrator, check_login_throttling
from benchkit.service import Project, Server, render
from benchkit.shell import (
    API,
    JSON_TYPE,
    BenchError,
    HttpRequest,
    expect,
    free_port,
    log,
    login_request,
    run_cmd,
    tool_version,
    uv_executable,
)
from benchkit.wrk import INSTALL_HINT, Wrk, WrkResult, WrkSettings

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
LARGE_SEED_SCRIPT = BENCH_DIR / "seed_large.py"

ADMIN_EMAIL = "admin@example.com"
BENCH_EMAIL = "bench@example.com"
# `create` writes as another user, so that `list` keeps reading exactly SEED_ITEMS items.
WRITER_EMAIL = "writer@example.com"
# `refresh` rotates the sessions of a user of its own.
REFRESHER_EMAIL = "refresher@example.com"
MAX_SESSIONS_PER_USER = 1000
# Accounts of the cross-process rule checks, which run after the measurements.
THROTTLED_EMAIL = "throttled@example.com"
SECOND_ADMIN_EMAIL = "second-admin@example.com"
LOGIN_MAX_FAILURES = 5
LARGE_EMAIL_PATTERN = "large-{n}@example.com"
SEED_ITEMS = 100
LARGE_ITEMS = 100_000
LARGE_USERS = 100
MAX_WARMUP_S = 120


class Benchmark:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.password = "Bench-" + secrets.token_urlsafe(12)
        self.results: list[RunResult] = []
        self.profiles: list[str] = []
        self.hash_limit_rps = 0.0
        self.tokens: dict[str, str] = {}
        self.rule_checks: list[Check] = []

    def run(self) -> int:
        """The whole benchmark; returns the exit code. Cleans up whatever happens."""
        opts = self.options
        work_dir = Path(tempfile.mkdtemp(prefix=f"bench-{opts.database}-"))
        database: BenchDatabase | None = None
        server: Server | None = None
        pooler = ExitStack()
        try:
            project = self.prepare_project(work_dir)
            with step(f"create the {opts.database} database"):
                database = BenchDatabase.create(
                    opts.database, opts.server_urls.get(opts.database, ""), work_dir
                )
            project.env["DATABASE_URL"] = database.url
            if opts.pooler == "pgbouncer":
                with step("start PgBouncer in transaction mode"):
                    through = pooler.enter_context(pgbouncer(database.server_url))
                project.env["DATABASE_URL"] = f"{through}/{database.name}"
                project.env["DB_POOLER"] = "pgbouncer"
                log(f"the service connects through PgBouncer at {through}")
            log(f"database: {database.name}")
            with step("alembic upgrade head"):
                project.uv_run("alembic", "upgrade", "head", what="alembic upgrade head")
            with step("create the administrator"):
                project.uv_run(
                    "python", "-m", "app.cli", "create-admin",
                    "--email", ADMIN_EMAIL, "--password-stdin",
                    input_text=self.password + "\n",
                    what="python -m app.cli create-admin",
                )  # fmt: skip
            environment = self.describe(project)

            server = Server(
                project, free_port(), opts.workers, work_dir / "uvicorn.log", loop=opts.loop
            )
            with step(f"start uvicorn with {opts.workers} worker(s)"):
                server.start()
            with step("seed over HTTP"):
                requests = self.seed(server.base_url)
            meter = CpuMeter(lambda: server.pgid if server else None, database.owns_process)
            profiler = Profiler(project, opts.profile_dir) if opts.profile_dir else None
            wrk = Wrk(server.base_url, opts.wrk)

            workloads = [w for w in opts.workloads if w != LARGE_WORKLOAD]
            self.measure(server, wrk, meter, requests, workloads, profiler)
            if opts.large:
                self.settle(server, meter)
                with step(f"bulk-insert {LARGE_ITEMS:,} items for {LARGE_USERS} users"):
                    self.seed_large(project)
                requests[LARGE_WORKLOAD] = self.large_request(server.base_url)
                self.measure(
                    server, wrk, meter, requests, ["health", LARGE_WORKLOAD], profiler,
                    reference=("health",),
                )  # fmt: skip
            self.settle(server, meter)
            with step(f"check the cross-process rules with {opts.workers} worker(s)"):
                self.check_rules(server.base_url)
            self.report(environment)
            return 0
        except BenchError as exc:
            print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
            if server is not None and server.tail():
                print(f"--- end of the uvicorn log ---\n{server.tail()}", file=sys.stderr)
            return 1
        finally:
            if server is not None:
                server.stop()
            pooler.close()
            if opts.keep:
                log(f"kept {work_dir} and database {database.name if database else '-'}")
            else:
                if database is not None:
                    try:
                        database.drop()
                    except BenchError as exc:
                        print(f"could not drop {database.name}: {exc}", file=sys.stderr)
                shutil.rmtree(work_dir, ignore_errors=True)

    # ---- set-up

    def prepare_project(self, work_dir: Path) -> Project:
        opts = self.options
        project_dir = work_dir / "service"
        with step("render the template with copier"):
            render(opts.src, project_dir, opts.database, opts.vcs_ref)
        env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
        env.update(
            {
                "UV_PYTHON_DOWNLOADS": "never",
                "ENVIRONMENT": "production",
                "JWT_SECRET": secrets.token_urlsafe(48),
                "BCRYPT_ROUNDS": str(opts.bcrypt_rounds),
                "LOG_LEVEL": SERVICE_LOG_LEVEL,
                "CORS_ORIGINS": '["https://bench.example.com"]',
                "LOGIN_MAX_FAILURES": str(LOGIN_MAX_FAILURES),
                # The refresh workload keeps a session open per connection.
                "MAX_SESSIONS_PER_USER": str(MAX_SESSIONS_PER_USER),
                # No mail server here: production refuses to start without one unless told
                # to write emails to the log.
                "EMAIL_DELIVERY": "log",
            }
        )
        env.update(opts.extra_env)
        with step("uv sync"):
            run_cmd([uv_executable(), "sync"], cwd=project_dir, env=env, what="uv sync")
        return Project(project_dir, env)

    def describe(self, project: Project) -> Environment:
        versions = project.versions()
        # "wrk debian/4.1.0-3+b2 [epoll] Copyright ..." and "uv 0.13.9 (...)"
        versions["wrk"] = tool_version(["wrk", "--version"]).split(" Copyright")[0]
        versions["uv"] = tool_version([uv_executable(), "--version"]).removeprefix("uv ")
        if self.options.pooler == "pgbouncer":
            versions["pgbouncer"] = tool_version(["pgbouncer", "--version"]).splitlines()[0]
        rounds = self.options.bcrypt_rounds
        with step(f"measure one bcrypt verify at rounds {rounds}"):
            cpu_s, wall_s = project.bcrypt_verify_seconds(rounds)
        environment = Environment(machine_info(), versions, cpu_s, wall_s, uvicorn_command="")
        self.hash_limit_rps = environment.hash_limit_rps
        log(
            f"bcrypt verify: {1000 * cpu_s:.1f} ms CPU, so the hashing limit is "
            f"{environment.machine['cores']} cores / {1000 * cpu_s:.1f} ms = "
            f"{self.hash_limit_rps:.1f} logins/s"
        )
        return environment

    def login(self, base_url: str, email: str) -> str:
        """A new access token of the user."""
        return str(self.sign_in(base_url, email)["access_token"])

    def sign_in(self, base_url: str, email: str) -> dict[str, object]:
        """The body of a login answer: the tokens."""
        body: dict[str, object] = expect(base_url, login_request(email, self.password), [200])
        return body

    def refresh_request(self, base_url: str, sessions: int) -> HttpRequest:
        """The refresh workload's request with fresh refresh tokens, one per connection
        (`sessions`) and one for wrk's check of the script: wrk_report.lua spends each and
        carries on with the one its answer holds."""
        with ThreadPoolExecutor(REFRESH_LOGINS_AT_ONCE) as pool:
            pairs = list(
                pool.map(lambda _: self.sign_in(base_url, REFRESHER_EMAIL), range(sessions + 1))
            )
        tokens = tuple(str(pair["refresh_token"]) for pair in pairs)
        body = json.dumps({"refresh_token": tokens[0]})
        return HttpRequest("POST", f"{API}/auth/refresh", body, JSON_TYPE, refresh_tokens=tokens)

    def register(self, base_url: str, email: str) -> None:
        body = json.dumps({"email": email, "password": self.password, "full_name": "Bench"})
        expect(base_url, HttpRequest("POST", f"{API}/auth/register", body, JSON_TYPE), [201])

    def seed(self, base_url: str) -> dict[str, HttpRequest]:
        """The benchmark user with SEED_ITEMS items, the writer, and each workload's request."""
        self.register(base_url, BENCH_EMAIL)
        token = self.login(base_url, BENCH_EMAIL)
        for i in range(SEED_ITEMS):
            body = json.dumps({"title": f"Seed item {i}", "description": "Seeded by bench/run.py"})
            expect(base_url, HttpRequest("POST", f"{API}/items", body, JSON_TYPE, token), [201])
        self.check_page(base_url, BENCH_EMAIL, SEED_ITEMS)
        self.register(base_url, WRITER_EMAIL)
        self.register(base_url, REFRESHER_EMAIL)
        item = json.dumps({"title": "Benchmark item", "description": "Created by wrk"})
        # A token "@email" stands for a fresh access token of that user (see resolve()).
        return {
            "health": HttpRequest("GET", "/health"),
            "me": HttpRequest("GET", f"{API}/users/me", token="@" + BENCH_EMAIL),
            "list": HttpRequest("GET", f"{API}/items?limit=100", token="@" + BENCH_EMAIL),
            "create": HttpRequest("POST", f"{API}/items", item, JSON_TYPE, "@" + WRITER_EMAIL),
            # Its refresh tokens are made per run, one per connection (refresh_request()).
            "refresh": HttpRequest("POST", f"{API}/auth/refresh", "", JSON_TYPE),
            "login": login_request(BENCH_EMAIL, self.password),
        }

    def check_rules(self, base_url: str) -> None:
        """Login throttling and the last administrator, with the server as benchmarked."""
        workers = self.options.workers
        self.register(base_url, THROTTLED_EMAIL)
        self.register(base_url, SECOND_ADMIN_EMAIL)
        self.rule_checks = [
            check_login_throttling(
                base_url, THROTTLED_EMAIL, self.password, LOGIN_MAX_FAILURES, workers
            ),
            check_last_administrator(
                base_url, ADMIN_EMAIL, SECOND_ADMIN_EMAIL,
                lambda email: self.login(base_url, email), workers,
            ),
        ]  # fmt: skip
        for check in self.rule_checks:
            log(f"[{check.verdict}] {check.name}: {check.detail}")

    def check_page(self, base_url: str, email: str, total: int) -> None:
        request = HttpRequest("GET", f"{API}/items?limit=100", token=self.login(base_url, email))
        page = expect(base_url, request, [200])
        if page.get("total") != total or len(page.get("items", [])) != min(total, 100):
            raise BenchError(
                f"{email} should own {total} items; the API lists "
                f"{len(page.get('items', []))} of total={page.get('total')}"
            )

    def seed_large(self, project: Project) -> None:
        """Bulk-insert through the service's own tables and engine (see seed_large.py)."""
        script = project.path / "bench_seed_large.py"
        shutil.copyfile(LARGE_SEED_SCRIPT, script)
        out = project.uv_run(
            "python", script.name,
            "--copy-user", BENCH_EMAIL,
            "--users", str(LARGE_USERS),
            "--items", str(LARGE_ITEMS),
            "--email-pattern", LARGE_EMAIL_PATTERN,
            what="bulk insert of the large table",
        )  # fmt: skip
        log(out.strip().splitlines()[-1])

    def large_request(self, base_url: str) -> HttpRequest:
        email = LARGE_EMAIL_PATTERN.format(n=0)
        self.check_page(base_url, email, LARGE_ITEMS // LARGE_USERS)
        return HttpRequest("GET", f"{API}/items?limit=100", token="@" + email)

    # ---- measuring

    def resolve(self, base_url: str, request: HttpRequest) -> HttpRequest:
        """Swap an "@email" token for a fresh access token of that user."""
        if not request.token.startswith("@"):
            return request
        return request.with_token(self.login(base_url, request.token[1:]))

    def measure(
        self,
        server: Server,
        wrk: Wrk,
        meter: CpuMeter,
        requests: dict[str, HttpRequest],
        workloads: list[str],
        profiler: Profiler | None,
        *,
        reference: tuple[str, ...] = (),
    ) -> None:
        """Each workload at each connection count, `repeat` times.

        Workloads in `reference` are measured only as the base of the "vs health" ratio.
        """
        opts = self.options
        # Each request must succeed once, without a redirect, before wrk repeats it.
        for name in workloads:
            if name == "refresh":
                expect(server.base_url, self.refresh_request(server.base_url, 1), [200])
            elif name not in UNDER_LOGIN_WORKLOADS:
                expect(server.base_url, self.resolve(server.base_url, requests[name]), [200, 201])
        # Warm-ups size themselves on the rate last measured for the workload.
        rates: dict[str, float] = {"login": self.hash_limit_rps}
        for repeat in range(1, opts.repeat + 1):
            log(f"repeat {repeat} of {opts.repeat}: {', '.join(workloads)}")
            for connections in connection_order(opts.connections, repeat):
                health_rps: float | None = None
                for name in workloads:
                    under_login = name in UNDER_LOGIN_WORKLOADS
                    rate = rates.get("login" if under_login else name, 0.0)
                    warmup = self.warmup_for(connections, rate)
                    timeout = self.timeout_for(connections, rate)
                    self.settle(server, meter)
                    before = meter.sample()
                    companion: WrkResult | None = None
                    if under_login:
                        # The probe's token comes first: the login flood would refuse it.
                        probe = self.probe_for(name, server.base_url, requests)
                        result, companion = self.under_login(
                            wrk, requests["login"], probe, connections, warmup, timeout
                        )
                    else:
                        request = (
                            self.refresh_request(server.base_url, connections)
                            if name == "refresh"
                            else self.resolve(server.base_url, requests[name])
                        )
                        label = f"{name}-c{connections}-r{repeat}"
                        before, result = self.measure_one(
                            server, wrk, meter, request, connections, warmup, timeout,
                            profiler, label,
                        )  # fmt: skip
                        if name == "login":
                            result = result.with_refusals(LOGIN_REFUSED_STATUSES)
                    run = RunResult(
                        repeat, name, connections, result, meter.sample() - before,
                        health_rps, companion, reference=name in reference,
                    )  # fmt: skip
                    if name == "health":
                        health_rps = result.rps
                    # Every response, refusals included, for Little's law in warmup_for().
                    if result.rps > 0 and not under_login:
                        rates[name] = result.rps
                    self.results.append(run)
                    print(format_run_line(run, self.hash_limit_rps), flush=True)

    def warmup_for(self, connections: int, rate: float) -> int:
        """Warm-up long enough for a closed loop of `connections` to reach steady state.

        A client that keeps `connections` requests in flight against a server completing
        `rate` per second waits connections / rate seconds per request once the queue has
        formed; counting before then would measure the start-up, not the service. `rate`
        is the hashing limit for logins, else the rate measured at fewer connections.
        """
        if rate <= 0:
            return self.options.warmup
        return min(max(self.options.warmup, math.ceil(1.5 * connections / rate)), MAX_WARMUP_S)

    def timeout_for(self, connections: int, rate: float) -> float:
        """wrk's timeout for a run: --timeout, or twice the wait the closed loop itself
        creates when that is longer.

        With `connections` requests always in flight and `rate` completed per second,
        each waits connections / rate seconds (Little's law): 256 logins at the hashing
        limit of 10 per second wait 26 s however fast the service is. A shorter timeout
        would count that queue as failures; twice the wait still catches a stall.
        """
        configured = self.options.wrk.timeout_s
        if rate <= 0:
            return configured
        return max(configured, math.ceil(2 * connections / rate))

    def measure_one(
        self,
        server: Server,
        wrk: Wrk,
        meter: CpuMeter,
        request: HttpRequest,
        connections: int,
        warmup: int,
        timeout: float,
        profiler: Profiler | None,
        label: str,
    ) -> tuple[CpuSample, WrkResult]:
        """Run wrk (warm-up, then measurement); return the CPU sample taken when the
        measurement began, and the result."""
        duration = self.options.duration
        proc = wrk.start(request, connections, duration, warmup=warmup, timeout_s=timeout)
        time.sleep(warmup)
        before = meter.sample()
        sampler = profiler.start(server, label, duration) if profiler else None
        result = Wrk.finish(proc)
        if profiler is not None and sampler is not None:
            summary = profiler.finish(sampler, label)
            self.profiles.append(summary)
            print(summary, flush=True)
        return before, result

    def probe_for(self, name: str, base_url: str, requests: dict[str, HttpRequest]) -> Probe:
        """What runs alongside the logins: a light /health probe, or the normal `me` load."""
        opts = self.options
        if name == "health-under-login":
            return Probe(requests["health"], opts.probe_connections, 1, opts.probe_delay_ms)
        me = self.resolve(base_url, requests["me"])
        return Probe(me, ME_UNDER_LOGIN_CONNECTIONS, opts.wrk.threads, 0)

    def under_login(
        self,
        wrk: Wrk,
        login_request: HttpRequest,
        probe: Probe,
        connections: int,
        warmup: int,
        login_timeout: float,
    ) -> tuple[WrkResult, WrkResult]:
        """`probe` measured while a login wrk runs at full tilt with `connections`;
        returns the probe's result and the login wrk's (refusals counted apart)."""
        opts = self.options
        login = wrk.start(
            login_request, connections, opts.duration + 1, warmup=warmup,
            timeout_s=login_timeout,
        )  # fmt: skip
        try:
            time.sleep(warmup + 0.5)
            started = wrk.start(
                probe.request,
                probe.connections,
                opts.duration,
                threads=probe.threads,
                delay_ms=probe.delay_ms,
            )
            probe_result = Wrk.finish(started)
        finally:
            login_result = Wrk.finish(login)
        return probe_result, login_result.with_refusals(LOGIN_REFUSED_STATUSES)

    def settle(self, server: Server, meter: CpuMeter) -> None:
        """Wait until the server has finished earlier work and the machine is quiet.

        uvicorn does not cancel a request whose client went away, so what wrk left queued
        (hundreds of bcrypt logins, say) still runs after wrk exits. Idle means under 5% of
        a core for the server and a database round trip (/health/ready) within 100 ms.
        Quiet means other processes use at most --max-noise cores; after --quiet-timeout
        the run goes ahead and its line is marked NOISY.
        """
        opts = self.options
        started = time.monotonic()
        while True:
            server.check_alive()
            usage = meter.measure(0.5)
            latency = server.ready_latency(timeout=30)
            if usage.server_cores < 0.05 and latency is not None and latency < 0.1:
                break
            if time.monotonic() - started > opts.drain_timeout:
                raise BenchError(f"the server was still busy {opts.drain_timeout:.0f} s later")
        if (drained := time.monotonic() - started) > 2:
            log(f"waited {drained:.1f} s for the server to finish queued requests")
        quiet_since = time.monotonic()
        while (noise := meter.measure(1.0).noise_cores) > opts.max_noise:
            if time.monotonic() - quiet_since > opts.quiet_timeout:
                log(f"other processes still use {noise:.2f} cores; measuring anyway")
                return
        if (waited := time.monotonic() - quiet_since) > 2:
            log(f"waited {waited:.1f} s for other processes to quieten")

    # ---- report

    def report(self, environment: Environment) -> None:
        opts = self.options
        server_cmd = ["uvicorn", "app.main:app", "--workers", str(opts.workers)]
        server_cmd += ["--no-access-log", "--loop", opts.loop, "--http", "httptools"]
        environment = Environment(
            environment.machine,
            environment.versions,
            environment.bcrypt_cpu_s,
            environment.bcrypt_wall_s,
            uvicorn_command=shlex.join(server_cmd),
        )
        summaries = summarize(self.results, self.hash_limit_rps)
        checks = check_targets(summaries, self.hash_limit_rps) + self.rule_checks
        print(
            f"\nSummary: {opts.database}, {opts.workers} worker(s), mean of {opts.repeat} repeat(s)"
        )
        print(summary_table(summaries, markdown=False))
        print(
            f"\nbcrypt verify at rounds {opts.bcrypt_rounds}: "
            f"{1000 * environment.bcrypt_cpu_s:.1f} ms CPU; hashing limit "
            f"{environment.hash_limit_rps:.1f} logins/s on {environment.machine['cores']} cores"
        )
        print("Targets:")
        for check in checks:
            print(f"  [{check.verdict:^12}] {check.name}: {check.detail}")
        if opts.output is not None:
            opts.output.parent.mkdir(parents=True, exist_ok=True)
            kept = kept_analysis(opts.output)
            opts.output.write_text(
                render_markdown(opts, environment, summaries, checks, self.profiles) + kept
            )
            log(f"wrote {opts.output}" + (" (kept its Analysis section)" if kept else ""))


@dataclass(frozen=True)
class Probe:
    """A wrk load measured while logins run alongside."""

    request: HttpRequest
    connections: int
    threads: int
    delay_ms: float


def connection_order(connections: Sequence[int], repeat: int) -> list[int]:
    """The connection counts in the given order in odd repeats and reversed in even ones.

    The machine's speed drifts over the minutes a repeat takes. Measured in one order only,
    the last connection count would always run on the most drifted machine; alternating
    the order (A B C, C B A) gives every count the same mean time within a pair of repeats,
    so a steady drift cancels out of the means that the targets compare.
    """
    return list(connections) if repeat % 2 else list(reversed(connections))


def kept_analysis(path: Path) -> str:
    """The hand-written "## Analysis" section of an earlier report, to carry over."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    start = text.find(f"\n{ANALYSIS_HEADING}\n")
    return "\n" + text[start + 1 :].rstrip() + "\n" if start >= 0 else ""


@contextmanager
def step(what: str) -> Iterator[None]:
    log(f"{what} ...")
    started = time.perf_counter()
    yield
    log(f"{what}: {time.perf_counter() - started:.1f} s")


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=(
            "Render a variant of the template, start it as production would, measure it with "
            "wrk, check the targets and write docs/benchmarks.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--database", choices=DATABASES, default="postgresql")
    add("--workers", type=int, default=1, help="uvicorn worker processes")
    add(
        "--loop",
        default="app.runtime.loop:new_event_loop",
        help="uvicorn's --loop: the rendered service's own, or uvloop or asyncio to compare",
    )
    add("--duration", type=int, default=10, help="seconds measured per run")
    add(
        "--warmup",
        type=int,
        default=2,
        help="least seconds of warm-up before counting (longer where the queue needs it)",
    )
    add("--connections", default="16,64,256", help="comma-separated wrk connection counts")
    add("--repeat", type=int, default=2, help="times the whole set of runs is repeated")
    add(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of: {', '.join((*WORKLOADS, LARGE_WORKLOAD))}",
    )
    add(
        "--large",
        action="store_true",
        help=f"then bulk-insert {LARGE_ITEMS:,} items for {LARGE_USERS} users and measure "
        f"'{LARGE_WORKLOAD}' as a user owning {LARGE_ITEMS // LARGE_USERS} of them",
    )
    add("--threads", type=int, default=2, help="wrk threads (-t)")
    add("--timeout", type=float, default=10, help="wrk timeout: slower responses are errors")
    add("--bcrypt-rounds", type=int, default=12, help="BCRYPT_ROUNDS of the service")
    add("--probe-connections", type=int, default=4, help="connections of the /health probe")
    add(
        "--probe-delay-ms",
        type=float,
        default=10,
        help="pause between the probe's requests on a connection (0: full speed)",
    )
    add(
        "--drain-timeout",
        type=float,
        default=300,
        help="seconds to wait after a run for the server to finish the requests left queued",
    )
    add(
        "--max-noise",
        type=float,
        default=0.15,
        help="cores other processes may use before a run waits for the machine to quieten",
    )
    add("--quiet-timeout", type=float, default=120, help="seconds to wait for a quiet machine")
    add(
        "--output",
        default="docs/benchmarks.md",
        help="Markdown report, relative to the repository; '-' writes none",
    )
    add("--profile", metavar="DIR", help="record py-spy profiles of every measured run into DIR")
    add("--keep", action="store_true", help="keep the temporary folder and the database")
    add("--src", default=str(REPO_ROOT), help="template to render")
    add("--vcs-ref", default="HEAD", help="git ref to render ('' for Copier's default)")
    add("--postgres-url", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server")
    add("--mysql-url", default="mysql://root@127.0.0.1:3306", help="MySQL or MariaDB server")
    add(
        "--pooler",
        choices=("none", "pgbouncer"),
        default="none",
        help="pgbouncer: the service connects through a PgBouncer in transaction mode that "
        "the run starts on a free port (PostgreSQL only; DB_POOLER=pgbouncer)",
    )
    add(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the service, e.g. DB_POOL_SIZE=40 (repeatable)",
    )
    args = parser.parse_args(argv)

    try:
        connections = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        parser.error("--connections takes integers, e.g. 16,64,256")
    if not connections or min(connections) < 1:
        parser.error("--connections needs positive counts")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := sorted(set(workloads) - {*WORKLOADS, LARGE_WORKLOAD}):
        parser.error(f"unknown workload(s): {', '.join(unknown)}")
    large = args.large or LARGE_WORKLOAD in workloads
    if large and "list" not in workloads:
        workloads.append("list")  # the large-table target compares with it
    if min(args.workers, args.repeat, args.threads) < 1 or args.duration <= 0:
        parser.error("--workers, --repeat, --threads and --duration must be positive")
    if args.pooler != "none" and args.database != "postgresql":
        parser.error("--pooler pgbouncer needs --database postgresql")
    extra_env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env takes KEY=VALUE, got {item!r}")
        extra_env[key] = value
    return Options(
        database=args.database,
        workers=args.workers,
        loop=args.loop,
        duration=args.duration,
        warmup=args.warmup,
        connections=connections,
        repeat=args.repeat,
        workloads=workloads,
        large=large,
        wrk=WrkSettings(args.threads, args.timeout),
        bcrypt_rounds=args.bcrypt_rounds,
        probe_connections=args.probe_connections,
        probe_delay_ms=args.probe_delay_ms,
        output=None if args.output == "-" else (REPO_ROOT / args.output).resolve(),
        keep=args.keep,
        profile_dir=Path(args.profile).resolve() if args.profile else None,
        drain_timeout=args.drain_timeout,
        max_noise=args.max_noise,
        quiet_timeout=args.quiet_timeout,
        src=Path(args.src).resolve(),
        vcs_ref=args.vcs_ref or None,
        server_urls={"postgresql": args.postgres_url, "mysql": args.mysql_url},
        extra_env=extra_env,
        pooler=args.pooler,
        command=shlex.join([".venv/bin/python", "bench/run.py", *argv]),
    )


def check_tools(database: str, pooler: str) -> None:
    missing = []
    if (
        pooler == "pgbouncer"
        and shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None
    ):
        missing.append("pgbouncer is not installed; install it with: apt-get install -y pgbouncer")
    if shutil.which("wrk") is None:
        missing.append(f"wrk is not installed; install it with: {INSTALL_HINT}")
    try:
        uv_executable()
    except BenchError as exc:
        missing.append(str(exc))
    client = {"postgresql": "psql", "mysql": "mysql"}.get(database)
    if client and shutil.which(client) is None:
        package = {"psql": "postgresql-client", "mysql": "mariadb-client"}[client]
        missing.append(f"{client} is not installed; install it with: apt-get install -y {package}")
    if missing:
        raise SystemExit("bench/run.py: " + "\nbench/run.py: ".join(missing))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    check_tools(options.database, options.pooler)
    os.environ["UV_PYTHON_DOWNLOADS"] = "never"
    return Benchmark(options).run()


if __name__ == "__main__":
    sys.exit(main())
