"""Results of the runs: one line per run, the summary table, the targets and the Markdown."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from benchkit.cpu import CpuUsage
from benchkit.options import (
    LARGE_WORKLOAD,
    LOGIN_REFUSED_TEXT,
    ME_UNDER_LOGIN_CONNECTIONS,
    SERVICE_LOG_LEVEL,
    UNDER_LOGIN_WORKLOADS,
    WORKLOADS,
    Options,
)
from benchkit.wrk import WrkResult

# Targets, as fractions; check_targets() says what each one compares.
TARGET_RATIO_TO_HEALTH = {"me": 0.25, "list": 0.10, "create": 0.10}
TARGET_SCALING = 0.90
TARGET_LOGIN_OF_HASH_LIMIT = 0.80
TARGET_HEALTH_P99_UNDER_LOGIN_MS = 25.0
TARGET_ME_UNDER_LOGIN_SHARE = 0.50
TARGET_LARGE_LIST_SLOWDOWN = 2.0
# Workloads whose request rate should hold as connections grow.
SCALING_WORKLOADS = ("health", "me", "list", "create", "refresh", "login", LARGE_WORKLOAD)
# A hand-written section of docs/benchmarks.md that bench/run.py keeps when it rewrites it.
ANALYSIS_HEADING = "## Analysis"
# Above this many cores used by other processes a run is flagged as noisy.
NOISE_FLAG_CORES = 0.15


@dataclass(frozen=True)
class RunResult:
    repeat: int
    workload: str
    connections: int
    result: WrkResult
    cpu: CpuUsage
    # /health req/s at the same connection count in the same repeat, for the ratio.
    health_rps: float | None
    # The login wrk that ran alongside (UNDER_LOGIN_WORKLOADS only).
    companion: WrkResult | None = None
    # Measured only as the base of a ratio (health after the large seed); not summarized.
    reference: bool = False

    @property
    def rps(self) -> float:
        """Requests per second; for login only the successful ones, not the refusals."""
        return self.result.ok_rps if self.workload == "login" else self.result.rps

    @property
    def ratio(self) -> float | None:
        if self.workload == "health" or self.workload in UNDER_LOGIN_WORKLOADS:
            return None
        return self.rps / self.health_rps if self.health_rps else None

    @property
    def server_ms_per_request(self) -> float | None:
        """Server CPU per request answered: robust to other load where req/s is not."""
        if self.workload in UNDER_LOGIN_WORKLOADS or not self.result.requests:
            return None
        return 1000 * self.cpu.server / self.result.requests


@dataclass(frozen=True)
class Summary:
    workload: str
    connections: int
    rps: float
    rps_runs: list[float]
    p50_ms: float
    p99_ms: float
    errors: int
    # Expected refusals (login's 503s), summed; not in `errors`.
    refused: int
    ratio: float | None
    server_ms: float | None
    noise_cores: float
    note: str
    # me-under-login: req/s as a share of plain `me` at ME_UNDER_LOGIN_CONNECTIONS.
    share_of_plain: float | None = None


@dataclass(frozen=True)
class Environment:
    """The machine, the versions and the costs measured before the runs."""

    machine: dict[str, str]
    versions: dict[str, str]
    bcrypt_cpu_s: float
    bcrypt_wall_s: float
    uvicorn_command: str

    @property
    def hash_limit_rps(self) -> float:
        """Logins per second the cores could verify if they did nothing else."""
        return int(self.machine["cores"]) / self.bcrypt_cpu_s


def summarize(results: list[RunResult], hash_limit_rps: float) -> list[Summary]:
    """One row per workload and connection count: means over repeats, errors summed."""
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for run in results:
        if not run.reference:
            groups.setdefault((run.workload, run.connections), []).append(run)
    order = {name: i for i, name in enumerate((*WORKLOADS, LARGE_WORKLOAD))}
    keys = sorted(groups, key=lambda key: (order.get(key[0], 99), key[1]))
    summaries = [_summary(groups[key], hash_limit_rps) for key in keys]
    plain_me = next(
        (s for s in summaries if (s.workload, s.connections) == ("me", ME_UNDER_LOGIN_CONNECTIONS)),
        None,
    )
    return [_with_share_of_plain(s, plain_me) for s in summaries]


def _summary(runs: list[RunResult], hash_limit_rps: float) -> Summary:
    workload, connections = runs[0].workload, runs[0].connections
    rps = statistics.fmean(run.rps for run in runs)
    ratios = [run.ratio for run in runs if run.ratio is not None]
    server_ms = [ms for run in runs if (ms := run.server_ms_per_request) is not None]
    refused = sum(run.result.refused for run in runs)
    note = ""
    if workload == "login" and hash_limit_rps:
        note = f"{100 * rps / hash_limit_rps:.0f}% of hashing limit"
        if refused:
            note += f"; {refused} refused ({LOGIN_REFUSED_TEXT})"
    companions = [run.companion for run in runs if run.companion is not None]
    if companions:
        note = _companion_note(companions)
    return Summary(
        workload=workload,
        connections=connections,
        rps=rps,
        rps_runs=[run.rps for run in runs],
        p50_ms=statistics.fmean(run.result.p50_ms for run in runs),
        p99_ms=statistics.fmean(run.result.p99_ms for run in runs),
        errors=sum(run.result.errors for run in runs),
        refused=refused,
        ratio=statistics.fmean(ratios) if ratios else None,
        server_ms=statistics.fmean(server_ms) if server_ms else None,
        noise_cores=max(run.cpu.noise_cores for run in runs),
        note=note,
    )


def _companion_note(logins: list[WrkResult]) -> str:
    """The login wrk that ran alongside: its successes per second, refusals and errors."""
    note = f"login alongside: {statistics.fmean(c.ok_rps for c in logins):.1f} ok/s"
    if refused := sum(c.refused for c in logins):
        note += f", {refused} refused ({LOGIN_REFUSED_TEXT})"
    if errors := sum(c.errors for c in logins):
        note += f", {errors} login errors"
    return note


def _with_share_of_plain(summary: Summary, plain_me: Summary | None) -> Summary:
    if summary.workload != "me-under-login" or plain_me is None or not plain_me.rps:
        return summary
    share = summary.rps / plain_me.rps
    note = f"{100 * share:.0f}% of me c={plain_me.connections}; {summary.note}"
    return replace(summary, share_of_plain=share, note=note)


def format_run_line(run: RunResult, hash_limit_rps: float) -> str:
    r = run.result
    ratio = f"{100 * run.ratio:5.1f}%" if run.ratio is not None else "     -"
    errors = _errors_text(r)
    ms = run.server_ms_per_request
    cpu = f"{ms:6.2f}" if ms is not None else "     -"
    line = (
        f"  r{run.repeat} {run.workload:<18} c={run.connections:<3} {run.rps:8.1f} req/s  "
        f"p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms  errors {errors:<3}  "
        f"vs health {ratio}  server CPU {cpu} ms/req"
    )
    if run.workload == "login" and hash_limit_rps:
        line += f"  {100 * run.rps / hash_limit_rps:.0f}% of hashing limit"
        line += f", {r.refused} refused ({LOGIN_REFUSED_TEXT}, {r.refused_rps:.0f}/s)"
    if (c := run.companion) is not None:
        line += (
            f"  (login alongside: {c.ok_rps:.1f} ok/s, {c.refused} refused "
            f"({LOGIN_REFUSED_TEXT}), errors {_errors_text(c)})"
        )
    if run.cpu.noise_cores > NOISE_FLAG_CORES:
        line += f"  NOISY: other processes used {run.cpu.noise_cores:.2f} cores"
    return line


def _errors_text(result: WrkResult) -> str:
    """The error count, with its kinds: "3 (HTTP 429 2, timeout 1)"."""
    detail = sorted(result.error_detail.items())
    kinds = " (" + ", ".join(f"{k} {v}" for k, v in detail) + ")" if detail else ""
    return f"{result.errors}{kinds}"


@dataclass(frozen=True)
class Check:
    name: str
    met: bool | None  # None: not measured
    detail: str

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]


def check_targets(summaries: list[Summary], hash_limit_rps: float) -> list[Check]:
    by_key = {(s.workload, s.connections): s for s in summaries}
    connections = sorted({s.connections for s in summaries})
    checks = []

    for workload, target in TARGET_RATIO_TO_HEALTH.items():
        rows = [(s.connections, s.ratio) for s in summaries if s.workload == workload]
        ratios = [(c, ratio) for c, ratio in rows if ratio is not None]
        checks.append(
            Check(
                f"{workload} >= {100 * target:.0f}% of health req/s",
                all(ratio >= target for _, ratio in ratios) if ratios else None,
                ", ".join(f"c={c}: {100 * ratio:.1f}%" for c, ratio in ratios),
            )
        )

    for workload in SCALING_WORKLOADS:
        base = by_key.get((workload, connections[0])) if connections else None
        higher = [by_key[(workload, c)] for c in connections[1:] if (workload, c) in by_key]
        if base is None or not higher:
            continue
        shares = [(row, row.rps / base.rps if base.rps else 0.0) for row in higher]
        checks.append(
            Check(
                f"{workload}: zero errors and >= {100 * TARGET_SCALING:.0f}% of the "
                f"c={base.connections} req/s at more connections",
                all(row.errors == 0 and share >= TARGET_SCALING for row, share in shares),
                "; ".join(
                    f"c={row.connections}: {100 * share:.0f}%, {row.errors} errors"
                    for row, share in shares
                ),
            )
        )

    # A refresh checks no password: one token spent and one issued, in one transaction.
    rotations = [
        (c, by_key[("refresh", c)], by_key[("create", c)])
        for c in connections
        if ("refresh", c) in by_key and ("create", c) in by_key
    ]
    checks.append(
        Check(
            "refresh: zero errors and >= the create req/s",
            all(r.errors == 0 and r.rps >= w.rps for _, r, w in rotations) if rotations else None,
            ", ".join(
                f"c={c}: {r.rps / w.rps:.2f}x create, {r.errors} errors" if w.rps else f"c={c}: -"
                for c, r, w in rotations
            ),
        )
    )

    checks += [
        _login_check(summaries, hash_limit_rps),
        _health_under_login_check(summaries),
        _me_under_login_check(summaries),
    ]

    pairs = [
        (c, by_key[("list", c)], by_key[(LARGE_WORKLOAD, c)])
        for c in connections
        if ("list", c) in by_key and (LARGE_WORKLOAD, c) in by_key
    ]
    checks.append(
        Check(
            f"list on the large table within {TARGET_LARGE_LIST_SLOWDOWN:g}x of the 100-item list",
            all(large.rps * TARGET_LARGE_LIST_SLOWDOWN >= small.rps for _, small, large in pairs)
            if pairs
            else None,
            ", ".join(
                f"c={c}: {small.rps / large.rps:.2f}x" if large.rps else f"c={c}: no requests"
                for c, small, large in pairs
            ),
        )
    )
    return checks


def _login_check(summaries: list[Summary], hash_limit_rps: float) -> Check:
    """Successful logins per second against the hashing limit; refusals do not count."""
    logins = [s for s in summaries if s.workload == "login"]
    return Check(
        f"login >= {100 * TARGET_LOGIN_OF_HASH_LIMIT:.0f}% of the hashing limit "
        f"({hash_limit_rps:.1f} req/s) in successful logins",
        all(s.rps >= TARGET_LOGIN_OF_HASH_LIMIT * hash_limit_rps for s in logins)
        if logins
        else None,
        ", ".join(
            f"c={s.connections}: {100 * s.rps / hash_limit_rps:.1f}%"
            + (f" ({s.refused} refused)" if s.refused else "")
            for s in logins
        ),
    )


def _health_under_login_check(summaries: list[Summary]) -> Check:
    probes = [s for s in summaries if s.workload == "health-under-login"]
    return Check(
        f"/health p99 < {TARGET_HEALTH_P99_UNDER_LOGIN_MS:g} ms and no errors while login runs "
        "(at every login connection count)",
        all(s.p99_ms < TARGET_HEALTH_P99_UNDER_LOGIN_MS and s.errors == 0 for s in probes)
        if probes
        else None,
        ", ".join(
            f"login c={s.connections}: p99 {s.p99_ms:.1f} ms, {s.errors} errors" for s in probes
        ),
    )


def _me_under_login_check(summaries: list[Summary]) -> Check:
    """me-under-login's req/s as a share of plain `me` at the same `me` connections."""
    rows = [
        (s, share)
        for s in summaries
        if s.workload == "me-under-login" and (share := s.share_of_plain) is not None
    ]
    return Check(
        f"me (c={ME_UNDER_LOGIN_CONNECTIONS}) >= {100 * TARGET_ME_UNDER_LOGIN_SHARE:.0f}% of its "
        "plain req/s and no errors while login runs (at every login connection count)",
        all(share >= TARGET_ME_UNDER_LOGIN_SHARE and s.errors == 0 for s, share in rows)
        if rows
        else None,
        ", ".join(
            f"login c={s.connections}: {s.rps:.0f} req/s = {100 * share:.0f}%, {s.errors} errors"
            for s, share in rows
        ),
    )


def machine_info() -> dict[str, str]:
    def first(path: str, prefix: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "unknown"

    memory_kib = first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "cores": str(os.cpu_count() or 1),
        "cpu": first("/proc/cpuinfo", "model name"),
        "memory": f"{int(memory_kib) / 1024 / 1024:.0f} GiB" if memory_kib.isdigit() else "?",
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
    }


VERSION_LABELS = (
    ("Python", "python"),
    ("FastAPI", "fastapi"),
    ("Starlette", "starlette"),
    ("uvicorn", "uvicorn"),
    ("uvloop", "uvloop"),
    ("httptools", "httptools"),
    ("pydantic", "pydantic"),
    ("SQLAlchemy", "sqlalchemy"),
    ("SQLModel", "sqlmodel"),
    ("libpass", "libpass"),
    ("bcrypt", "bcrypt"),
    ("uv", "uv"),
)

HEADER = (
    "workload",
    "conns",
    "req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "vs health",
    "server CPU ms/req",
    "runs (req/s)",
    "note",
)


def _note(s: Summary) -> str:
    noisy = f"NOISY ({s.noise_cores:.2f} cores)" if s.noise_cores > NOISE_FLAG_CORES else ""
    return " ".join(part for part in (s.note, noisy) if part)


def summary_table(summaries: list[Summary], *, markdown: bool) -> str:
    rows = [
        (
            s.workload,
            str(s.connections),
            f"{s.rps:.1f}",
            f"{s.p50_ms:.1f}",
            f"{s.p99_ms:.1f}",
            str(s.errors),
            f"{100 * s.ratio:.1f}%" if s.ratio is not None else "-",
            f"{s.server_ms:.2f}" if s.server_ms is not None else "-",
            " / ".join(f"{rps:.0f}" for rps in s.rps_runs),
            _note(s),
        )
        for s in summaries
    ]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]
    return "\n".join(
        "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in [HEADER, *rows]
    )


def render_markdown(
    opts: Options,
    env: Environment,
    summaries: list[Summary],
    checks: list[Check],
    profiles: list[str],
) -> str:
    m, v = env.machine, env.versions
    driver = next(
        (f"{name} {v[name]}" for name in ("asyncpg", "aiomysql", "aiosqlite") if name in v), "?"
    )
    statuses = (
        "every status counted in a Lua response() hook, so any non-2xx is an error (but "
        f"login's {LOGIN_REFUSED_TEXT} refusals, counted apart)"
    )
    extra_env = "".join(f", {key}={value}" for key, value in opts.extra_env.items())
    noisy = [s for s in summaries if s.noise_cores > NOISE_FLAG_CORES]
    lines = [
        "# Benchmarks",
        "",
        "Measured by `bench/run.py` (see `bench/README.md`): it renders the template, migrates a",
        "fresh database, seeds it, starts uvicorn as production does and drives it with wrk from",
        "a separate process on the same machine, so client and server share the cores. Compare",
        "these numbers with each other, not with other machines.",
        "",
        "## Command",
        "",
        "```sh",
        opts.command,
        "```",
        "",
        "## Machine and versions",
        "",
        (
            f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory']}, kernel {m['kernel']}, "
            f"{m['os']}"
        ),
        f"- Database: {opts.database}, a database created for the run; driver {driver}"
        + (
            f"; through {v.get('pgbouncer', 'PgBouncer')} in transaction mode (DB_POOLER=pgbouncer)"
            if opts.pooler == "pgbouncer"
            else ""
        ),
        "- " + ", ".join(f"{label} {v.get(key, '-')}" for label, key in VERSION_LABELS),
        (
            f"- Load: {v.get('wrk')}, `-t{opts.wrk.threads}`, timeout {opts.wrk.timeout_s:g} s "
            "(or twice connections / rate where the closed loop queues longer: logins at the "
            "hashing limit); "
            f"{statuses}"
        ),
        (
            f"- Server: `{env.uvicorn_command}` with ENVIRONMENT=production, "
            f"LOG_LEVEL={SERVICE_LOG_LEVEL} (production's default: one JSON log line per "
            f"request), BCRYPT_ROUNDS={opts.bcrypt_rounds}, a random 64-character "
            f"JWT_SECRET{extra_env}"
        ),
        (
            f"- Each run: {opts.warmup:g} s warm-up, then {opts.duration:g} s measured, after the "
            "server has finished the work earlier runs left queued; "
            f"{opts.repeat} repeat(s); connections {', '.join(map(str, opts.connections))}"
            + (", in reverse order in even repeats" if opts.repeat > 1 else "")
        ),
        "",
        "## Results",
        "",
        (
            f"Means of {opts.repeat} repeat(s); errors are summed and count non-2xx responses, "
            "socket errors and timeouts, except the logins that the service refuses with "
            f"Retry-After ({LOGIN_REFUSED_TEXT}: the hashing queue is full, or the one "
            "account's checks in flight), which are counted apart as *refused*; for `login`, "
            "req/s counts successful logins only. *vs health* "
            "divides req/s by the `/health` req/s at the same connection count in the same "
            "repeat. *server CPU ms/req* is the CPU time of the uvicorn process(es) during the "
            "run divided by the requests answered; unlike req/s it barely moves when other "
            "processes share the machine. The `health-under-login` rows "
            f"are a light `/health` probe ({opts.probe_connections} connections, "
            f"{opts.probe_delay_ms:g} ms pause between requests) measured while `login` runs at "
            "the row's connection count; the `me-under-login` rows are the `me` load at "
            f"{ME_UNDER_LOGIN_CONNECTIONS} connections measured the same way, compared with "
            f"plain `me` at {ME_UNDER_LOGIN_CONNECTIONS} connections."
        ),
        "",
        summary_table(summaries, markdown=True),
        "",
    ]
    if noisy:
        lines += [
            (
                f"Rows marked NOISY had other processes using more than {NOISE_FLAG_CORES} cores "
                "during a run; their req/s understate the service."
            ),
            "",
        ]
    lines += [
        "## Login and the hashing limit",
        "",
        (
            f"One bcrypt verify at rounds {opts.bcrypt_rounds} takes "
            f"{1000 * env.bcrypt_cpu_s:.1f} ms of CPU ({1000 * env.bcrypt_wall_s:.1f} ms wall) "
            "in the rendered project's venv, so "
            f"{m['cores']} cores can verify at most {env.hash_limit_rps:.1f} passwords per second "
            "(the hashing limit). Logins cannot go faster; the target is 80% of it."
        ),
        "",
        "## Targets",
        "",
        "| target | result | detail |",
        "|---|---|---|",
        *(f"| {c.name} | {c.verdict} | {c.detail} |" for c in checks),
        "",
    ]
    if profiles:
        lines += ["## Profiles (py-spy)", "", "```", *profiles, "```", ""]
    lines += [
        f'<!-- Text under an "{ANALYSIS_HEADING}" heading below is written by hand; '
        "bench/run.py keeps it when it rewrites this file. -->",
        "",
    ]
    return "\n".join(lines)
