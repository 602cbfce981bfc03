"""Prometheus metrics of every worker, served on a port of their own (METRICS_PORT).

prometheus-client's multiprocess mode: each worker process writes its values to files in
one directory that all the workers of a server share, and a scrape, answered by any of
them, reads every file. So with `--workers N` each answer covers all the workers. The
directory is named after the process that started the workers (uvicorn's supervisor, or
the one process itself), made at start-up, and removed when its last worker stops or,
when that could not happen (a crash, a process killed by a signal), at the next start.

Each worker listens on METRICS_PORT with SO_REUSEPORT, so they share the port and the
kernel hands each scrape to one of them. The API's port has no `/metrics`: a load
balancer in front of the API cannot expose it.
"""

import atexit
import contextlib
import fcntl
import functools
import multiprocessing
import os
import shutil
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from http.server import ThreadingHTTPServer
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import MetricsHandler
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy import event
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import project, tokens
from app.core.config import Settings
from app.core.dialect import DIALECT_NAME
from app.core.middleware import route_template

# Seconds; fine at the bottom, where most requests of this service answer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# The route label of a request that matched no route (a 404 or 405): one series, whatever
# path was asked for.
UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def install(app: FastAPI, settings: Settings) -> None:
    """Count requests, the admission queue, the pool and the hashing queue, and serve the
    metrics on METRICS_PORT while the application runs. METRICS_PORT=0: nothing at all."""
    if settings.metrics_port == 0:
        return
    directory = shared_directory()
    meters = _meters()
    app.add_middleware(RequestMetricsMiddleware, meters=meters)
    meters.build_info.labels(project.VERSION, DIALECT_NAME, _jwt_library()).set(1)

    engine = app.state.database.engine.sync_engine
    meters.pool_limit.set(settings.db_pool_size + settings.db_max_overflow)

    def count_in_use(*_: object, returning: int = 0) -> None:
        # Read from the pool, so that a connection lost on the way cannot skew the count;
        # a connection being checked in is still counted out when the event fires.
        pool: Any = engine.pool  # a queue pool (the engine's default)
        meters.pool_in_use.set(pool.checkedout() - returning)

    event.listen(engine, "checkout", count_in_use)
    event.listen(engine, "checkin", functools.partial(count_in_use, returning=1))
    app.state.password_hasher.pending_changed = meters.hashes_pending.set
    admission_events = getattr(app.state, "admission_events", None)
    if admission_events is not None:  # admission control is installed
        admission_events.queue_changed = meters.admission_queue.set
        admission_events.waited = lambda seconds, admitted: meters.admission_wait.labels(
            "admitted" if admitted else "refused"
        ).observe(seconds)

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def serving_metrics(app: FastAPI) -> AsyncIterator[Any]:
        server = MetricsServer(settings.metrics_host, settings.metrics_port, directory)
        try:
            async with inner(app) as state:
                yield state
        finally:
            server.close()
            if multiprocessing.parent_process() is not None:
                # A worker's process ends with its application: uvicorn re-raises the
                # signal that stopped it, so exit handlers would not run.
                _leave(directory)

    app.router.lifespan_context = serving_metrics


class _Meters:
    """The metrics written by the application's own code (the login counters live in
    app/services/auth.py, beside the outcomes they count)."""

    def __init__(self) -> None:
        labels = ["method", "route", "status"]
        self.requests = Counter(
            "http_requests", "HTTP requests answered, by route template and status class", labels
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer",
            labels,
            buckets=LATENCY_BUCKETS,
        )
        self.in_progress = Gauge(
            "http_requests_in_progress",
            "HTTP requests being answered now",
            multiprocess_mode="livesum",
        )
        self.admission_queue = Gauge(
            "admission_queue_length",
            "Requests waiting at the door for a place (app/runtime/admission.py)",
            multiprocess_mode="livesum",
        )
        self.admission_wait = Histogram(
            "admission_wait_seconds",
            "Time waited at the door by requests that found it full, by outcome "
            "(refused: 503 after DB_POOL_TIMEOUT_SECONDS)",
            ["outcome"],
            buckets=WAIT_BUCKETS,
        )
        self.pool_in_use = Gauge(
            "db_pool_connections_in_use",
            "Pooled database connections checked out now",
            multiprocess_mode="livesum",
        )
        self.pool_limit = Gauge(
            "db_pool_connections_limit",
            "Most pooled connections the workers may hold (DB_POOL_SIZE + DB_MAX_OVERFLOW each)",
            multiprocess_mode="livesum",
        )
        self.hashes_pending = Gauge(
            "password_hashes_pending",
            "Password hashes waiting or running (at most HASHING_QUEUE_LIMIT per worker)",
            multiprocess_mode="livesum",
        )
        self.build_info = Gauge(
            "app_build_info",
            "Always 1; the labels say what is running",
            ["version", "database", "jwt_library"],
            multiprocess_mode="livemax",
        )
        # method, route, status class -> the counter's and the histogram's series
        self.series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, _STATUS_CLASSES.get(status // 100, "other"))
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = (self.requests.labels(*key), self.latency.labels(*key))
        series[0].inc()
        series[1].observe(seconds)


@functools.cache
def _meters() -> _Meters:
    # Created once per process, after multiprocess mode is on (shared_directory()).
    return _Meters()


def _jwt_library() -> str:
    """The distribution that provides the JWT module in use, as the project's answers
    name it."""
    module = str(vars(tokens)["jwt"].__name__).partition(".")[0]
    return packages_distributions().get(module, [module])[0].lower()


class RequestMetricsMiddleware:
    """Counts each HTTP request and its duration, by method, route template and status
    class. The route template (`/api/v1/users/{user_id}`), never the path, so ids in
    paths do not make a series each."""

    def __init__(self, app: ASGIApp, *, meters: _Meters) -> None:
        self.app = app
        self.meters = meters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        meters = self.meters
        meters.in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            meters.in_progress.dec()
            method = scope["method"]
            meters.request_done(
                method if method in _METHODS else "other",
                route_template(scope) or UNMATCHED_ROUTE,
                status_code,
                time.perf_counter() - started,
            )


@functools.cache
def shared_directory() -> Path:
    """Turn multiprocess mode on for this process, in the directory its server's workers
    share, and return that directory."""
    # A worker started by uvicorn's supervisor (--workers, --reload) shares its parent's
    # directory; a process on its own has one of its own.
    owner = os.getppid() if multiprocessing.parent_process() is not None else os.getpid()
    base = Path(tempfile.gettempdir())
    prefix = f"{project.SLUG}-metrics-"
    for stale in base.glob(f"{prefix}*"):
        stale_owner = stale.name.removeprefix(prefix)
        if stale_owner.isdigit() and int(stale_owner) != owner and not _alive(int(stale_owner)):
            shutil.rmtree(stale, ignore_errors=True)  # left by a server that crashed
    directory = base / f"{prefix}{owner}"
    directory.mkdir(mode=0o700, exist_ok=True)
    if directory.is_symlink() or directory.stat().st_uid != os.getuid():
        raise RuntimeError(f"{directory} belongs to someone else; remove it or set TMPDIR")
    with _locked(directory):
        for pid in _pids_in(directory):
            if not _alive(pid):
                mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]  # crashed
        (directory / f"{_WORKER_MARK}{os.getpid()}").touch()
    # prometheus-client reads the directory from the environment as each value is made.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    atexit.register(_leave, directory)
    return directory


# One empty file per worker using the directory, named with its process id.
_WORKER_MARK = "worker-"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """The directory's lock: workers that start and stop at once take turns."""
    with (directory / "lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _leave(directory: Path) -> None:
    """This process's live gauges stop counting; the last worker removes the directory."""
    with contextlib.suppress(OSError), _locked(directory):
        mark_process_dead(os.getpid(), str(directory))  # type: ignore[no-untyped-call]
        (directory / f"{_WORKER_MARK}{os.getpid()}").unlink(missing_ok=True)
        workers = [
            int(path.name.removeprefix(_WORKER_MARK))
            for path in directory.glob(f"{_WORKER_MARK}*")
            if path.name.removeprefix(_WORKER_MARK).isdigit()
        ]
        if not any(_alive(pid) for pid in workers):
            shutil.rmtree(directory, ignore_errors=True)


def _pids_in(directory: Path) -> set[int]:
    # Files are named like counter_1234.db and gauge_livesum_1234.db.
    return {
        int(pid)
        for path in directory.glob("*.db")
        if (pid := path.stem.rpartition("_")[2]).isdigit()
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class _Handler(MetricsHandler):
    """prometheus-client's handler, on `/metrics` only, and without a log line per scrape."""

    def do_GET(self) -> None:  # noqa: N802  # the name http.server calls
        if urlsplit(self.path).path != "/metrics":
            self.send_error(404)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ReusePortServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Callable[..., Any]) -> None:
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0][0]
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # Every worker binds the port; the kernel spreads the scrapes over them.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # TCPServer's bind, without HTTPServer's reverse DNS lookup of the host.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class MetricsServer:
    """`/metrics` of all the workers, on a thread of this one."""

    def __init__(self, host: str, port: int, directory: Path) -> None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        self._server = _ReusePortServer((host, port), _Handler.factory(registry))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
