"""Where the machine's CPU time goes during a run: server, database, wrk, or someone else.

A benchmark on a shared two-core machine is only as good as its quietest minute. The meter
reads /proc before and after a run and splits the machine's busy time into the server's
processes, the benchmark's database, the load generator (wrk, reaped children) and the rest
("noise": another user's tests, say). Server CPU per request stays meaningful under noise
where requests per second do not.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far, by kind of process."""

    wall: float
    busy: float
    server: float
    database: float
    load_generator: float

    def __sub__(self, other: CpuSample) -> CpuUsage:
        return CpuUsage(
            wall=self.wall - other.wall,
            busy=self.busy - other.busy,
            server=self.server - other.server,
            database=self.database - other.database,
            load_generator=self.load_generator - other.load_generator,
        )


@dataclass(frozen=True)
class CpuUsage:
    """CPU seconds used between two samples."""

    wall: float
    busy: float
    server: float
    database: float
    load_generator: float

    @property
    def noise_cores(self) -> float:
        """Cores used by processes that are not part of the benchmark."""
        other = self.busy - self.server - self.database - self.load_generator
        return max(0.0, other) / self.wall if self.wall > 0 else 0.0

    @property
    def server_cores(self) -> float:
        return self.server / self.wall if self.wall > 0 else 0.0


# Given a process's command name and command line: True if it serves the benchmark's
# database, False if it serves another client, None if it is no database process.
DatabaseMatcher = Callable[[str, str], "bool | None"]


class CpuMeter:
    def __init__(self, server_pgid: Callable[[], int | None], database: DatabaseMatcher) -> None:
        self._server_pgid = server_pgid
        self._database = database
        self._me = os.getpid()

    def sample(self) -> CpuSample:
        server_pgid = self._server_pgid()
        server = database = own = 0
        for stat_path in Path("/proc").glob("[0-9]*/stat"):
            try:
                head, _, tail = stat_path.read_text().rpartition(")")
                fields = tail.split()
                comm = head.partition("(")[2]
                pid = int(stat_path.parent.name)
            except (OSError, ValueError):
                continue
            # After the command name: state ppid pgrp ... utime (12th) stime (13th).
            ticks = int(fields[11]) + int(fields[12])
            if server_pgid is not None and int(fields[2]) == server_pgid:
                server += ticks
            elif pid == self._me or comm in ("wrk", "py-spy"):
                own += ticks
            elif comm in ("postgres", "mariadbd", "mysqld") and self._database(
                comm, _cmdline(stat_path.parent)
            ):
                database += ticks
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return CpuSample(
            wall=time.monotonic(),
            busy=_machine_busy_ticks() / TICKS,
            server=server / TICKS,
            database=database / TICKS,
            load_generator=(own / TICKS) + children.ru_utime + children.ru_stime,
        )

    def measure(self, seconds: float) -> CpuUsage:
        before = self.sample()
        time.sleep(seconds)
        return self.sample() - before


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _machine_busy_ticks() -> int:
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return user + nice + system + irq + softirq + steal
