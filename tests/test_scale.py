"""The service scaled out, on one PostgreSQL and one MySQL variant.

- scripts/prestart run by four processes at once: one migrates, the others wait for its
  lock, one administrator is created and no process fails;
- three uvicorn replicas behind a real HAProxy (round robin, health checks on
  /health/ready): every rule that must hold across processes (login throttling, the last
  administrator, logout, refresh-token reuse) holds through the balancer; a replica
  SIGKILLed under a write load loses no acknowledged write and is taken out and back in by
  the health checks; a replica given SIGTERM under load drains without failing a request;
- on PostgreSQL, the project's whole test suite through a real PgBouncer in transaction
  mode (DB_POOLER=pgbouncer), and more requests at once than it has server connections.

What the tests measured is printed (`pytest -s` shows it) and described on the "Running
at scale" page.
"""

import csv
import http.client
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from benchkit.pooler import pgbouncer

from tests.support import (
    POSTGRES_URL,
    VARIANTS,
    DatabaseServer,
    Project,
    Reply,
    bearer,
    call,
    free_port,
    project_env,
    run,
)

SCALE_VARIANTS = [variant for variant in VARIANTS if variant.name in ("postgresql", "mysql")]
scale_variants = pytest.mark.parametrize(
    "project", SCALE_VARIANTS, indirect=True, ids=[variant.name for variant in SCALE_VARIANTS]
)

ADMIN_EMAIL = "first.admin@example.com"
PASSWORD = "scale test password 1"
# HAProxy's health checks: every CHECK_INTERVAL, down after FALL failures, up after RISE.
CHECK_INTERVAL = 0.5
FALL = 2
RISE = 1
REPLICAS = ("r1", "r2", "r3")
GRACEFUL_SHUTDOWN_SECONDS = 10
LOAD_THREADS = 6


def require_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"`{name}` is not installed; .ci/run installs it (apt-get install {name})")
    return path


@contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    """A database of its own on the server under test (`scale_...`), dropped afterwards."""
    server = DatabaseServer(kind)
    name = f"scale_{secrets.token_hex(4)}"
    url = server.create(name)
    try:
        yield url
    finally:
        server.drop(name)


def query(database_url: str, sql: str) -> list[str]:
    """The first column of each row `sql` returns, through the database's own client."""
    url = urlsplit(database_url)
    database = url.path.lstrip("/")
    if url.scheme == "postgresql":
        command = ["psql", "-h", url.hostname or "", "-p", str(url.port or 5432)]
        command += ["-U", url.username or "", "-d", database, "-At", "-c", sql]
        env = {**os.environ, "PGPASSWORD": url.password or ""}
    else:
        command = ["mysql", "-h", url.hostname or "", "-P", str(url.port or 3306)]
        command += ["-u", url.username or "", "-N", "-B", database, "-e", sql]
        env = {**os.environ, "MYSQL_PWD": url.password or ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return result.stdout.split()


def service_environment(project: Project, database_url: str, **extra: str) -> dict[str, str]:
    """The service's settings, as production sets them, behind a balancer on 127.0.0.1."""
    return {
        **project_env(),
        "PATH": f"{project.path / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "production",
        # No mail server here: emails go to the log, as production allows when told so.
        "EMAIL_DELIVERY": "log",
        "JWT_SECRET": "scale-" + "k" * 48,
        "CORS_ORIGINS": "https://app.example.com",
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "WARNING",
        "REFUSAL_PAUSE_SECONDS": "0",
        "TRUSTED_PROXIES": "127.0.0.1",
        # Every account these tests register comes from the balancer's one address.
        "REGISTER_MAX_PER_ADDRESS_PER_HOUR": "1000",
        "FIRST_ADMIN_EMAIL": ADMIN_EMAIL,
        "FIRST_ADMIN_PASSWORD": PASSWORD,
        **extra,
    }


# --- migrations and the first administrator, by four processes at once ---------------------


@scale_variants
def test_prestart_on_four_replicas_at_once_migrates_once_and_creates_one_admin(
    project: Project,
) -> None:
    with fresh_database(project.variant.database) as database_url:
        env = service_environment(project, database_url)
        processes = [
            subprocess.Popen(
                ["scripts/prestart"],
                cwd=project.path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        outputs = [process.communicate(timeout=180) for process in processes]
        codes = [process.returncode for process in processes]
        report = "\n".join(
            f"--- exit {c}\n{out}{err}" for c, (out, err) in zip(codes, outputs, strict=True)
        )

        assert codes == [0, 0, 0, 0], report
        migrated = [err for _, err in outputs if "Running upgrade" in err]
        assert len(migrated) == 1, report
        created = [out for out, _ in outputs if f"Created administrator {ADMIN_EMAIL}" in out]
        assert len(created) == 1, report
        assert query(database_url, f"SELECT count(*) FROM users WHERE email = '{ADMIN_EMAIL}'") == [
            "1"
        ]
        waited = sum("Another process is migrating" in err for _, err in outputs)
        print(f"\n{project.variant.name}: 1 process migrated, {waited} waited for its lock")


# --- three replicas behind HAProxy ----------------------------------------------------------


@dataclass
class Replica:
    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Cluster:
    """Three replicas of one variant behind HAProxy, on a database of their own."""

    project: Project
    database_url: str
    env: dict[str, str]
    work: Path
    replicas: dict[str, Replica] = field(default_factory=dict)
    port: int = 0
    stats_port: int = 0
    haproxy: subprocess.Popen[bytes] | None = None

    def start_replica(self, name: str) -> None:
        replica = self.replicas[name]
        command = [
            str(self.project.path / ".venv" / "bin" / "uvicorn"), "app.main:app",
            "--host", "127.0.0.1", "--port", str(replica.port),
            "--no-proxy-headers", "--no-access-log",
            "--loop", "app.runtime.loop:new_event_loop",
            "--timeout-graceful-shutdown", str(GRACEFUL_SHUTDOWN_SECONDS),
        ]  # fmt: skip
        with replica.log.open("ab") as log:
            replica.process = subprocess.Popen(
                command,
                cwd=self.project.path,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            with suppress(OSError):
                if call(replica.port, "GET", "/health/ready").status == 200:
                    return
            assert replica.process.poll() is None, replica.log.read_text()
            assert time.monotonic() < deadline, (
                f"{name} never got ready:\n{replica.log.read_text()}"
            )
            time.sleep(0.1)

    def stop_replica(self, name: str, sig: signal.Signals = signal.SIGTERM) -> int:
        process = self.replicas[name].process
        assert process is not None
        process.send_signal(sig)
        try:
            return process.wait(timeout=GRACEFUL_SHUTDOWN_SECONDS + 20)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's statistics row of each replica, from its stats socket."""
        with socket.create_connection(("127.0.0.1", self.stats_port), timeout=5) as sock:
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "replicas" and row["svname"] in self.replicas
        }

    def states(self) -> dict[str, str]:
        """Each replica's state as HAProxy sees it: UP, DOWN, ..."""
        return {name: row["status"].split()[0] for name, row in self.stats().items()}

    def wait_for(self, name: str, state: str, timeout: float = 30) -> float:
        """Wait until HAProxy reports `name` in `state`; return the monotonic time it did."""
        deadline = time.monotonic() + timeout
        while (now := time.monotonic()) < deadline:
            if self.states().get(name) == state:
                return now
            time.sleep(0.05)
        raise AssertionError(f"HAProxy never saw {name} {state}: {self.states()}")

    def haproxy_config(self) -> str:
        servers = "\n".join(
            f"    server {r.name} 127.0.0.1:{r.port} check" for r in self.replicas.values()
        )
        interval = f"{int(CHECK_INTERVAL * 1000)}ms"
        return f"""\
global
    maxconn 1024
    stats socket ipv4@127.0.0.1:{self.stats_port} level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # A connection a replica refuses (it died or is draining) is tried on another one.
    retries 3
    option redispatch 1

frontend api
    bind 127.0.0.1:{self.port}
    option forwardfor
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /health/ready
    http-check expect status 200
    default-server inter {interval} fall {FALL} rise {RISE}
    http-response set-header X-Served-By %[srv_name]
{servers}
"""


@pytest.fixture(scope="module")
def cluster(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    haproxy = require_tool("haproxy")
    work = tmp_path_factory.mktemp(f"cluster-{project.variant.name}")
    with fresh_database(project.variant.database) as database_url:
        # Logins are slow enough (bcrypt cost 10) that some are in flight when a replica stops.
        env = service_environment(project, database_url, BCRYPT_ROUNDS="10")
        run("scripts/prestart", project.path, env)
        cluster = Cluster(project, database_url, env, work, port=free_port())
        cluster.stats_port = free_port()
        for name in REPLICAS:
            cluster.replicas[name] = Replica(name, free_port(), work / f"{name}.log")
        try:
            for name in REPLICAS:
                cluster.start_replica(name)
            config = work / "haproxy.cfg"
            config.write_text(cluster.haproxy_config())
            check = subprocess.run(
                [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, check=False
            )
            assert check.returncode == 0, check.stdout + check.stderr
            with (work / "haproxy.log").open("wb") as log:
                cluster.haproxy = subprocess.Popen(
                    [haproxy, "-db", "-f", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 30
            while not (ok := _all_up(cluster)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ok, (work / "haproxy.log").read_text()
            yield cluster
        finally:
            processes = [r.process for r in cluster.replicas.values()] + [cluster.haproxy]
            for process in processes:
                if process is not None and process.poll() is None:
                    with suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)


def _all_up(cluster: Cluster) -> bool:
    with suppress(OSError):
        return set(cluster.states().values()) == {"UP"} and len(cluster.states()) == 3
    return False


def register_and_login(cluster: Cluster, email: str, address: str | None = None) -> Reply:
    registered = call(
        cluster.port,
        "POST",
        "/api/v1/auth/register",
        json_body={"email": email, "password": PASSWORD},
    )
    assert registered.status == 201, registered.body
    return login(cluster, email, PASSWORD, address)


def login(cluster: Cluster, email: str, password: str, address: str | None = None) -> Reply:
    headers = {"X-Forwarded-For": address} if address else {}
    return call(
        cluster.port,
        "POST",
        "/api/v1/auth/login",
        form={"username": email, "password": password},
        headers=headers,
    )


def unique_email(what: str) -> str:
    return f"{what}-{secrets.token_hex(4)}@example.com"


@scale_variants
def test_the_balancer_sends_requests_to_every_replica_in_turn(cluster: Cluster) -> None:
    served = Counter(call(cluster.port, "GET", "/health").served_by for _ in range(9))

    assert set(served) == set(REPLICAS), served
    assert max(served.values()) - min(served.values()) <= 1, served


@scale_variants
def test_a_login_lockout_holds_on_every_replica(cluster: Cluster) -> None:
    email, attacker, owner = unique_email("locked"), "203.0.113.7", "198.51.100.9"
    assert register_and_login(cluster, email).status == 200

    failures = [login(cluster, email, "wrong password", attacker) for _ in range(5)]
    assert [reply.status for reply in failures] == [401] * 5
    assert len({reply.served_by for reply in failures}) == 3

    refused = [login(cluster, email, PASSWORD, attacker) for _ in range(3)]
    assert [reply.status for reply in refused] == [429] * 3, [r.body for r in refused]
    assert {reply.served_by for reply in refused} == set(REPLICAS)
    assert all(int(reply.headers["retry-after"]) > 0 for reply in refused)
    # The lock is the attacker's: the owner, from their own address, still signs in.
    assert login(cluster, email, PASSWORD, owner).status == 200


@scale_variants
def test_two_administrators_demoting_each_other_on_two_replicas_leave_one(
    cluster: Cluster,
) -> None:
    admin = login(cluster, ADMIN_EMAIL, PASSWORD)
    assert admin.status == 200, admin.body
    survivor = admin.body["access_token"]
    for _ in range(3):
        email = unique_email("second-admin")
        registered = register_and_login(cluster, email)
        me = call(
            cluster.port, "GET", "/api/v1/users/me", headers=bearer(registered.body["access_token"])
        )
        promoted = call(
            cluster.port,
            "PATCH",
            f"/api/v1/users/{me.body['id']}",
            json_body={"role": "admin"},
            headers=bearer(survivor),
        )
        assert promoted.status == 200, promoted.body
        other = login(cluster, email, PASSWORD).body["access_token"]
        ids = {
            token: call(cluster.port, "GET", "/api/v1/users/me", headers=bearer(token)).body["id"]
            for token in (survivor, other)
        }
        pairs = [(survivor, ids[other]), (other, ids[survivor])]
        with ThreadPoolExecutor(2) as pool:
            replies = list(
                pool.map(
                    lambda pair: call(
                        cluster.port,
                        "PATCH",
                        f"/api/v1/users/{pair[1]}",
                        json_body={"role": "user"},
                        headers=bearer(pair[0]),
                    ),
                    pairs,
                )
            )
        statuses = [reply.status for reply in replies]
        assert statuses.count(200) == 1, [(r.status, r.served_by, r.body) for r in replies]
        assert len({reply.served_by for reply in replies}) == 2
        survivor = pairs[statuses.index(200)][0]
        users = call(cluster.port, "GET", "/api/v1/users?limit=100", headers=bearer(survivor))
        admins = [u for u in users.body["items"] if u["role"] == "admin" and u["is_active"]]
        assert len(admins) == 1, admins


@scale_variants
def test_a_logout_on_one_replica_is_refused_by_the_others(cluster: Cluster) -> None:
    token = register_and_login(cluster, unique_email("logout")).body["access_token"]
    before = [
        call(cluster.port, "GET", "/api/v1/users/me", headers=bearer(token)) for _ in REPLICAS
    ]
    assert [reply.status for reply in before] == [200] * 3
    assert {reply.served_by for reply in before} == set(REPLICAS)

    logout = call(cluster.port, "POST", "/api/v1/auth/logout", headers=bearer(token))
    assert logout.status == 204

    after = [call(cluster.port, "GET", "/api/v1/users/me", headers=bearer(token)) for _ in REPLICAS]
    assert [reply.status for reply in after] == [401] * 3
    assert {reply.served_by for reply in after} == set(REPLICAS)


@scale_variants
def test_a_reused_refresh_token_ends_the_session_on_every_replica(cluster: Cluster) -> None:
    first = register_and_login(cluster, unique_email("refresh")).body
    rotated = call(
        cluster.port,
        "POST",
        "/api/v1/auth/refresh",
        json_body={"refresh_token": first["refresh_token"]},
    )
    assert rotated.status == 200, rotated.body

    reused = call(
        cluster.port,
        "POST",
        "/api/v1/auth/refresh",
        json_body={"refresh_token": first["refresh_token"]},
    )
    assert reused.status == 401
    # The whole session ended: the token the rotation gave, on the next replicas, too.
    spent = call(
        cluster.port,
        "POST",
        "/api/v1/auth/refresh",
        json_body={"refresh_token": rotated.body["refresh_token"]},
    )
    me = call(cluster.port, "GET", "/api/v1/users/me", headers=bearer(rotated.body["access_token"]))
    assert (spent.status, me.status) == (401, 401)
    assert len({rotated.served_by, reused.served_by, spent.served_by, me.served_by}) == 3


@dataclass
class Outcome:
    started: float
    finished: float
    status: int | None  # None: the connection failed
    served_by: str = ""
    item_id: str | None = None


def run_load(
    request: Callable[[int], Reply],
    seconds: float,
    events: Callable[[float], None],
    threads: int = LOAD_THREADS,
) -> list[Outcome]:
    """`threads` clients sending `request(n)` back to back for `seconds`, while
    `events(started)` runs in this thread (it returns when its work is done)."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        sent = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                reply = request(number * 100_000 + sent)
                body = reply.body if isinstance(reply.body, dict) else {}
                outcome = Outcome(
                    started, time.monotonic(), reply.status, reply.served_by, body.get("id")
                )
            except (OSError, http.client.HTTPException):
                outcome = Outcome(started, time.monotonic(), None)
            sent += 1
            with lock:
                outcomes.append(outcome)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    started = time.monotonic()
    for thread in clients:
        thread.start()
    try:
        events(started)
        while time.monotonic() - started < seconds:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    return outcomes


@scale_variants
def test_a_replica_killed_under_write_load_loses_no_acknowledged_write(cluster: Cluster) -> None:
    token = register_and_login(cluster, unique_email("writer")).body["access_token"]
    headers = bearer(token)
    times: dict[str, float] = {}

    def create(number: int) -> Reply:
        return call(
            cluster.port,
            "POST",
            "/api/v1/items",
            json_body={"title": f"item {number}"},
            headers=headers,
        )

    def kill_and_restart(started: float) -> None:
        time.sleep(1.5)
        times["killed"] = time.monotonic()
        cluster.stop_replica("r2", signal.SIGKILL)
        times["down"] = cluster.wait_for("r2", "DOWN")
        time.sleep(1.0)
        times["restarting"] = time.monotonic()
        cluster.start_replica("r2")
        times["up"] = cluster.wait_for("r2", "UP")
        time.sleep(1.5)  # the load goes on; r2 takes its share again

    outcomes = run_load(create, 0, kill_and_restart)

    acknowledged = {uuid.UUID(o.item_id) for o in outcomes if o.status == 201 and o.item_id}
    stored = {uuid.UUID(value) for value in query(cluster.database_url, "SELECT id FROM items")}
    assert acknowledged, "the load created nothing"
    assert acknowledged <= stored, f"acknowledged but lost: {acknowledged - stored}"
    failed = [o for o in outcomes if o.status != 201]
    # Only requests on r2 when it died fail: cut off at the kill, all sent before the
    # balancer took r2 out. Those it sent to r2 afterwards, refused, went to another replica.
    assert all(o.started < times["down"] for o in failed), failed
    assert all(o.finished < times["killed"] + 0.5 for o in failed), failed
    assert all(o.status in (None, 502, 503, 504) for o in failed), failed
    detection = times["down"] - times["killed"]
    assert detection <= CHECK_INTERVAL * (FALL + 1) + 1.0, detection
    after_return = [o for o in outcomes if o.started > times["up"]]
    assert any(o.served_by == "r2" and o.status == 201 for o in after_return)
    # Between the balancer taking r2 out and r2 starting again, nothing went to it.
    assert not any(
        o.served_by == "r2" for o in outcomes if times["down"] < o.started < times["restarting"]
    )
    print(
        f"\n{cluster.project.variant.name}: {len(outcomes)} writes, {len(acknowledged)} "
        f"acknowledged and stored, {len(failed)} failed (in flight on the killed replica); "
        f"taken out {detection:.2f} s after the kill"
    )


@scale_variants
def test_sigterm_drains_a_replica_without_failing_a_request(cluster: Cluster) -> None:
    emails = [unique_email(f"drain{n}") for n in range(LOAD_THREADS)]
    for email in emails:
        assert register_and_login(cluster, email).status == 200
    times: dict[str, float] = {}
    exit_code: list[int] = []

    def sign_in(number: int) -> Reply:
        return login(cluster, emails[number // 100_000], PASSWORD)

    def drain_and_restart(started: float) -> None:
        time.sleep(1.0)
        # Signal while HAProxy has requests on r2 (its current sessions), so some are in flight.
        deadline = time.monotonic() + 5
        while cluster.stats()["r2"]["scur"] == "0" and time.monotonic() < deadline:
            time.sleep(0.01)
        times["signalled"] = time.monotonic()
        exit_code.append(cluster.stop_replica("r2", signal.SIGTERM))
        times["exited"] = time.monotonic()
        cluster.wait_for("r2", "DOWN")
        cluster.start_replica("r2")
        times["up"] = cluster.wait_for("r2", "UP")
        time.sleep(1.0)

    outcomes = run_load(sign_in, 0, drain_and_restart)

    failed = [o for o in outcomes if o.status != 200]
    assert not failed, Counter(o.status for o in failed)
    # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM is a clean exit.
    assert exit_code[0] in (0, -signal.SIGTERM), cluster.replicas["r2"].log.read_text()
    finished_during_drain = [
        o for o in outcomes if o.served_by == "r2" and o.started < times["signalled"] < o.finished
    ]
    assert finished_during_drain, "no request was in flight on r2 when it got SIGTERM"
    assert any(o.served_by == "r2" for o in outcomes if o.started > times["up"])
    print(
        f"\n{cluster.project.variant.name}: {len(outcomes)} logins, none failed; "
        f"{len(finished_during_drain)} were in flight on the draining replica and finished"
    )


# --- the whole suite through PgBouncer -------------------------------------------------------


@pytest.mark.parametrize("project", SCALE_VARIANTS[:1], indirect=True, ids=["postgresql"])
def test_project_test_suite_passes_through_pgbouncer_in_transaction_mode(
    project: Project,
) -> None:
    require_tool("pgbouncer")
    with fresh_database("postgresql") as direct_url, pgbouncer(POSTGRES_URL) as bouncer_url:
        bounced = f"{bouncer_url}/{urlsplit(direct_url).path.lstrip('/')}"
        result = run(
            "uv run pytest -q -p no:cacheprovider --tb=short",
            project.path,
            {"TEST_DATABASE_URL": bounced, "DB_POOLER": "pgbouncer"},
        )
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


@pytest.mark.parametrize("project", SCALE_VARIANTS[:1], indirect=True, ids=["postgresql"])
def test_concurrent_requests_through_pgbouncer_never_miss_a_prepared_statement(
    project: Project, tmp_path: Path
) -> None:
    """More requests at once than PgBouncer has server connections, so that consecutive
    transactions of one client land on different server connections: with the autocommit
    fast paths, a statement prepared on one was then run on another and failed."""
    require_tool("pgbouncer")
    with fresh_database("postgresql") as direct_url, pgbouncer(POSTGRES_URL, 4) as bouncer_url:
        url = f"{bouncer_url}/{urlsplit(direct_url).path.lstrip('/')}"
        env = service_environment(project, url, DB_POOLER="pgbouncer")
        run("scripts/prestart", project.path, env)  # migrations and their lock, through it
        cluster = Cluster(project, url, env, tmp_path, port=0)
        cluster.replicas["r1"] = Replica("r1", free_port(), tmp_path / "r1.log")
        cluster.start_replica("r1")
        try:
            port = cluster.replicas["r1"].port
            token = register_and_login_at(port, unique_email("bounced"))
            paths = ["/api/v1/users/me", "/api/v1/users/me/sessions"]
            outcomes = run_load(
                lambda n: call(port, "GET", paths[n % 2], headers=bearer(token)),
                3,
                lambda started: None,
                threads=16,
            )
        finally:
            cluster.stop_replica("r1")
    failed = Counter(o.status for o in outcomes if o.status != 200)
    assert outcomes
    assert not failed, (failed, cluster.replicas["r1"].log.read_text()[-3000:])
    print(f"\nthrough PgBouncer (4 server connections): {len(outcomes)} requests, none failed")


def register_and_login_at(port: int, email: str) -> str:
    body = {"email": email, "password": PASSWORD}
    assert call(port, "POST", "/api/v1/auth/register", json_body=body).status == 201
    form = {"username": email, "password": PASSWORD}
    reply = call(port, "POST", "/api/v1/auth/login", form=form)
    assert reply.status == 200, reply.body
    return str(reply.body["access_token"])
