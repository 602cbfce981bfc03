"""Work done after the answer: an in-process queue served by a few tasks.

A job submitted here never delays nor changes the answer of the request that submitted
it, whatever it meets (a slow or refusing mail server, a database error): it runs after,
and its failure is logged. Jobs live in the process's memory, so a crash loses the jobs
still waiting; what is queued here (emails) can always be asked for again.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]
# Jobs running at once. Each holds a database connection only for its short transactions,
# and waits for a mail server with none held.
WORKERS = 2
# Jobs waiting, beyond which new ones are dropped (and logged): a flood of requests, or a
# mail server that is down, cannot grow the queue without bound.
QUEUE_LIMIT = 1000
# Seconds shutdown waits for the queued jobs to finish.
SHUTDOWN_SECONDS = 10.0


class BackgroundWork:
    """The queue and its workers, started with the first job (in the event loop of the
    requests that submit them)."""

    def __init__(self, workers: int = WORKERS, limit: int = QUEUE_LIMIT) -> None:
        self.workers = workers
        self._queue: asyncio.Queue[tuple[str, Job]] = asyncio.Queue(limit)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.unfinished = 0  # jobs submitted and not finished: waiting or running

    def submit(self, job: Job, what: str) -> None:
        """Queue `job` (described by `what` in the log); never blocks, never raises."""
        if self._closed:
            logger.warning("%s dropped: the service is shutting down", what)
            return
        try:
            self._queue.put_nowait((what, job))
        except asyncio.QueueFull:
            logger.warning("%s dropped: %d jobs are waiting already", what, self._queue.maxsize)
            return
        self.unfinished += 1
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._work(), name=f"background-work-{n}")
                for n in range(self.workers)
            ]

    async def _work(self) -> None:
        while True:
            what, job = await self._queue.get()
            try:
                await job()
            except Exception:
                logger.exception("%s failed", what)
            finally:
                self.unfinished -= 1
                self._queue.task_done()

    async def join(self) -> None:
        """Wait until every job submitted so far has finished."""
        await self._queue.join()

    async def close(self, grace_seconds: float = SHUTDOWN_SECONDS) -> None:
        """Refuse new jobs, give the queued ones `grace_seconds`, then stop the workers."""
        self._closed = True
        if not self._tasks:
            return
        try:
            await asyncio.wait_for(self.join(), grace_seconds)
        except TimeoutError:
            logger.warning("%d background job(s) abandoned at shutdown", self._queue.qsize())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
