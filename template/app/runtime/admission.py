"""Admission control: how many requests the application works on at once.

A worker can use only as many database connections as its pool holds. Requests beyond
that would wait for a connection deep inside the application, each holding its parsed
body, its dependencies and its session, and under load every request would cost more CPU
(docs/performance.md). Here the surplus waits at the door instead, before any of that
exists. Since a request holds at most one connection at a time, the pool itself then
never has anyone waiting, and the door's order (first come, first served) is the order
in which connections are handed out.

Waiting is bounded: a request not let in within the pool's timeout gets 503 with
Retry-After, as one that waits too long for a connection does.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.middleware import BUSY_DETAIL, RETRY_AFTER_SECONDS, busy_response, send_json


def install(app: FastAPI, settings: Settings) -> None:
    """Admit at most as many requests as the pool can serve, and have password checks
    give their place back while they wait (PasswordHasher.waiting)."""
    app.state.admission_events = AdmissionEvents()
    app.add_middleware(
        AdmissionMiddleware,
        limit=settings.db_pool_size + settings.db_max_overflow,
        timeout_seconds=settings.db_pool_timeout_seconds,
        refusal_pause_seconds=settings.refusal_pause_seconds,
        events=app.state.admission_events,
    )
    app.state.password_hasher.waiting = stepped_out

    async def service_busy(request: Request, exc: Exception) -> JSONResponse:
        return busy_response()

    app.add_exception_handler(ServiceBusy, service_busy)


def _ignore(*args: object) -> None:
    pass


@dataclass(slots=True)
class AdmissionEvents:
    """What the door reports, for monitoring (app/runtime/metrics.py sets these).

    `queue_changed(waiting)`: the number of requests waiting changed. `waited(seconds,
    admitted)`: a request that found the door full was let in, or refused, after waiting.
    """

    queue_changed: Callable[[int], None] = _ignore
    waited: Callable[[float, bool], None] = _ignore


# Answers that tell a client to come back later.
_REFUSALS = frozenset({429, 503})


class ServiceBusy(Exception):
    """A request that stepped out could not come back in within the timeout."""


class _Place:
    """One admitted request's place inside the application."""

    __slots__ = ("gate", "inside")

    def __init__(self, gate: "AdmissionMiddleware") -> None:
        self.gate = gate
        self.inside = True

    def leave(self) -> None:
        if self.inside:
            self.inside = False
            self.gate._slots.release()

    async def come_back(self) -> None:
        # Bounded like the first entry: a request that cannot get back in gets a 503
        # rather than waiting behind a queue that does not move.
        try:
            async with asyncio.timeout(self.gate.timeout_seconds):
                await self.gate._slots.acquire()
        except TimeoutError:
            raise ServiceBusy() from None
        self.inside = True


_current_place: ContextVar[_Place | None] = ContextVar("admission_place", default=None)


@asynccontextmanager
async def stepped_out() -> AsyncIterator[None]:
    """Give the current request's place back while it waits for something else.

    Password hashing runs on a few threads of its own, at about ten hashes a second per
    core. A login waiting there needs no database connection; holding its place meanwhile
    would let a burst of logins shut every other request out. Outside a request (the CLI,
    tests that call services directly) this does nothing. Coming back waits at most the
    admission timeout, then raises ServiceBusy (a 503).
    """
    place = _current_place.get()
    if place is None or not place.inside:
        yield
        return
    place.leave()
    try:
        yield
    finally:
        await place.come_back()


class AdmissionMiddleware:
    """At most `limit` HTTP requests inside the application; the rest queue in order.

    Paths starting with one of `exempt_prefixes` (the health checks) skip the queue, so a
    liveness probe answers even when the service is saturated.

    A refusal (429, or 503) is sent `refusal_pause_seconds` late, after the request has
    given its place back. A client that retries at once, as a flood of logins does, then
    waits instead of turning cheap refusals into a flood of their own that starves every
    other request of CPU; brute force slows down with it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        timeout_seconds: float,
        refusal_pause_seconds: float = 0.0,
        exempt_prefixes: tuple[str, ...] = ("/health",),
        events: AdmissionEvents | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.timeout_seconds = timeout_seconds
        self.refusal_pause_seconds = refusal_pause_seconds
        self.exempt_prefixes = exempt_prefixes
        self._slots = asyncio.Semaphore(limit)  # first come, first served
        self.waiting = 0  # requests waiting at the door now: the queue to monitor
        self._busy_body = json.dumps({"detail": BUSY_DETAIL}).encode()
        self.events = events or AdmissionEvents()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt_prefixes):
            await self.app(scope, receive, send)
            return
        if not await self._enter():
            await self._busy(send)
            return
        place = _Place(self)
        token = _current_place.set(place)
        pause = self.refusal_pause_seconds

        async def send_refusals_late(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in _REFUSALS:
                place.leave()
                await asyncio.sleep(pause)
            await send(message)

        try:
            await self.app(scope, receive, send_refusals_late if pause > 0 else send)
        finally:
            _current_place.reset(token)
            place.leave()

    async def _enter(self) -> bool:
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns without waiting
            return True
        self.waiting += 1
        self.events.queue_changed(self.waiting)
        started = time.perf_counter()
        admitted = False
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self._slots.acquire()
            admitted = True
            return True
        except TimeoutError:
            return False
        finally:
            self.waiting -= 1
            self.events.queue_changed(self.waiting)
            self.events.waited(time.perf_counter() - started, admitted)

    async def _busy(self, send: Send) -> None:
        retry_after = (b"retry-after", str(RETRY_AFTER_SECONDS).encode())
        await send_json(send, 503, self._busy_body, (retry_after,))
